"""The in-process backends on the bundled SmolLM2 GGUF, and the real llama.cpp server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG, cli, set_args
from llm_servers import LlamaCppServer

from diversynth.assets import resolve_bundled
from diversynth.config import LLMConfig
from diversynth.llm import ChatRequest
from diversynth.llm.backends import LlamaCppBackend, TransformersBackend

SCHEMA = {
    "type": "object",
    "properties": {"styles": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
    "required": ["styles"],
}


def _ask(
    label: str, seed: int = 0, schema: dict | None = None, max_tokens: int = 48
) -> ChatRequest:
    return ChatRequest(
        messages=(("user", f"List two art styles for drawing a {label}. Answer as JSON."),),
        max_tokens=max_tokens, temperature=0.0, seed=seed, json_schema=schema, label=label,
    )  # fmt: skip


def test_llamacpp_backend_follows_the_json_schema() -> None:
    backend = LlamaCppBackend(LLMConfig(backend="llamacpp", model="bundled:smollm2", max_tokens=64))
    answers = backend.complete([_ask("coat", schema=SCHEMA), _ask("bag", schema=SCHEMA)])
    for answer in answers:
        styles = json.loads(answer)["styles"]  # grammar-constrained: always valid JSON
        assert len(styles) >= 2 and all(isinstance(s, str) for s in styles)


def test_transformers_backend_reads_the_gguf_and_batches() -> None:
    backend = TransformersBackend(
        LLMConfig(backend="transformers", model="bundled:smollm2", batch_size=2)
    )
    answers = backend.complete([_ask("coat", max_tokens=8), _ask("sandal", max_tokens=8)])
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert backend.model == Path(resolve_bundled("bundled:smollm2")).name


@pytest.fixture(scope="module")
def llama_server():
    with LlamaCppServer(resolve_bundled("bundled:smollm2")) as server:
        yield server


def test_prompts_through_the_real_llamacpp_server(
    llama_server: LlamaCppServer, kit_overrides: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    overrides = [*kit_overrides, "llm.backend=openai", "llm.model=smollm2",
                 f"llm.base_url={llama_server.base_url}", "llm.json_mode=json_object",
                 "classes.names=[Sneaker, Bag]"]  # fmt: skip
    args = ["run", str(OFFLINE_CONFIG), "--out", str(out), "--stages", "classes,prompts"]
    result = cli(*args, *set_args(overrides))
    assert result.returncode == 0, result.stderr
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 20
    summary = json.loads((out / ".state" / "prompts.json").read_text())["summary"]
    assert summary["llm"] == "openai:smollm2" and summary["llm_calls"] >= 4
    assert sum(summary["per_strategy"].values()) == 20 and summary["per_strategy"]["naive"] >= 4
    for index in range(2):
        assert sum(1 for p in prompts if p["class_index"] == index) == 10

    # the rerun in this process (the command line was just tested; imports cost seconds)
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.rundir import RunDir

    run_stages(load_config(OFFLINE_CONFIG, overrides), RunDir(out), ["classes", "prompts"],
               force=["prompts"])  # fmt: skip
    again = json.loads((out / ".state" / "prompts.json").read_text())["summary"]
    assert again["llm_calls"] == 0
    assert (out / "prompts.jsonl").read_text().splitlines() == [
        json.dumps(p, ensure_ascii=False) for p in prompts
    ]
