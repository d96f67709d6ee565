"""The LLM front: answers from the cache when it has them, JSON parsed and validated, bad
answers asked again with a new seed, and a count of the calls that reached the backend.

Each answer is cached as it arrives: a backend that fails half-way through a batch (a
crashed server) costs only the answers it had not given yet."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from diversynth.llm.backends import make_backend
from diversynth.llm.base import DEFAULT_TEMPERATURE, Backend, ChatRequest, Unusable
from diversynth.llm.cache import AnswerCache

T = TypeVar("T")
# (answered, asked in addition): what a progress display is told as answers arrive
Progress = Callable[[int, int], None]
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


class LLM:
    def __init__(self, backend: Backend, cache: AnswerCache | None = None,
                 temperature: float = DEFAULT_TEMPERATURE):  # fmt: skip
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
        requests = [
            r if r.temperature is not None else replace(r, temperature=self.temperature)
            for r in requests
        ]
        keys = [
            AnswerCache.key(self.backend.name, self.backend.model, r.cache_fields())
            for r in requests
        ]
        answers: list[str | None] = [self.cache.get(k) if self.cache else None for k in keys]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        self.cached += len(requests) - len(missing)
        if progress is not None and len(requests) > len(missing):
            progress(len(requests) - len(missing), 0)

        def keep(position: int, answer: str) -> None:
            i = missing[position]
            answers[i] = answer
            self.calls += 1
            if self.cache is not None and not isinstance(answer, Unusable):
                self.cache.put_many({keys[i]: answer})
            if progress is not None:
                progress(1, 0)

        if missing:
            self.backend.complete([requests[i] for i in missing], on_answer=keep)
        return [a if a is not None else "" for a in answers]  # keeps an Unusable as it is

    def close(self) -> None:
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete_json(
        self,
        requests: list[ChatRequest],
        validators: Sequence[Callable[[Any], T]],
        attempts: int = 3,
        progress: Progress | None = None,
    ) -> list[T | BadAnswer]:
        """Validated JSON per request (request i is checked by validators[i]); a bad answer
        is asked again with the next seed, up to `attempts` times, all pending requests of
        an attempt in one batch. `progress(n, more)`: n more answered, `more` more asked
        (the requests asked again)."""
        results: list[T | BadAnswer | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        for attempt in range(attempts):
            batch = [replace(requests[i], seed=requests[i].seed + attempt) for i in pending]
            if attempt and progress is not None:
                progress(0, len(batch))
            still = []
            for i, answer in zip(pending, self.complete(batch, progress), strict=True):
                try:
                    results[i] = validators[i](parse_json(answer))
                except ValueError as exc:  # pydantic's ValidationError is a ValueError
                    reason = str(exc).splitlines()[0]
                    results[i] = BadAnswer(requests[i].label, reason, answer)
                    still.append(i)
            pending = still
            if not pending:
                break
        return results  # type: ignore[return-value]


def open_llm(config: Any, cache_path: Path | None) -> LLM:
    """The configured backend (see config.LLMConfig), with its disk cache; a server it
    starts logs beside the cache. Close it (or use it in a `with`) to stop that server."""
    cache = AnswerCache(cache_path) if cache_path is not None and config.cache else None
    log_dir = cache_path.parent if cache_path is not None else None
    return LLM(make_backend(config, log_dir), cache, temperature=config.temperature)
