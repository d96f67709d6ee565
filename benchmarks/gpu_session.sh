#!/usr/bin/env bash
# Every GPU figure the benchmarks owe, in one command on a bare single-GPU machine (Python
# 3.12 with torch, transformers and timm; about 9 minutes on an H100), each step under its
# own time limit so that one slow step cannot cost the others their figures.
#
# Here (with network):  bash benchmarks/gpu_wheels.sh
# There, with .whl/ and models/tiny/stable-diffusion/tokenizer copied along:
#   bash benchmarks/gpu_session.sh [DEST]
# The result files land in benchmarks/results/ and, when DEST is given, are copied there.
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:-}
if [ -n "$dest" ]; then exec > >(tee "$dest/session.log") 2>&1; fi  # the whole log, kept
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
status=0
step() {  # step SECONDS COMMAND...: run it, note a failure or a timeout, go on
  local limit=$1
  shift
  echo "== $* (limit ${limit}s)"
  timeout "$limit" "$@" || { echo "== failed or timed out: $*"; status=1; }
  # The scripts rewrite their JSON after each section or round: copy what there is now.
  if [ -n "$dest" ]; then cp benchmarks/results/*_gpu.json "$dest"/ 2>/dev/null; fi
}
# Each script writes its cheap figures first (train: eager aux BN, then the loader, then
# the compiled models; generate: one round of each side at a time).
step 250 python3 benchmarks/train_speed.py --model resnet50 --batch 256 --size 224 --compile \
  --no-compiled-cat --workers 14 --rounds 3 --steps 15
step 310 python3 benchmarks/generate_gpu.py --compile --fuse-qkv --rounds 2
exit $status
