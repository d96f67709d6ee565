#!/usr/bin/env bash
# The GPU figures the benchmarks owe, on a bare single-GPU machine (Python 3.12 with torch,
# transformers and timm), each step under its own time limit so that one slow step cannot
# cost the others their figures.
#
# Here (with network):  bash benchmarks/gpu_wheels.sh
# There, with .whl/ and models/tiny/stable-diffusion/tokenizer copied along:
#   bash benchmarks/gpu_session.sh DEST STEP...
# Steps, with the seconds each is allowed (and what it took on an H100, where timed):
#   train           250  eager plain/aux/aux_cat, then the data loader (not timed alone)
#   train-compiled  300  plain and aux under torch.compile (over a minute each to compile)
#   kernels          90  aux_bn_kernels.py: profiler kernel tables, one-layer times (23 s)
#   generate        300  generate_gpu.py --compile --fuse-qkv (228 s)
# One device call runs 10 minutes at most: `train kernels` and `generate train-compiled`
# fit one each. The result files land in benchmarks/results/ and, with DEST (use "" for
# none), are copied there after every step, with the whole log as DEST/session.log.
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:-}
shift || true
[ $# -gt 0 ] || { sed -n '9,16p' "$0"; exit 2; }
if [ -n "$dest" ]; then exec > >(tee "$dest/session.log") 2>&1; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
status=0
run_step() {  # run_step SECONDS COMMAND...: run it, note a failure or a timeout, go on
  local limit=$1
  shift
  echo "== $* (limit ${limit}s)"
  timeout "$limit" "$@" || { echo "== failed or timed out: $*"; status=1; }
  # The scripts rewrite their JSON after each section or round: copy what there is now.
  if [ -n "$dest" ]; then cp benchmarks/results/*_gpu*.json "$dest"/ 2>/dev/null; fi
}
train=(python3 benchmarks/train_speed.py --model resnet50 --batch 256 --size 224 --workers 14
  --rounds 3 --steps 15)
for step in "$@"; do
  case $step in
    train) run_step 250 "${train[@]}" ;;
    train-compiled) run_step 300 "${train[@]}" --only compiled --no-compiled-cat ;;
    kernels) run_step 90 python3 benchmarks/aux_bn_kernels.py ;;
    generate) run_step 300 python3 benchmarks/generate_gpu.py --compile --fuse-qkv --rounds 2 ;;
    *) echo "unknown step: $step"; status=2 ;;
  esac
done
exit $status
