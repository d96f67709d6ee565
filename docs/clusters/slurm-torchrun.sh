#!/usr/bin/env bash
# The train stage on several nodes with torchrun (DDP), restarting the process group when a
# training process dies. The run directory must be on storage every node mounts, and the
# stages before train must have run in it (on a Ray cluster: `--stages
# classes,prompts,generate,leaks`). Submit from the repository root:
#   sbatch docs/clusters/slurm-torchrun.sh [CONFIG] [RUN]
# With VENV set, the environment at $VENV is activated first; otherwise the command on
# PATH runs. Evaluate and report afterwards, in one process:
#   diversynth run docs/clusters/config.yaml --out /data/run --stages evaluate,report
#SBATCH --job-name=diversynth-train
#SBATCH --nodes=4
# one torchrun a node; it starts one training process a GPU
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
# for the 8 processes of a node and their train.workers loader processes each
#SBATCH --cpus-per-task=96
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:-docs/clusters/config.yaml}
RUN=${2:-/data/run}
GPUS=${SLURM_GPUS_ON_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

if [ -n "${VENV:-}" ]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi

# `diversynth torchrun` is torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 set: each
# restarted group gets a rendezvous store of its own. By torch's default the training
# processes share the launcher's store, where a group restarted after a lost node finds the
# old group's addresses and the rendezvous times out.
#
# --max-restarts: a training process that dies (an error, an out-of-memory kill, a GPU
# fault) or a node that is lost and comes back restarts the group; training resumes from
# its last checkpoint (train.checkpoint_every steps, train.checkpoint_minutes) and ends with
# the weights of an uninterrupted run. The first node holds the rendezvous store: if it is
# lost, the job ends; submit the same script again to resume.
srun diversynth torchrun --nnodes="$SLURM_NNODES" --nproc-per-node="$GPUS" \
  --rdzv-backend=c10d --rdzv-endpoint="$HEAD:29500" --rdzv-id="$SLURM_JOB_ID" \
  --max-restarts=3 -m diversynth train "$CONFIG" --out "$RUN"
