"""Chat requests to one OpenAI-compatible server, several in flight at once.

The official `openai` client retries timeouts, connection errors, 429 and 5xx with
exponential backoff; a reply cut off while its body is read is asked again here, within the
same `max_retries`. Each request, retries included, must end within `deadline` seconds (a
server that sends a byte now and then never trips the per-read `timeout`), and its body is
read in chunks up to a cap, so memory stays bounded whatever a server sends. A server that
diversynth started itself (llama.cpp) is also watched: when its process ends, the requests
stop at once with a message that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from diversynth.errors import shown
from diversynth.llm.base import DEFAULT_DEADLINE, Ask, ChatRequest, LLMError, OnAnswer, Unusable

T = TypeVar("T")

# How often a watched server process is polled while requests are open.
WATCH_SECONDS = 0.1
# A reply's body is read at most this far. A real one is bounded by the request's
# max_tokens: a token is a few characters (at most ~24 bytes when JSON escapes it as
# \uXXXX pairs), so 64 bytes a token, and never less than 1 MiB for the envelope, is
# generous; past it a server ignores max_tokens (or is hostile), and reading on would grow
# memory, and the parsing after it, without bound.
MIN_REPLY_BYTES = 1 << 20
REPLY_BYTES_PER_TOKEN = 64
# The pause before asking again for a reply cut off mid-body, doubled each time (the
# openai client's own backoff starts at 0.5 s too)
RETRY_SECONDS = 0.5


def reply_cap(max_tokens: int) -> int:
    """The most bytes of a reply read for a request of `max_tokens` tokens."""
    return max(MIN_REPLY_BYTES, REPLY_BYTES_PER_TOKEN * max_tokens)


def _body_read_errors() -> tuple[type[Exception], ...]:
    """What reading an open reply's body raises when the connection fails or stalls."""
    import ssl

    import anyio

    request_error: type[Exception]
    try:  # openai 3 reads through httpx2, earlier versions through httpx
        from httpx2 import RequestError as httpx2_error

        request_error = httpx2_error
    except ImportError:
        from httpx import RequestError as httpx_error

        request_error = httpx_error
    # anyio's and ssl's: TLS failures httpx2 leaves unmapped (the openai client lists them too)
    return (request_error, anyio.EndOfStream, ssl.SSLError)


