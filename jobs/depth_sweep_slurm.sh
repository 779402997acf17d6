#!/usr/bin/env bash
# The depth sweep on a SLURM cluster through Hydra's submitit launcher: run this on a login
# node; it submits one job per depth (one GPU each), waits for them and prints the sweep table.
# Usage: PARTITION=gpu jobs/depth_sweep_slurm.sh [EXPERIMENT] [hydra overrides...]
#   PARTITION=gpu TIME_MIN=720 jobs/depth_sweep_slurm.sh depth_sweep data.root=/scratch/cifar10
#   PARTITION=gpu PARALLEL=4 jobs/depth_sweep_slurm.sh depth_sweep seed=0,1,2   # 12 jobs, 4 at a time
#
# Time limits (conf/hydra/launcher/slurm.yaml): each job attempt gets TIME_MIN minutes
# (hydra.launcher.timeout_min, 1440 here). signal_delay_s (120) before the limit SLURM sends
# SIGUSR2: the job saves checkpoints/last.ckpt at its current batch, then submitit requeues it
# and it resumes from there, at most max_num_timeout (5) times. SIGTERM (scancel, preemption)
# also saves last.ckpt at the current batch. PARALLEL caps how many jobs run at once
# (hydra.launcher.array_parallelism; 256 by default). Stopping this script (the waiting process)
# leaves the SLURM jobs running: cancel them with scancel. See docs/sweeps.md.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment="${1:-depth_sweep}"
shift || true
args=("experiment=$experiment" "hydra/launcher=slurm" "hydra.launcher.timeout_min=${TIME_MIN:-1440}")
[ -n "${PARTITION:-}" ] && args+=("hydra.launcher.partition=$PARTITION")
[ -n "${ACCOUNT:-}" ] && args+=("+hydra.launcher.additional_parameters.account=$ACCOUNT")
[ -n "${PARALLEL:-}" ] && args+=("hydra.launcher.array_parallelism=$PARALLEL")
PYTHONUNBUFFERED=1 uv run resvae-train "${args[@]}" "$@"
