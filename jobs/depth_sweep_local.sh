#!/usr/bin/env bash
# The depth sweep (28, 40, 70, 100) on this machine, one job after another, headless.
# Usage: jobs/depth_sweep_local.sh [EXPERIMENT] [hydra overrides...]
#   jobs/depth_sweep_local.sh                                   # experiment=depth_sweep
#   jobs/depth_sweep_local.sh seed_depth_sweep data.root=/data/cifar10
# Rerunning the same command resumes unfinished jobs and skips finished ones.
# Output: outputs/<experiment>/multirun/<job>/ ; log: outputs/<experiment>/sweep-<date>.log
set -euo pipefail
cd "$(dirname "$0")/.."
experiment="${1:-depth_sweep}"
shift || true
mkdir -p "outputs/$experiment"
log="outputs/$experiment/sweep-$(date +%Y%m%d-%H%M%S).log"
echo "resvae: experiment=$experiment, log $log"
PYTHONUNBUFFERED=1 uv run resvae-train "experiment=$experiment" "$@" 2>&1 | tee "$log"
