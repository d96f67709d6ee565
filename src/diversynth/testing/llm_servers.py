"""OpenAI-compatible servers on loopback for the tests and benchmarks: llama.cpp's real
server, and one that misbehaves on purpose. `python -m diversynth.testing.llm_servers`
runs the misbehaving one in a process of its own."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from diversynth.llm.llamacpp import LlamaCppServer


def chat_reply(content: str, model: str = "test-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def schema_answer(request: dict[str, Any]) -> str:
    """A usable answer to a stage's JSON request: each property of the request's JSON
    schema (a context axis, "styles") a list of two phrases, different per request."""
    response_format = request.get("response_format") or {}
    schema = response_format.get("json_schema", {}).get("schema", {})
    tag = request.get("seed", 0) % 10_000
    return json.dumps({key: [f"{key} idea {tag} {n}" for n in ("one", "two")]
                       for key in schema.get("properties", {})})  # fmt: skip


def example_shown(request: dict[str, Any]) -> str:
    """The worked example's JSON in a chat request's last message, or a refusal."""
    text = request["messages"][-1]["content"]
    found = re.search(r"^Example for [^:]*: (\{.*\})$", text, re.M)
    return found.group(1) if found else "I'm sorry, I can't do that."


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # connections opened at once wait to be accepted (default 5)


class MisbehavingServer:
    """Answers each request by the next behaviour in `script` (then by `default`):

    ok:TEXT     200 with TEXT as the answer        500 / 429 / 404 / 401   that status
    slow        answers after `slow_seconds`       bad_json    200 with a body that is not JSON
    truncated   promises more bytes than it sends  close       closes the connection at once
    echo        the worked example the request shows ("Example for ...: {...}"), verbatim;
                a refusal when it shows none
    schema      a usable answer to the request's JSON schema (`schema_answer`)

    Every request first waits `latency` seconds (as a model would, generating); the most
    requests open at once is kept in `peak_in_flight`, and when each arrived and was
    answered (time.monotonic()) in `spans`.
    """

    def __init__(self, default: str = 'ok:{"styles": ["oil painting"]}', slow_seconds: float = 3.0,
                 latency: float = 0.0) -> None:  # fmt: skip
        self.script: deque[str] = deque()
        self.default = default
        self.slow_seconds = slow_seconds
        self.latency = latency
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.peak_in_flight = 0
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = json.loads(body or b"{}")
                arrived = time.monotonic()
                with server._lock:
                    server.requests.append(request)
                    behaviour = server.script.popleft() if server.script else server.default
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    time.sleep(server.latency)
                    if behaviour == "echo":
                        behaviour = "ok:" + example_shown(request)
                    elif behaviour == "schema":
                        behaviour = "ok:" + schema_answer(request)
                    server.respond(self, behaviour)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                        server.spans.append((arrived, time.monotonic()))

            def do_GET(self) -> None:
                self.send_response(200)
                payload = b'{"object": "list", "data": []}'
                if self.path.endswith("/stats"):  # for a server in another process
                    payload = json.dumps(server.stats()).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stats(self) -> dict[str, Any]:
        """What `GET /v1/stats` answers: the requests, the most open at once and the spans
        since the last call, which starts the count again."""
        with self._lock:
            stats = {"requests": len(self.requests), "peak_in_flight": self.peak_in_flight,
                     "spans": self.spans}  # fmt: skip
            self.requests, self.spans, self.peak_in_flight = [], [], self.in_flight
        return stats

    def respond(self, handler: BaseHTTPRequestHandler, behaviour: str) -> None:
        kind, _, text = behaviour.partition(":")
        if kind == "close":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "slow":
            time.sleep(self.slow_seconds)
            kind, text = "ok", '{"styles": ["late answer"]}'
        if kind in ("500", "429", "404", "401"):
            payload = json.dumps({"error": {"message": f"status {kind}", "type": "test"}}).encode()
            handler.send_response(int(kind))
        elif kind == "bad_json":
            payload = b'{"choices": [ this is not json'
            handler.send_response(200)
        else:
            payload = json.dumps(chat_reply(text)).encode()
            handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        declared = len(payload) + (100 if kind == "truncated" else 0)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.wfile.write(payload if kind != "truncated" else payload[: len(payload) // 2])
        if kind == "truncated":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> MisbehavingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class NativeLlamaServer(LlamaCppServer):
    """llama.cpp's own `llama-server` binary with `parallel` slots (llm.context tokens
    each) in place of llama-cpp-python's server: the library's start, wait and stop."""

    def __init__(self, config: Any, binary: Path, parallel: int) -> None:
        super().__init__(config)
        self.binary = binary
        self.parallel = parallel

    def _command(self) -> list[str]:
        return [str(self.binary), "--model", str(self.config.model), "--host", "127.0.0.1",
                "--port", str(self.port), "--ctx-size", str(self.config.context * self.parallel),
                "--parallel", str(self.parallel), "--alias", self.model]  # fmt: skip


if __name__ == "__main__":
    # A MisbehavingServer in a process of its own (its threads then share no interpreter
    # lock with the client): prints its base URL, serves until stdin closes.
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--default", default="schema")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with MisbehavingServer(default=args.default, latency=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()
