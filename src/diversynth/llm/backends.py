"""The backends: an OpenAI-compatible server, and transformers or llama.cpp in-process."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

from diversynth.llm.base import Backend, ChatRequest, LLMError


def _schema_format(request: ChatRequest, mode: str) -> dict[str, Any] | None:
    if request.json_schema is None or mode == "off":
        return None
    if mode == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
    }


class OpenAIBackend:
    """Any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, hosted APIs).

    The official client retries timeouts, connection errors, 429 and 5xx with exponential
    backoff; up to `max_in_flight` requests are open at once.
    """

    name = "openai"

    def __init__(self, config: Any):
        import openai

        self.model = config.model
        self.config = config
        api_key = os.environ[config.api_key_env] if config.api_key_env else "not-needed"
        self._client_args = {
            "base_url": config.base_url,
            "api_key": api_key,
            "timeout": config.timeout,
            "max_retries": config.max_retries,
        }
        self._openai = openai

    async def _one(self, client: Any, gate: asyncio.Semaphore, request: ChatRequest) -> str:
        openai = self._openai
        extra: dict[str, Any] = {}
        response_format = _schema_format(request, self.config.json_mode)
        if response_format is not None:
            extra["response_format"] = response_format
        async with gate:
            try:
                reply = await client.chat.completions.create(
                    model=self.model,
                    messages=request.chat(),
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    seed=request.seed,
                    **extra,
                )
            except openai.NotFoundError as exc:
                raise LLMError(
                    f"llm (openai): model {self.model!r} not found at {self.config.base_url}: "
                    f"{exc.message}"
                ) from None
            except openai.AuthenticationError as exc:
                raise LLMError(
                    f"llm (openai): authentication failed at {self.config.base_url}: {exc.message}"
                ) from None
            except (
                openai.APIStatusError,
                openai.APIConnectionError,
                openai.APIResponseValidationError,
                ValueError,  # a 200 whose body is not JSON
            ) as exc:
                raise LLMError(
                    f"llm (openai) at {self.config.base_url}, for {request.label!r}: "
                    f"{type(exc).__name__}: {exc} (after {self.config.max_retries} retries)"
                ) from None
        if not getattr(reply, "choices", None):
            raise LLMError(
                f"llm (openai) at {self.config.base_url}, for {request.label!r}: "
                "reply has no choices"
            )
        return reply.choices[0].message.content or ""

    async def _all(self, requests: list[ChatRequest]) -> list[str]:
        gate = asyncio.Semaphore(self.config.max_in_flight)
        async with self._openai.AsyncOpenAI(**self._client_args) as client:
            tasks = [asyncio.create_task(self._one(client, gate, r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise

    def complete(self, requests: list[ChatRequest]) -> list[str]:
        return asyncio.run(self._all(requests)) if requests else []


class LlamaCppBackend:
    """llama-cpp-python with a GGUF file; a JSON schema becomes a grammar on the output.

    The model loads on the first request, so a rerun answered from the cache never loads it.
    """

    name = "llamacpp"

    def __init__(self, config: Any):
        self.model = Path(config.model).name
        self.config = config
        self._llm: Any = None

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LLMError(
                "llm.backend: 'llamacpp' needs llama-cpp-python "
                "(pip install 'diversynth[llamacpp]')"
            ) from exc
        return Llama(
            model_path=self.config.model,
            n_ctx=self.config.context,
            n_threads=self.config.threads,
            verbose=False,
        )

    def complete(self, requests: list[ChatRequest]) -> list[str]:
        if requests and self._llm is None:
            self._llm = self._load()
        answers = []
        for request in requests:  # one context: llama.cpp runs requests one after another
            response_format = None
            if request.json_schema is not None and self.config.json_mode != "off":
                response_format = {"type": "json_object", "schema": request.json_schema}
            reply = self._llm.create_chat_completion(
                messages=request.chat(),
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=request.seed,
                response_format=response_format,
            )
            answers.append(reply["choices"][0]["message"]["content"] or "")
        return answers


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

    def __init__(self, config: Any):
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
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self._lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        except (OSError, ValueError) as exc:
            raise LLMError(
                f"llm.model: transformers cannot load {self.config.model!r}: {exc}"
            ) from exc
        self._tokenizer.padding_side = "left"  # decoder-only models generate after the prompt
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._lm.eval()

    def complete(self, requests: list[ChatRequest]) -> list[str]:
        if requests and self._lm is None:
            self._load()
        answers: list[str] = []
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            answers += self._batch(requests[start : start + size])
        return answers

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
        temperature = requests[0].temperature
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


def make_backend(config: Any) -> Backend:
    backends = {
        "openai": OpenAIBackend,
        "llamacpp": LlamaCppBackend,
        "transformers": TransformersBackend,
    }
    return backends[config.backend](config)
