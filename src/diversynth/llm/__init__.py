"""LLM backends behind one small interface: chat messages in, text or validated JSON out."""

from diversynth.llm.base import ChatRequest, LLMError
from diversynth.llm.client import LLM, BadAnswer, open_llm

__all__ = ["LLM", "BadAnswer", "ChatRequest", "LLMError", "open_llm"]
