#!/usr/bin/env bash
# The depth sweep (28, 40, 70, 100) on this machine, headless.
# Usage: jobs/depth_sweep_local.sh [EXPERIMENT] [hydra overrides...]
#   jobs/depth_sweep_local.sh                                   # experiment=depth_sweep
#   jobs/depth_sweep_local.sh seed_depth_sweep data.root=/data/cifar10
#   jobs/depth_sweep_local.sh depth_sweep seed=0,1,2            # 4 depths x 3 seeds: mean ± sd per depth in report.md
#   PARALLEL=2 jobs/depth_sweep_local.sh                        # two jobs at a time, each its own process
# Rerunning the same command resumes unfinished jobs and skips finished ones.
# Output: outputs/<experiment>/multirun/<command line>/<job>/ ; log: outputs/<experiment>/sweep-<date>.log
#
# Launchers:
# - default (Hydra's basic launcher): one job after another, inside the resvae-train process.
# - PARALLEL=N: hydra/launcher=submitit_local, each job a child process, N at a time
#   (hydra.sweeper.max_batch_size=N; submitit_local alone starts every job at once). Every job
#   sees the same devices (submitit_local has no per-job GPU choice), so on one GPU keep N to
#   what fits in its memory. Each job attempt may run TIME_MIN minutes (default 1440 here;
#   submitit_local's own default, hydra.launcher.timeout_min, is 60): 30 s before that, submitit
#   sends SIGUSR2, the job saves checkpoints/last.ckpt at its current batch, and submitit starts
#   it again, resuming there, at most 3 times (+hydra.launcher.max_num_timeout=N for more).
#
# Stopping: `kill <pid>` (SIGTERM; the pid is printed below) or Ctrl-C. The running job(s) save
# checkpoints/last.ckpt at the current batch and the sweep exits (143 for SIGTERM) with its
# report; no job is left running. With PARALLEL, prefer `kill`: a terminal's Ctrl-C also reaches
# submitit's per-job controllers, which kill their job a second later (it then keeps only its
# last end-of-epoch checkpoint). See docs/sweeps.md.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment="${1:-depth_sweep}"
shift || true
args=("experiment=$experiment")
if [ -n "${PARALLEL:-}" ]; then
  args+=("hydra/launcher=submitit_local" "hydra.sweeper.max_batch_size=$PARALLEL"
         "hydra.launcher.timeout_min=${TIME_MIN:-1440}")
fi
mkdir -p "outputs/$experiment"
log="outputs/$experiment/sweep-$(date +%Y%m%d-%H%M%S).log"
PYTHONUNBUFFERED=1 uv run resvae-train "${args[@]}" "$@" > >(tee "$log") 2>&1 &
pid=$!
echo "resvae: experiment=$experiment, log $log; stop with: kill $pid"
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM INT  # Ctrl-C too: background jobs of a script ignore SIGINT
status=0
wait "$pid" || status=$?
if kill -0 "$pid" 2>/dev/null; then  # a signal interrupted the wait: let the sweep finish stopping
  status=0
  wait "$pid" || status=$?
fi
exit "$status"
