"""The in-process backends on the bundled SmolLM2 GGUF, and the real llama.cpp server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import OFFLINE_CONFIG, REPO, cli, set_args

from diversynth.config import LLMConfig
from diversynth.llm import ChatRequest
from diversynth.llm.backends import TransformersBackend
from diversynth.llm.llamacpp import LlamaCppBackend, LlamaCppServer
from diversynth.models.assets import resolve_bundled

# every test here loads SmolLM2 (in a llama.cpp server or transformers): seconds each
pytestmark = pytest.mark.slow

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
    try:
        answers = backend.complete([_ask("coat", schema=SCHEMA), _ask("bag", schema=SCHEMA)])
        server = backend._server.proc
    finally:
        backend.close()
    for answer in answers:
        styles = json.loads(answer)["styles"]  # grammar-constrained: always valid JSON
        assert len(styles) >= 2 and all(isinstance(s, str) for s in styles)
    assert server.poll() is not None  # closing the backend stops its server


def _cached_answers(cache: Path) -> int:
    if not cache.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(cache, timeout=30)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not made yet
            return 0


def _llamacpp_child(parent: int) -> psutil.Process:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children(recursive=True):
            if "diversynth.llm._llamacpp_child" in " ".join(child.cmdline()):
                return child
        time.sleep(0.05)
    raise AssertionError("no llama.cpp server child appeared")


def test_a_crashed_llamacpp_server_is_one_line_and_the_rerun_resumes(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """llama.cpp runs in a child process: killed with SIGSEGV (as a crash in its native
    kernels would), the run says which backend, model and signal on one line, exits 1,
    and the rerun asks only what was not answered before the crash."""
    out = tmp_path / "run"
    overrides = [*kit_overrides, "classes.names=[Sneaker, Bag]", "llm.max_tokens=120"]
    args = [sys.executable, "-m", "diversynth", "run", str(OFFLINE_CONFIG), "--out", str(out),
            "--stages", "classes,prompts", *set_args(overrides)]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    try:
        server = _llamacpp_child(proc.pid)
        deadline = time.monotonic() + 180
        while _cached_answers(out / ".cache" / "llm.sqlite") < 1:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no answer cached in 180 s"
            time.sleep(0.05)
        server.send_signal(signal.SIGSEGV)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "llm (llamacpp)" in errors[0] and "SIGSEGV" in errors[0]
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in errors[0]
    assert not psutil.pid_exists(server.pid) or server.status() == psutil.STATUS_ZOMBIE
    answered = _cached_answers(out / ".cache" / "llm.sqlite")
    assert 1 <= answered < 4  # 2 context and 2 style requests, at least one left to ask

    result = cli("run", str(OFFLINE_CONFIG), "--out", str(out), "--stages", "classes,prompts",
                 *set_args(overrides))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / ".state" / "prompts.json").read_text())["summary"]
    assert summary["llm_cached"] >= answered  # nothing answered before the crash asked again
    assert summary["images"] == 20


def test_transformers_backend_reads_the_gguf_and_batches() -> None:
    backend = TransformersBackend(
        LLMConfig(backend="transformers", model="bundled:smollm2", batch_size=2)
    )
    answers = backend.complete([_ask("coat", max_tokens=8), _ask("sandal", max_tokens=8)])
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert backend.model == Path(resolve_bundled("bundled:smollm2")).name


@pytest.fixture(scope="module")
def llama_server():
    with LlamaCppServer(LLMConfig(backend="llamacpp", model="bundled:smollm2")) as server:
        yield server


def test_prompts_through_the_real_llamacpp_server(
    llama_server: LlamaCppServer, kit_overrides: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    overrides = [*kit_overrides, "llm.backend=openai", f"llm.model={llama_server.model}",
                 f"llm.base_url={llama_server.base_url}", "llm.json_mode=json_object",
                 "classes.names=[Sneaker, Bag]", "llm.max_tokens=120"]  # fmt: skip
    args = ["run", str(OFFLINE_CONFIG), "--out", str(out), "--stages", "classes,prompts"]
    result = cli(*args, *set_args(overrides))
    assert result.returncode == 0, result.stderr
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    summary = json.loads((out / ".state" / "prompts.json").read_text())["summary"]
    assert summary["llm"] == f"openai:{llama_server.model}" and summary["llm_calls"] >= 4
    images = summary["images_per_strategy"]
    assert sum(images.values()) == 20 and images["naive"] >= 4
    for index in range(2):
        mine = [p for p in prompts if p["class_index"] == index]
        assert sum(len(p["image_seeds"]) for p in mine) == 10
        assert len({p["text"] for p in mine}) == len(mine)

    # the rerun in this process (the command line was just tested; imports cost seconds)
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir

    run_stages(load_config(OFFLINE_CONFIG, overrides), RunDir(out), ["classes", "prompts"],
               force=["prompts"])  # fmt: skip
    again = json.loads((out / ".state" / "prompts.json").read_text())["summary"]
    assert again["llm_calls"] == 0
    assert (out / "prompts.jsonl").read_text().splitlines() == [
        json.dumps(p, ensure_ascii=False) for p in prompts
    ]
