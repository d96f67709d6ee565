#!/usr/bin/env bash
# llama.cpp's own HTTP server (llama-server: parallel slots, continuous batching), built
# from the llama.cpp sources inside the llama-cpp-python release that setup.sh installs,
# with the flags setup.sh builds that release with (any x86-64 CPU with AVX2), into
# .cache/llama-server-HASH/ (git-ignored; HASH of the release and the flags). Prints the
# binary's path; a second run reuses it. About 5-10 minutes on 2 cores. Needs cmake and
# g++ (setup.sh installs both).
#   bash benchmarks/build_llama_server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama_cmake_args.sh
version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
out=.cache/llama-server-$(echo "$version $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
if [ ! -x "$out/llama-server" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >&2
  tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
  # shellcheck disable=SC2086 # the flags are words
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF $LLAMA_CMAKE_ARGS \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
  cmake --build "$work/build" --target llama-server -j"$(nproc)" >&2
  mkdir -p "$out"
  cp "$work/build/bin/llama-server" "$out/llama-server"
fi
echo "$out/llama-server"
