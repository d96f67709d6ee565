"""Chat requests to one OpenAI-compatible server, several in flight at once.

The official `openai` client retries timeouts, connection errors, 429 and 5xx with
exponential backoff. A server that diversynth started itself (llama.cpp) is also watched:
when its process ends, the requests stop at once with a message that says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diversynth.llm.base import ChatRequest, LLMError, OnAnswer

# How often a watched server process is polled while requests are open.
WATCH_SECONDS = 0.1


@dataclass
class ChatClient:
    who: str  # how errors name the backend: "llm (openai)"
    base_url: str
    model: str
    api_key: str
    timeout: float
    max_retries: int
    max_in_flight: int
    # the `response_format` a request is sent with (None: none)
    response_format: Callable[[ChatRequest], dict[str, Any] | None]
    # for a server process of our own: None while it runs, else why it ended
    server_ended: Callable[[], str | None] | None = None

    def complete(self, requests: list[ChatRequest], on_answer: OnAnswer | None = None) -> list[str]:
        return asyncio.run(self._all(requests, on_answer)) if requests else []

    async def _all(self, requests: list[ChatRequest], on_answer: OnAnswer | None) -> list[str]:
        import openai

        gate = asyncio.Semaphore(self.max_in_flight)
        client_args = {"base_url": self.base_url, "api_key": self.api_key,
                       "timeout": self.timeout, "max_retries": self.max_retries}  # fmt: skip
        async with openai.AsyncOpenAI(**client_args) as client:
            tasks = [
                asyncio.create_task(self._one(client, gate, i, r, on_answer))
                for i, r in enumerate(requests)
            ]
            watcher = asyncio.create_task(self._watch()) if self.server_ended else None
            others = [watcher] if watcher is not None else []
            try:
                if watcher is None:
                    return list(await asyncio.gather(*tasks))
                waiting = {*tasks, watcher}
                while waiting != {watcher}:
                    done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # the first failure (the watcher's: the server ended)
                return [task.result() for task in tasks]
            finally:
                for task in [*tasks, *others]:
                    task.cancel()
                await asyncio.gather(*tasks, *others, return_exceptions=True)

    async def _watch(self) -> None:
        assert self.server_ended is not None
        while (ended := self.server_ended()) is None:
            await asyncio.sleep(WATCH_SECONDS)
        raise LLMError(f"{self.who}: {ended}")

    async def _one(self, client: Any, gate: asyncio.Semaphore, index: int,
                   request: ChatRequest, on_answer: OnAnswer | None) -> str:  # fmt: skip
        import openai

        extra: dict[str, Any] = {}
        response_format = self.response_format(request)
        if response_format is not None:
            extra["response_format"] = response_format
        async with gate:
            try:
                reply = await client.chat.completions.create(
                    model=self.model,
                    messages=request.chat(),
                    max_tokens=request.max_tokens,
                    temperature=request.sampling_temperature,
                    seed=request.seed,
                    **extra,
                )
            except openai.NotFoundError as exc:
                raise self._error(f"model {self.model!r} not found at {self.base_url}: "
                                  f"{exc.message}", at=False) from None  # fmt: skip
            except openai.AuthenticationError as exc:
                raise self._error(
                    f"authentication failed at {self.base_url}: {exc.message}", at=False
                ) from None
            except (
                openai.APIStatusError,
                openai.APIConnectionError,
                openai.APIResponseValidationError,
                ValueError,  # a 200 whose body is not JSON
            ) as exc:
                raise self._error(
                    f"for {request.label!r}: {type(exc).__name__}: {exc} "
                    f"(after {self.max_retries} retries)"
                ) from None
        if not getattr(reply, "choices", None):
            raise self._error(f"for {request.label!r}: reply has no choices")
        answer = reply.choices[0].message.content or ""
        if on_answer is not None:
            on_answer(index, answer)
        return answer

    def _error(self, what: str, at: bool = True) -> LLMError:
        """The error for a failed request; if our own server has ended, that is the news."""
        ended = self.server_ended() if self.server_ended else None
        if ended is not None:
            return LLMError(f"{self.who}: {ended}")
        where = f" at {self.base_url}," if at else ":"
        return LLMError(f"{self.who}{where} {what}")
