"""The classes and prompts stages at ImageNet size, the LLM's own speed left out.

imagenet1k (1000 classes, text mode), 10 prompts a class (2 templates, 5 with contexts, 3
with styles), against an OpenAI-compatible server on loopback that answers at once from
each request's JSON schema: what is timed is the stages' own work (validation, the
other-class check, CLIP token counts, MiniLM embeddings, near duplicates, metrics).
Prints the wall time and peak memory of each stage.

    .venv/bin/python benchmarks/prompts_scale.py [--per-class 10]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _results import machine, write_result

from diversynth.config import load_config
from diversynth.pipeline import run_stages
from diversynth.run.rundir import RunDir
from diversynth.testing.llm_servers import chat_reply

ROOT = Path(__file__).resolve().parents[1]

WORDS = ["misty", "harbour", "morning", "glass", "velvet", "desert", "neon", "alley", "quiet",
         "meadow", "copper", "rain"]  # fmt: skip


class InstantAnswers(BaseHTTPRequestHandler):
    """Three phrases for every list the request's schema asks for, at once."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        schema = body["response_format"]["json_schema"]["schema"]
        rng = random.Random(body.get("seed", 0))
        answer = {key: [" ".join(rng.sample(WORDS, 3)) for _ in range(3)]
                  for key in schema["properties"]}  # fmt: skip
        payload = json.dumps(chat_reply(json.dumps(answer))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), InstantAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    config = load_config(ROOT / "configs" / "imagenet1k.yaml", [
        f"llm={{backend: openai, model: instant, base_url: {url}, max_in_flight: 16}}",
        f"prompts.per_class={args.per_class}", "prompts.shares={naive: 0.2, cd: 0.5, sd: 0.3}",
    ])  # fmt: skip
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        for stage in ("classes", "prompts"):
            start = time.perf_counter()
            run_stages(config, RunDir(Path(folder) / "run"), stages=[stage])
            seconds[stage] = round(time.perf_counter() - start, 1)
        summary = json.loads((Path(folder) / "run" / ".state" / "prompts.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"classes {seconds['classes']} s, prompts {seconds['prompts']} s, "
          f"peak memory {peak_mb:.0f} MB")  # fmt: skip
    write_result("prompts_scale", {
        "benchmark": "prompts_scale",
        "machine": machine(),
        "classes": 1000,
        "prompts": summary["summary"]["prompts"],
        "seconds": seconds,
        "peak_rss_mb": round(peak_mb),
        "command": " ".join(["python benchmarks/prompts_scale.py", *sys.argv[1:]]),
    })  # fmt: skip


if __name__ == "__main__":
    main()