@dataclass
class ChatClient:
    who: str  # how errors name the backend: "llm (openai)"
    base_url: str
    model: str
    api_key: str
    timeout: float  # seconds between two reads
    max_retries: int
    max_in_flight: int
    # the `response_format` a request is sent with (None: none)
    response_format: Callable[[ChatRequest], dict[str, Any] | None]
    # for a server process of our own: None while it runs, else why it ended
    server_ended: Callable[[], str | None] | None = None
    deadline: float = DEFAULT_DEADLINE  # seconds for a whole request, retries included

    def complete(self, requests: list[ChatRequest], on_answer: OnAnswer | None = None) -> list[str]:
        async def main(ask: Ask) -> list[str]:
            async def one(index: int, request: ChatRequest) -> str:
                answer = await ask(request)
                if on_answer is not None:
                    on_answer(index, answer)
                return answer

            return await all_or_cancel([one(i, r) for i, r in enumerate(requests)])

        return self.run(main) if requests else []

    def run(self, main: Callable[[Ask], Coroutine[Any, Any, T]]) -> T:
        """`main(ask)` in an event loop of its own; `ask(request)` sends a request as soon
        as one of `max_in_flight` slots is free, so requests made at any time, by any
        number of tasks, keep the slots full."""
        return asyncio.run(self._run(main))

    async def _run(self, main: Callable[[Ask], Coroutine[Any, Any, T]]) -> T:
        import openai

        gate = asyncio.Semaphore(self.max_in_flight)
        async with openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                                      timeout=self.timeout,
                                      max_retries=self.max_retries) as client:  # fmt: skip
            ask = functools.partial(self._one, client, gate)
            if self.server_ended is None:
                return await main(ask)
            work, watcher = asyncio.ensure_future(main(ask)), asyncio.ensure_future(self._watch())
            try:  # whichever ends first: the work, or our server (the watcher raises)
                await asyncio.wait([work, watcher], return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    watcher.result()
                return work.result()
            finally:
                for task in (work, watcher):
                    task.cancel()
                await asyncio.gather(work, watcher, return_exceptions=True)

    async def _watch(self) -> None:
        assert self.server_ended is not None
        while (ended := self.server_ended()) is None:
            await asyncio.sleep(WATCH_SECONDS)
        raise LLMError(f"{self.who}: {ended}")

    async def _one(self, client: Any, gate: asyncio.Semaphore, request: ChatRequest) -> str:
        # the deadline starts with the request's turn: the wait for a free slot is ours
        async with gate:
            try:
                async with asyncio.timeout(self.deadline) as scope:
                    answer = await self._ask(client, request)
            except TimeoutError:
                if not scope.expired():
                    raise
                raise self._error(
                    f"for {request.label!r}: no answer within llm.deadline={self.deadline:g} s "
                    "(retries included)"
                ) from None
        return answer

    async def _ask(self, client: Any, request: ChatRequest) -> str:
        """The answer's text, or `Unusable` for a reply past the cap. A reply cut off
        mid-body is asked again: with the openai client's own retries, max_retries in all."""
        cap, cut_off = reply_cap(request.max_tokens), _body_read_errors()
        retries_left = self.max_retries
        while True:
            async with self._send(client, request, retries_left) as response:
                try:
                    body = await _read_up_to(response, cap)
                    break
                except cut_off as exc:
                    retries_left -= response.retries_taken + 1
                    if retries_left < 0:
                        raise self._error(
                            f"for {request.label!r}: {type(exc).__name__}: {shown(str(exc))} "
                            f"(after {self.max_retries} retries)"
                        ) from None
            failed = self.max_retries - retries_left  # tries that failed so far
            await asyncio.sleep(RETRY_SECONDS * 2 ** (failed - 1))
        if body is None:
            return Unusable(f"reply longer than {cap:,} bytes, the most read for "
                            f"max_tokens={request.max_tokens}")  # fmt: skip
        return self._content(body, request)

    @contextlib.asynccontextmanager
    async def _send(self, client: Any, request: ChatRequest,
                    max_retries: int) -> AsyncIterator[Any]:  # fmt: skip
        """The reply to `request` once its headers are in, its body not read yet; the
        openai client's errors as one line each."""
        import openai

        extra: dict[str, Any] = {}
        response_format = self.response_format(request)
        if response_format is not None:
            extra["response_format"] = response_format
        chat = client.with_options(max_retries=max_retries).chat.completions
        try:
            async with chat.with_streaming_response.create(
                model=self.model,
                messages=request.chat(),
                max_tokens=request.max_tokens,
                temperature=request.sampling_temperature,
                seed=request.seed,
                **extra,
            ) as response:
                yield response
        except openai.NotFoundError as exc:
            raise self._error(f"model {self.model!r} not found at {self.base_url}: "
                              f"{shown(exc.message)}", at=False) from None  # fmt: skip
        except openai.AuthenticationError as exc:
            raise self._error(
                f"authentication failed at {self.base_url}: {shown(exc.message)}", at=False
            ) from None
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            raise self._error(
                f"for {request.label!r}: {type(exc).__name__}: {shown(str(exc))} "
                f"(after {self.max_retries} retries)"
            ) from None

    def _content(self, body: bytes, request: ChatRequest) -> str:
        """choices[0].message.content of a reply, read as leniently as the openai client
        reads one (it does not validate replies either)."""
        try:
            reply = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise self._error(f"for {request.label!r}: reply is not JSON: "
                              f"{type(exc).__name__}: {shown(str(exc))}") from None  # fmt: skip
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or not isinstance(choices, list):
            raise self._error(f"for {request.label!r}: reply has no choices")
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict):
            raise self._error(f"for {request.label!r}: reply has no choices[0].message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise self._error(f"for {request.label!r}: choices[0].message.content is not "
                              f"text: {shown(content)}")  # fmt: skip
        return content or ""

    def _error(self, what: str, at: bool = True) -> LLMError:
        """The error for a failed request; if our own server has ended, that is the news."""
        ended = self.server_ended() if self.server_ended else None
        if ended is not None:
            return LLMError(f"{self.who}: {ended}")
        where = f" at {self.base_url}," if at else ":"
        return LLMError(f"{self.who}{where} {what}")


async def all_or_cancel(work: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Each coroutine's result, in order; on the first failure the others are cancelled
    (none left running on a closed client) and the failure raised."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _read_up_to(response: Any, cap: int) -> bytes | None:
    """The reply's body, read in chunks; None once it passes `cap` bytes (read no further:
    at most `cap` plus one chunk of httpx's, which decodes in pieces of at most 1 MiB)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.iter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
