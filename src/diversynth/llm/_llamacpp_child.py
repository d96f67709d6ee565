"""The llama.cpp server child: `python -m diversynth.llm._llamacpp_child PARENT_PID ARGS...`.

It ends with its parent (a parent killed with SIGKILL cannot stop it), writes no core
file when llama.cpp crashes (a core of a large model fills a disk), then runs
llama-cpp-python's server with ARGS.
"""

from __future__ import annotations

import ctypes
import os
import resource
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(sys.argv[1])
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above took effect
        sys.exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.argv = ["llama_cpp.server", *sys.argv[2:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
