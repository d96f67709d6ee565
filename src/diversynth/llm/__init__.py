"""LLM backends behind one small interface: chat messages in, text or validated JSON out."""

from diversynth.llm.base import ChatRequest, LLMError
from diversynth.llm.client import LLM, BadAnswer, Flow, json_flow, open_llm

__all__ = ["LLM", "BadAnswer", "ChatRequest", "Flow", "LLMError", "json_flow", "open_llm"]
