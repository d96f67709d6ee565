"""The LLM front: answers from the cache when it has them, JSON parsed and validated, bad
answers asked again with a new seed, and a count of the calls that reached the backend.

A job that asks more than once (a bad answer asked again, a follow-up question) is a flow;
many flows run at once, and a server gets each request as soon as its flow makes it, so
its slots stay full rather than waiting, round after round, for a round's slowest answer.
Each answer is cached as it arrives: a backend that fails half-way through (a crashed
server) costs only the answers it had not given yet."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from diversynth.llm.backends import make_backend
from diversynth.llm.base import (
    DEFAULT_TEMPERATURE,
    Ask,
    Backend,
    ChatRequest,
    ServerBackend,
    Unusable,
)
from diversynth.llm.cache import AnswerCache

T = TypeVar("T")
# (answered, asked in addition): what a progress display is told as answers arrive
Progress = Callable[[int, int], None]
# One job's requests, one at a time: it yields a request, is sent the answer, and makes
# the next from it (a bad answer asked again, a follow-up question), then returns its
# result. LLM.run runs many, each request going out as soon as its flow makes it.
Flow = Generator[ChatRequest, str, T]
# No `\s*` before the lazy group: with it, an unclosed fence followed by n spaces took
# O(n^2) backtracking (40k spaces: 11 s); the block is stripped instead.
_FENCE = re.compile(r"```(?:json)?(.*?)```", re.S)
# An answer holds one JSON value; fenced blocks past the first few are not tried.
MAX_FENCES = 4


@dataclass(frozen=True)
class BadAnswer:
    """An answer that could not be used after every retry; the caller decides what to do."""

    label: str
    reason: str
    answer: str

    def __str__(self) -> str:
        excerpt = self.answer[:120].replace("\n", " ")
        return f"{self.label}: {self.reason} (answer began {excerpt!r})"


def parse_json(text: str) -> Any:
    """The JSON value in an answer: the whole text, a fenced block, or the outermost {...}.
    Each costs one pass over the text, which the backend has bounded (chat_client's cap)."""
    if isinstance(text, Unusable):
        raise ValueError(text.reason)
    fenced = (m.group(1).strip() for m in itertools.islice(_FENCE.finditer(text), MAX_FENCES))
    candidates = [text.strip(), *fenced]
    start, stop = text.find("{"), text.rfind("}")
    if 0 <= start < stop:
        candidates.append(text[start : stop + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):  # RecursionError: nested too deep ("[[[[...")
            continue
    raise ValueError("not JSON" if text.strip() else "empty answer")


def json_flow(request: ChatRequest, validator: Callable[[Any], T],
              attempts: int = 3) -> Flow[T | BadAnswer]:  # fmt: skip
    """Validated JSON for one request: a bad answer is asked again with the next seed, up
    to `attempts` times."""
    for attempt in range(attempts):
        answer = yield replace(request, seed=request.seed + attempt)
        try:
            return validator(parse_json(answer))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            bad = BadAnswer(request.label, str(exc).splitlines()[0], answer)
    return bad


def _single(request: ChatRequest) -> Flow[str]:
    return (yield request)


class LLM:
    def __init__(self, backend: Backend, cache: AnswerCache | None = None,
                 temperature: float = DEFAULT_TEMPERATURE) -> None:  # fmt: skip
        self.backend = backend
        self.cache = cache
        self.temperature = temperature  # for requests that do not set their own
        self.calls = 0  # requests that reached the backend
        self.cached = 0  # requests answered from the cache

    @property
    def name(self) -> str:
        return f"{self.backend.name}:{self.backend.model}"

    def complete(self, requests: list[ChatRequest],
                 progress: Progress | None = None) -> list[str]:  # fmt: skip
        """One answer per request, from the cache or the backend; `progress(n, 0)` as n
        more are answered."""
        return self.run([_single(r) for r in requests], progress)  # keeps an Unusable as it is

    def complete_json(
        self,
        requests: list[ChatRequest],
        validators: Sequence[Callable[[Any], T]],
        attempts: int = 3,
        progress: Progress | None = None,
    ) -> list[T | BadAnswer]:
        """Validated JSON per request (request i is checked by validators[i]); a bad answer
        is asked again with the next seed, up to `attempts` times. `progress(n, more)`: n
        more answered, `more` more asked (the requests asked again)."""
        flows = [json_flow(r, v, attempts) for r, v in zip(requests, validators, strict=True)]
        return self.run(flows, progress)

    def run(self, flows: list[Flow[T]], progress: Progress | None = None) -> list[T]:
        """Each flow's result. Its requests are answered from the cache where it has them;
        the others go to a server backend as soon as they are made (up to its
        max_in_flight open, whichever flows they come from: no round waits for its slowest
        answer), or to a batch backend (transformers) in rounds of one request per flow.
        `progress(n, more)`: n more answered; `more` more asked (after a flow's first)."""
        tell = progress or (lambda done, more: None)
        results: list[Any] = [None] * len(flows)

        def advance(i: int, answer: str | None) -> ChatRequest | None:
            """Flow i sent `answer` (None: started), then the cache's answers while it has
            them: the next request for the backend, or None once the flow has returned."""
            while True:
                try:
                    request = next(flows[i]) if answer is None else flows[i].send(answer)
                except StopIteration as done:
                    results[i] = done.value
                    return None
                if answer is not None:
                    tell(0, 1)
                if request.temperature is None:
                    request = replace(request, temperature=self.temperature)
                answer = self.cache.get(self._key(request)) if self.cache else None
                if answer is None:
                    return request
                self.cached += 1
                tell(1, 0)

        waiting = {i: r for i in range(len(flows)) if (r := advance(i, None)) is not None}
        if waiting and isinstance(self.backend, ServerBackend):
            self.backend.run(lambda ask: self._pipelined(waiting, advance, ask, tell))
        else:
            while waiting:  # one round: the request each unfinished flow waits on
                asked = list(waiting.items())
                answers = self._batch([r for _, r in asked], tell)
                waiting = {i: r for (i, _), answer in zip(asked, answers, strict=True)
                           if (r := advance(i, answer)) is not None}  # fmt: skip
        return results

    async def _pipelined(self, waiting: dict[int, ChatRequest],
                         advance: Callable[[int, str], ChatRequest | None], ask: Ask,
                         progress: Progress) -> None:  # fmt: skip
        """Each request asked at once (the backend holds it until a slot is free); the
        answers taken one at a time as they arrive, each flow's next request asked as its
        answer is taken."""
        answered: asyncio.Queue[tuple[int, ChatRequest, asyncio.Future[str]]] = asyncio.Queue()
        asking: set[asyncio.Future[str]] = set()

        def send(i: int, request: ChatRequest) -> None:
            task = asyncio.ensure_future(ask(request))
            asking.add(task)
            task.add_done_callback(lambda done: answered.put_nowait((i, request, done)))

        for i, request in waiting.items():
            send(i, request)
        try:
            while asking:
                i, request, task = await answered.get()
                asking.discard(task)
                answer = task.result()  # raises what the backend raised
                self._keep(request, answer, progress)
                if (following := advance(i, answer)) is not None:
                    send(i, following)
                # one answer a turn of the event loop: the requests waiting for the slot
                # it freed go out before the other answers are validated
                await asyncio.sleep(0)
        finally:
            for task in asking:
                task.cancel()
            await asyncio.gather(*asking, return_exceptions=True)

    def _batch(self, requests: list[ChatRequest], progress: Progress) -> list[str]:
        def keep(position: int, answer: str) -> None:
            self._keep(requests[position], answer, progress)

        return self.backend.complete(requests, on_answer=keep)

    def _keep(self, request: ChatRequest, answer: str, progress: Progress) -> None:
        """Count an answer from the backend and cache it as it arrives."""
        self.calls += 1
        if self.cache is not None and not isinstance(answer, Unusable):
            self.cache.put_many({self._key(request): answer})
        progress(1, 0)

    def _key(self, request: ChatRequest) -> str:
        return AnswerCache.key(self.backend.name, self.backend.model, request.cache_fields())

    def close(self) -> None:
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_llm(config: Any, cache_path: Path | None) -> LLM:
    """The configured backend (see config.LLMConfig), with its disk cache; a server it
    starts logs beside the cache. Close it (or use it in a `with`) to stop that server."""
    cache = AnswerCache(cache_path) if cache_path is not None and config.cache else None
    log_dir = cache_path.parent if cache_path is not None else None
    return LLM(make_backend(config, log_dir), cache, temperature=config.temperature)
