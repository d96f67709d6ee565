"""Requests in flight against a real OpenAI-compatible server: 1 against N, same requests.

Starts llama.cpp's own server (`llama-server --parallel N`: N slots, continuous batching;
built once by benchmarks/build_llama_server.sh) on loopback with the bundled
SmolLM2-135M-Instruct GGUF, sends the prompts stage's context requests for the 10
Fashion-MNIST classes through diversynth's `openai` backend (no cache) with
`max_in_flight` 1 and N, several rounds in alternation, and prints the ratio of the median
wall times. `--server python` uses llama-cpp-python's server instead, which answers one
request at a time (so N in flight cannot be faster there).

    .venv/bin/python benchmarks/llm_in_flight.py [--in-flight 4] [--rounds 3] [--server python]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import write_result  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))

from llm_servers import LlamaCppServer  # noqa: E402

from diversynth.assets import resolve_bundled  # noqa: E402
from diversynth.config import CD_AXES, LLMConfig  # noqa: E402
from diversynth.llm.backends import OpenAIBackend  # noqa: E402
from diversynth.prompts.llm_requests import context_request  # noqa: E402

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip


def timed(base_url: str, in_flight: int, round_index: int) -> float:
    config = LLMConfig(backend="openai", model="smollm2", base_url=base_url,
                       max_in_flight=in_flight, json_mode="json_object", timeout=300)  # fmt: skip
    # the same requests for both settings within a round, new seeds each round
    requests = [context_request(n, None, CD_AXES, 2, 1000 * round_index + i, 160)
                for i, n in enumerate(CLASSES)]  # fmt: skip
    start = time.perf_counter()
    answers = OpenAIBackend(config).complete(requests)
    seconds = time.perf_counter() - start
    assert len(answers) == len(requests)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=["native", "python"], default="native")
    args = parser.parse_args()
    native = None
    if args.server == "native":
        built = subprocess.run(["bash", str(ROOT / "benchmarks" / "build_llama_server.sh")],
                               check=True, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        native = ROOT / built.stdout.strip().splitlines()[-1]
    times: dict[int, list[float]] = {1: [], args.in_flight: []}
    gguf = resolve_bundled("bundled:smollm2")
    with LlamaCppServer(gguf, native=native, parallel=args.in_flight) as server:
        timed(server.base_url, 1, 99)  # warm-up (loads the model's pages)
        for r in range(args.rounds):
            for n in (1, args.in_flight) if r % 2 == 0 else (args.in_flight, 1):
                times[n].append(timed(server.base_url, n, r))
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
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "requests": len(CLASSES),
        "seconds": {str(k): v for k, v in times.items()},
        "median_seconds": {"1": serial, str(args.in_flight): parallel},
        "speedup": round(ratio, 3),
        "command": "python benchmarks/llm_in_flight.py " + " ".join(sys.argv[1:]),
    }
    write_result("llm_in_flight" if native else "llm_in_flight_python_server", result)


if __name__ == "__main__":
    main()
