#!/usr/bin/env bash
# The depth sweep on a SLURM cluster through Hydra's submitit launcher: run this on a login
# node; it submits one job per depth (one GPU each), waits for them and prints the sweep table.
# Jobs are requeued on timeout/preemption and resume from checkpoints/last.ckpt.
# Usage: PARTITION=gpu jobs/depth_sweep_slurm.sh [EXPERIMENT] [hydra overrides...]
#   PARTITION=gpu TIME_MIN=720 jobs/depth_sweep_slurm.sh depth_sweep data.root=/scratch/cifar10
set -euo pipefail
cd "$(dirname "$0")/.."
experiment="${1:-depth_sweep}"
shift || true
args=("experiment=$experiment" "hydra/launcher=slurm" "hydra.launcher.timeout_min=${TIME_MIN:-1440}")
[ -n "${PARTITION:-}" ] && args+=("hydra.launcher.partition=$PARTITION")
[ -n "${ACCOUNT:-}" ] && args+=("+hydra.launcher.additional_parameters.account=$ACCOUNT")
PYTHONUNBUFFERED=1 uv run resvae-train "${args[@]}" "$@"
