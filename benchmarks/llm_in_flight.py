"""Requests in flight against a real OpenAI-compatible server: 1 against N, same requests.

Starts llama.cpp's own server (`llama-server --parallel N`: N slots, continuous batching;
built once by benchmarks/build_llama_server.sh) on loopback with the bundled
SmolLM2-135M-Instruct GGUF, sends the prompts stage's context requests for the 10
Fashion-MNIST classes through diversynth's `openai` backend (no cache) with
`max_in_flight` 1 and N, several rounds in alternation, and prints the ratio of the median
wall times. `--server python` uses llama-cpp-python's server instead, which answers one
request at a time (so N in flight cannot be faster there).

    .venv/bin/python benchmarks/llm_in_flight.py [--in-flight 4] [--rounds 3] [--server python]

`--latency SECONDS` needs no model: a loopback server answers every request with usable
JSON after SECONDS, and the prompts stage's requests (contexts and styles, worked examples
shown, validated and cached as in a run) go to it for 40 and 400 ImageNet classes at the
`openai` backend's default max_in_flight. Printed per class count: the requests, the wall
time from the first request to the last answer, the ideal `requests x latency /
in_flight`, and their ratio (the stage's whole LLM step, examples chosen included, too).

    .venv/bin/python benchmarks/llm_in_flight.py --latency 0.5 [--classes 40 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _results import cpu, machine, write_result

from diversynth.config import CD_AXES, LLMConfig
from diversynth.llm.backends import OpenAIBackend
from diversynth.llm.llamacpp import LlamaCppServer
from diversynth.stages.prompts.llm_requests import context_request
from diversynth.testing.llm_servers import NativeLlamaServer

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip


def timed(server: LlamaCppServer, in_flight: int, round_index: int) -> float:
    config = LLMConfig(backend="openai", model=server.model, base_url=server.base_url,
                       max_in_flight=in_flight, json_mode="json_object", timeout=300)  # fmt: skip
    # the same requests for both settings within a round, new seeds each round
    requests = [context_request(n, None, CD_AXES, 2, 1000 * round_index + i, 160, None)
                for i, n in enumerate(CLASSES)]  # fmt: skip
    start = time.perf_counter()
    answers = OpenAIBackend(config).complete(requests)
    seconds = time.perf_counter() - start
    assert len(answers) == len(requests)
    return seconds


def latency_mode(latency: float, class_counts: list[int]) -> None:
    """The prompts stage's requests against a server that answers after `latency` s."""
    from diversynth.config import ClassesConfig, load_config
    from diversynth.data.classes.catalog import load_classes
    from diversynth.models.diversity import Embedder
    from diversynth.run.rundir import RunDir
    from diversynth.stages.prompts.budget import strategy_counts
    from diversynth.stages.prompts.stage import _llm_answers

    names = [entry.raw_name for entry in load_classes(ClassesConfig(catalog="imagenet1k"))]
    rows = []
    # the server in a process of its own, as a real one is: its threads do not contend
    # with the client's event loop for the interpreter lock
    command = [sys.executable, "-m", "diversynth.testing.llm_servers", "--default", "schema",
               "--latency", str(latency)]  # fmt: skip
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen(command, **pipes) as server, tempfile.TemporaryDirectory() as folder:
        assert server.stdout is not None and server.stdin is not None
        base_url = server.stdout.readline().strip()
        config = load_config(ROOT / "configs" / "imagenet1k.yaml", [
            f"llm={{backend: openai, model: any, base_url: {base_url}}}",
            "prompts.shares={naive: 0.2, cd: 0.5, sd: 0.3}",
        ])  # fmt: skip
        assert config.llm is not None
        in_flight = config.llm.max_in_flight  # the openai backend's default
        embedder = Embedder(config.prompts.embedder)
        embedder(["warm-up"])  # the first call sets up the model: not part of the requests
        counts = strategy_counts(config.prompts.per_class, config.prompts.shares)
        for count in class_counts:
            classes = [{"index": i, "name": name} for i, name in enumerate(names[:count])]
            start = time.perf_counter()
            _llm_answers(config, RunDir(Path(folder) / str(count)), classes, counts, embedder)
            step = time.perf_counter() - start
            with urllib.request.urlopen(f"{base_url}/stats") as reply:  # and counts anew
                stats = json.load(reply)
            seconds = max(e for _, e in stats["spans"]) - min(s for s, _ in stats["spans"])
            requests, peak = stats["requests"], stats["peak_in_flight"]
            ideal = requests * latency / in_flight
            rows.append({"classes": count, "requests": requests, "seconds": round(seconds, 3),
                         "ideal_seconds": round(ideal, 3), "ratio": round(seconds / ideal, 3),
                         "peak_in_flight": peak, "stage_step_seconds": round(step, 3),
                         "stage_step_ratio": round(step / ideal, 3)})  # fmt: skip
            print(f"{count} classes: {requests} requests in {seconds:.2f} s (ideal {requests} x "
                  f"{latency:g} s / {in_flight} = {ideal:.2f} s, ratio {seconds / ideal:.2f}; "
                  f"peak {peak} in flight; the whole LLM step {step:.2f} s)",
                  flush=True)  # fmt: skip
        server.stdin.close()  # the server ends
    write_result("llm_in_flight_latency", {
        "benchmark": "llm_in_flight_latency",
        "server": f"diversynth.testing.llm_servers on loopback in its own process, usable "
                  f"JSON after {latency:g} s a request (no model)",
        "machine": machine(),
        "latency_seconds": latency,
        "max_in_flight": in_flight,
        "results": rows,
        "command": "python benchmarks/llm_in_flight.py " + " ".join(sys.argv[1:]),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=["native", "python"], default="native")
    parser.add_argument("--latency", type=float, help="seconds an answer takes; no model")
    parser.add_argument("--classes", type=int, nargs="+", default=[40, 400])
    args = parser.parse_args()
    if args.latency is not None:
        latency_mode(args.latency, args.classes)
        return
    native = None
    if args.server == "native":
        built = subprocess.run(["bash", str(ROOT / "benchmarks" / "build_llama_server.sh")],
                               check=True, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        native = ROOT / built.stdout.strip().splitlines()[-1]
    times: dict[int, list[float]] = {1: [], args.in_flight: []}
    llm = LLMConfig(backend="llamacpp", model="bundled:smollm2")
    server = (
        LlamaCppServer(llm) if native is None else NativeLlamaServer(llm, native, args.in_flight)
    )
    with server:
        timed(server, 1, 99)  # warm-up (loads the model's pages)
        for r in range(args.rounds):
            for n in (1, args.in_flight) if r % 2 == 0 else (args.in_flight, 1):
                times[n].append(timed(server, n, r))
                print(f"round {r}: in flight {n}: {times[n][-1]:.2f} s", flush=True)
    serial, parallel = statistics.median(times[1]), statistics.median(times[args.in_flight])
    ratio = serial / parallel
    print(f"median {len(CLASSES)} requests: 1 in flight {serial:.2f} s, "
          f"{args.in_flight} in flight {parallel:.2f} s, speed-up {ratio:.2f}x")  # fmt: skip
    result = {
        "benchmark": "llm_in_flight",
        "server": (
            f"llama-server --parallel {args.in_flight} (llama.cpp from llama-cpp-python's sources)"
            if native
            else "python -m llama_cpp.server"
        )
        + ", SmolLM2-135M-Instruct Q4_1 GGUF",
        "machine": f"{cpu()}, no GPU",
        "requests": len(CLASSES),
        "seconds": {str(k): v for k, v in times.items()},
        "median_seconds": {"1": serial, str(args.in_flight): parallel},
        "speedup": round(ratio, 3),
        "command": "python benchmarks/llm_in_flight.py " + " ".join(sys.argv[1:]),
    }
    write_result("llm_in_flight" if native else "llm_in_flight_python_server", result)


if __name__ == "__main__":
    main()
