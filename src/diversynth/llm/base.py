"""What every backend takes and gives: a batch of chat requests in, one text answer each out."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from diversynth.errors import DiversynthError


class LLMError(DiversynthError):
    """The LLM could not be reached or refused the request itself (not a bad answer)."""


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    max_tokens: int = 256
    temperature: float = 0.7
    seed: int = 0
    json_schema: dict[str, Any] | None = None  # constrain the answer where the backend can
    label: str = ""  # what the request is for (a class name), for error messages

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("label")
        return fields


class Backend(Protocol):
    name: str  # "openai", "transformers", "llamacpp"
    model: str

    def complete(self, requests: list[ChatRequest]) -> list[str]:
        """One answer per request, in order. Raises LLMError when the backend fails."""
        ...
