#!/usr/bin/env bash
# Upload offline W&B runs (written when the job had no W&B login) once you are logged in.
# Usage: jobs/wandb_sync.sh [OUTPUT_ROOT]   (default: outputs)
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-outputs}"
mapfile -t runs < <(find "$root" -type d -name 'offline-run-*' | sort)
if [ "${#runs[@]}" -eq 0 ]; then
  echo "no offline W&B runs under $root"
  exit 0
fi
echo "syncing ${#runs[@]} offline run(s) from $root"
uv run wandb sync "${runs[@]}"
