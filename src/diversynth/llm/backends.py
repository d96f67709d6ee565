"""The backends: an OpenAI-compatible server, transformers in-process, and llama.cpp (its
own server as a child process, in llm/llamacpp.py)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from diversynth.llm.base import Ask, Backend, ChatRequest, LLMError, OnAnswer, T
from diversynth.llm.chat_client import ChatClient
from diversynth.llm.llamacpp import LlamaCppBackend
from diversynth.models.safe_weights import loading


def openai_response_format(mode: str) -> Any:
    """The `response_format` for a request under `llm.json_mode`, as OpenAI's API takes it."""

    def response_format(request: ChatRequest) -> dict[str, Any] | None:
        if request.json_schema is None or mode == "off":
            return None
        if mode == "json_object":
            return {"type": "json_object"}
        return {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
        }

    return response_format


class OpenAIBackend:
    """Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, hosted APIs)."""

    name = "openai"

    def __init__(self, config: Any) -> None:
        self.model = config.model
        api_key = os.environ[config.api_key_env] if config.api_key_env else "not-needed"
        self._client = ChatClient(
            who="llm (openai)", base_url=config.base_url, model=config.model, api_key=api_key,
            timeout=config.timeout, max_retries=config.max_retries,
            max_in_flight=config.max_in_flight,
            response_format=openai_response_format(config.json_mode),
            deadline=config.deadline,
        )  # fmt: skip

    def complete(self, requests: list[ChatRequest], on_answer: OnAnswer | None = None) -> list[str]:
        return self._client.complete(requests, on_answer)

    def run(self, main: Callable[[Ask], Coroutine[Any, Any, T]]) -> T:
        return self._client.run(main)

    def close(self) -> None:
        pass


def _cache_gguf_name_map() -> None:
    """transformers rebuilds gguf's tensor-name map once per tensor while it loads a GGUF
    file (397 times for SmolLM2-135M: 11 s of a 45 s load on 2 cores); the map depends only
    on its arguments, so one cached copy serves every call."""
    import gguf

    if not hasattr(gguf.get_tensor_name_map, "cache_info"):
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=16)(gguf.get_tensor_name_map)


class TransformersBackend:
    """A causal LM through transformers (a hub id, a folder, or a GGUF file), batched.

    The model loads on the first request, so a rerun answered from the cache never loads it.
    """

    name = "transformers"

    def __init__(self, config: Any) -> None:
        path = Path(config.model)
        self.model = path.name if path.exists() else config.model
        self.config = config
        self._lm: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(self.config.model)
        source, extra = self.config.model, {}
        if path.suffix == ".gguf":
            source, extra = str(path.parent), {"gguf_file": path.name}
            _cache_gguf_name_map()
        kwargs = {"trust_remote_code": self.config.trust_remote_code, **extra}
        weights = {} if extra else {"use_safetensors": True}  # a GGUF file is no pickle
        with loading("llm.model", self.config.model, LLMError):
            self._tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self._lm = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch.float32, **kwargs, **weights
            )
        self._tokenizer.padding_side = "left"  # decoder-only models generate after the prompt
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._lm.eval()

    def complete(self, requests: list[ChatRequest], on_answer: OnAnswer | None = None) -> list[str]:
        if requests and self._lm is None:
            self._load()
        answers: list[str] = []
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            for answer in self._batch(requests[start : start + size]):
                if on_answer is not None:
                    on_answer(len(answers), answer)
                answers.append(answer)
        return answers

    def close(self) -> None:
        self._lm = None

    def _batch(self, requests: list[ChatRequest]) -> list[str]:
        import torch

        texts = [
            self._tokenizer.apply_chat_template(
                r.chat(), tokenize=False, add_generation_prompt=True
            )
            for r in requests
        ]
        inputs = self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(requests[0].seed)
        temperature = requests[0].sampling_temperature
        with torch.inference_mode():
            output = self._lm.generate(
                **inputs,
                max_new_tokens=max(r.max_tokens for r in requests),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=0.95 if temperature > 0 else None,
                pad_token_id=self._tokenizer.pad_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [
            t.strip() for t in self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]


def make_backend(config: Any, log_dir: Path | None = None) -> Backend:
    """The backend `config.backend` names; a llama.cpp server keeps its log in `log_dir`."""
    if config.backend == "llamacpp":
        return LlamaCppBackend(config, log_dir)
    backends: dict[str, Callable[[Any], Backend]] = {
        "openai": OpenAIBackend, "transformers": TransformersBackend,
    }  # fmt: skip
    return backends[config.backend](config)
