#!/usr/bin/env bash
# Wheels a bare GPU machine (Python 3.12, torch, torchvision, triton, transformers, timm
# already there) lacks for the GPU benchmarks, downloaded here into .whl/ (git-ignored):
#   bash benchmarks/gpu_wheels.sh
# There, with .whl and models/tiny/stable-diffusion/tokenizer carried along, the GPU
# figures: bash benchmarks/gpu_session.sh DEST STEP... (its header lists the steps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
versions() {  # the versions installed here, so both machines run the same code
  "$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E "^($(IFS='|'; echo "$*"))==" || true
}
mapfile -t pins < <(versions diffusers pydantic pydantic_core annotated-types typing-inspection \
  typing_extensions webdataset braceexpand open_clip_torch ftfy wcwidth)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}" torchao==0.18.0  # torchao: only the fp8 row of generate_gpu.py --lossy
ls .whl
