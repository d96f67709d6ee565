#!/usr/bin/env bash
# The GPU figures the benchmarks owe, on a bare single-GPU machine (Python 3.12 with torch,
# torchvision, triton, transformers and timm), each step under its own time limit so that
# one slow step cannot cost the others their figures.
#
# Here (with network):  bash benchmarks/gpu_wheels.sh
# There, with .whl/ and models/tiny/stable-diffusion/tokenizer copied along:
#   bash benchmarks/gpu_session.sh DEST STEP...
# Steps, with the seconds each is allowed:
#   generate        450  generate_gpu.py --resume-check --variants: the default mode killed
#                        mid-shard and resumed (same bytes?), then each speed setting alone
#                        against plain diffusers (its own time box: 360 s)
#   train           240  train_speed.py eager plain/aux/aux_aten/aux_cat, then both input
#                        paths (decode_on workers, device; 8 workers) alone and feeding aux
#   train-compiled  300  plain and aux under torch.compile (over a minute each to compile)
#   lossy           240  generate_gpu.py --lossy: the pixel-changing settings, with PSNR
#   kernels         120  aux_bn_kernels.py: profiles of plain, aux, aux_aten; one layer
# One device call runs 10 minutes at most and a session has 15 minutes of device time
# (about 1.5 of them to start the machine): `generate` and then `train` in two calls
# first; `train-compiled lossy` and `kernels` in a later session. The result files land
# in benchmarks/results/ and, with DEST (use "" for none), are copied there after every
# step, with the whole log as DEST/session.log.
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:-}
shift || true
[ $# -gt 0 ] || { sed -n '9,23p' "$0"; exit 2; }
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
train=(python3 benchmarks/train_speed.py --model resnet50 --batch 256 --size 224 --workers 8
  --rounds 3 --steps 15)
for step in "$@"; do
  case $step in
    generate) run_step 450 python3 benchmarks/generate_gpu.py --resume-check --variants ;;
    train) run_step 240 "${train[@]}" --only eager --only loader ;;
    train-compiled) run_step 300 "${train[@]}" --only compiled --no-compiled-cat ;;
    lossy) run_step 240 python3 benchmarks/generate_gpu.py --lossy ;;
    kernels) run_step 120 python3 benchmarks/aux_bn_kernels.py ;;
    *) echo "unknown step: $step"; status=2 ;;
  esac
done
exit $status
