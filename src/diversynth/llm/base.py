"""What every backend takes and gives: a batch of chat requests in, one text answer each out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from diversynth.errors import DiversynthError

T = TypeVar("T")


class LLMError(DiversynthError):
    """The LLM could not be reached or refused the request itself (not a bad answer)."""


DEFAULT_TEMPERATURE = 0.7  # config.LLMConfig's default too
DEFAULT_DEADLINE = 300.0  # seconds per request, retries included: config.LLMConfig's default too


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    max_tokens: int = 256
    temperature: float | None = None  # None: the LLM's configured `llm.temperature`
    seed: int = 0
    json_schema: dict[str, Any] | None = None  # constrain the answer where the backend can
    label: str = ""  # what the request is for (a class name), for error messages

    @property
    def sampling_temperature(self) -> float:
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("label")
        return fields


class Unusable(str):
    """Stands in for an answer a backend could not take whole (a reply over the size cap):
    empty text, and why. LLM.complete_json counts it a bad answer, asked again with the
    next seed; it is never cached, since it is not what the model said."""

    reason: str

    def __new__(cls, reason: str) -> Unusable:
        answer = super().__new__(cls, "")
        answer.reason = reason
        return answer


# Called with (position in the batch, answer) as each answer arrives, so that a backend
# failing half-way through a batch loses none of the answers it already gave.
OnAnswer = Callable[[int, str], None]
# Sends one request and gives its answer (a server backend's, within its event loop).
Ask = Callable[[ChatRequest], Awaitable[str]]


class Backend(Protocol):
    name: str  # "openai", "transformers", "llamacpp"
    model: str

    def complete(self, requests: list[ChatRequest], on_answer: OnAnswer | None = None) -> list[str]:
        """One answer per request, in order. Raises LLMError when the backend fails."""
        ...

    def close(self) -> None:
        """Release what the backend holds (a loaded model, a server process)."""
        ...


@runtime_checkable
class ServerBackend(Backend, Protocol):
    """A backend that takes each request on its own, as soon as it is made (a server with
    `max_in_flight` slots), rather than in batches."""

    def run(self, main: Callable[[Ask], Coroutine[Any, Any, T]]) -> T:
        """`main(ask)` run to its end in an event loop; `ask` sends a request when one of
        the backend's slots is free. Raises LLMError when the backend fails."""
        ...
