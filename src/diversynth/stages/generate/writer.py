"""Encoding and writing images on a background thread while the next batch denoises.

One worker thread keeps the order of the writes (a tar is sequential); at most `pending`
batches wait, so a slow disk holds the generator back instead of filling memory. An error
in the thread comes back on the next submit or on `wait`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class BackgroundWriter:
    def __init__(self, pending: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._futures: deque[Future[Any]] = deque()
        self._pending = pending

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        while len(self._futures) >= self._pending:
            self._futures.popleft().result()
        self._futures.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Return when every submitted job has run; raise the first error among them."""
        while self._futures:
            self._futures.popleft().result()

    def close(self) -> None:
        """Stop: jobs not yet started are dropped (after an error the shard is aborted)."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)
        self._futures.clear()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
