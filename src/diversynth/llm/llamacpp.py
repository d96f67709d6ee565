"""llama.cpp with a GGUF file, through its OpenAI-compatible server run as a child process.

llama.cpp is native code whose CPU kernels differ by machine (one build crashed inside its
AMX kernels on one CPU). In a process of its own a crash ends that process only: the run
prints which backend, model and signal, keeps the answers cached so far, and exits
non-zero. The server is llama-cpp-python's (`python -m llama_cpp.server`), on a free
loopback port; requests take the same path as the `openai` backend's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self

from diversynth.llm.base import Ask, ChatRequest, LLMError, OnAnswer, T
from diversynth.llm.chat_client import ChatClient

START_SECONDS = 300  # loading a large GGUF from a slow disk takes a while
_PORT_ATTEMPTS = 3  # another process may take the free port before the server binds it


def free_port() -> int:
    """A TCP port free on loopback now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_exit(code: int) -> str:
    """'SIGSEGV' for a process killed by a signal, 'exit code 3' otherwise."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
        return f"signal {-code}"
    return f"exit code {code}"


class LlamaCppServer:
    """One `llama_cpp.server` child serving `config.model` on 127.0.0.1, logging to a file."""

    def __init__(self, config: Any, log_path: Path | None = None) -> None:
        self.config = config
        self.model = Path(config.model).name
        self.log_path = log_path  # None: a temporary file, removed on close
        self._log_file = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()  # and its temporary log
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self) -> list[str]:
        config = self.config
        command = [sys.executable, "-m", "diversynth.llm._llamacpp_child", str(os.getpid()),
                   "--model", str(config.model), "--model_alias", self.model,
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--n_ctx", str(config.context)]  # fmt: skip
        if config.threads:
            command += ["--n_threads", str(config.threads)]
        return command

    def start(self) -> None:
        for _ in range(_PORT_ATTEMPTS):
            self.close()
            self.port = free_port()
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
            else:
                handle, name = tempfile.mkstemp(prefix="llamacpp-server.", suffix=".log")
                os.close(handle)
                self._log_file = Path(name)
            assert self._log_file is not None
            with self._log_file.open("wb") as log:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(
                    self._command(), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            if self._wait_until_serving():
                return
            if "address already in use" not in self.log_tail().lower():
                break
        raise LLMError(f"llm (llamacpp): the llama.cpp server for {self.model} could not "
                       f"start: {self._how_it_ended()}")  # fmt: skip

    def _wait_until_serving(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_SECONDS
        while self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return True
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise LLMError(
                        f"llm (llamacpp): the llama.cpp server did not start serving "
                        f"{self.model} in {START_SECONDS} s{self._log_hint()}"
                    ) from None
                time.sleep(0.2)
        return False

    def ended(self) -> str | None:
        """None while the server runs; else how it ended."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"the llama.cpp server running {self.model} {self._how_it_ended()}"

    def _how_it_ended(self) -> str:
        assert self.proc is not None
        tail = self.log_tail().strip().splitlines()
        last = f"; its log ends: {tail[-1][:200]!r}" if tail else ""
        return f"ended with {describe_exit(self.proc.returncode)}{last}{self._log_hint()}"

    def log_tail(self, size: int = 4000) -> str:
        if self._log_file is None:
            return ""
        with contextlib.suppress(OSError), self._log_file.open("rb") as log:
            end = log.seek(0, os.SEEK_END)
            log.seek(max(0, end - size))
            return log.read().decode(errors="replace")
        return ""

    def _log_hint(self) -> str:
        return f" (log: {self.log_path})" if self.log_path is not None else ""

    def close(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
        if self.log_path is None and self._log_file is not None:
            self._log_file.unlink(missing_ok=True)
            self._log_file = None


def stop_server(proc: subprocess.Popen[Any], grace: float = 20) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def llamacpp_response_format(mode: str) -> Any:
    """llama-cpp-python's server takes a JSON schema inside a json_object format and turns
    it into a grammar on the output."""

    def response_format(request: ChatRequest) -> dict[str, Any] | None:
        if request.json_schema is None or mode == "off":
            return None
        return {"type": "json_object", "schema": request.json_schema}

    return response_format


class LlamaCppBackend:
    """A GGUF file through llama.cpp's server in a child process.

    The server starts on the first request, so a rerun answered from the cache never
    starts it; it runs one request at a time."""

    name = "llamacpp"

    def __init__(self, config: Any, log_dir: Path | None = None) -> None:
        self.config = config
        self.model = Path(config.model).name
        self._log_path = log_dir / "llamacpp-server.log" if log_dir is not None else None
        self._server: LlamaCppServer | None = None
        self._client: ChatClient | None = None

    def _start(self) -> ChatClient:
        self._server = LlamaCppServer(self.config, self._log_path)
        self._server.start()
        return ChatClient(
            who="llm (llamacpp)", base_url=self._server.base_url, model=self.model,
            api_key="not-needed", timeout=self.config.timeout, deadline=self.config.deadline,
            max_retries=self.config.max_retries, max_in_flight=1,
            response_format=llamacpp_response_format(self.config.json_mode),
            server_ended=self._server.ended,
        )  # fmt: skip

    def complete(self, requests: list[ChatRequest], on_answer: OnAnswer | None = None) -> list[str]:
        if not requests:
            return []
        if self._client is None:
            self._client = self._start()
        return self._client.complete(requests, on_answer)

    def run(self, main: Callable[[Ask], Coroutine[Any, Any, T]]) -> T:
        if self._client is None:
            self._client = self._start()
        return self._client.run(main)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._server = self._client = None
