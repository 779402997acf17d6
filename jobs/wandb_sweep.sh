#!/usr/bin/env bash
# A W&B sweep driving resvae-train: creates the sweep from a YAML in jobs/wandb_sweeps/ on the
# W&B server (`wandb sweep`) and starts one agent on this machine (`wandb agent`), which runs
# `uv run resvae-train <overrides>` for each set of parameters the sweep picks.
#
# Needs a W&B server and a login: `uv run wandb login` for api.wandb.ai, or WANDB_BASE_URL and
# WANDB_API_KEY for a self-hosted server. Offline there is nothing to run: the sweep's controller
# (the search) lives on the server. For a search without a server use Optuna instead:
#   uv run resvae-train +hparams_search=vae_lr_latent ...
#
# Usage: jobs/wandb_sweep.sh [SWEEP_YAML]          (default jobs/wandb_sweeps/vae_lr_latent.yaml)
#   COUNT=10 jobs/wandb_sweep.sh jobs/wandb_sweeps/vae_lr_latent.yaml   # this agent stops after 10 runs
#   PROJECT=resvae ENTITY=my-team jobs/wandb_sweep.sh ...              # where the sweep and its runs go
#   SWEEP_ID=my-team/resvae/abc123 CUDA_VISIBLE_DEVICES=1 jobs/wandb_sweep.sh   # one more agent, e.g. per GPU
#
# The agent forwards SIGINT/SIGTERM to the run (--forward-signals), which saves
# checkpoints/last.ckpt at its current batch and stops; each run's folder is named by its
# overrides, so a run with the same parameters later continues from it. Logs: the agent's
# output here; each run's train.log and summary.json in its folder under outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
file="${1:-jobs/wandb_sweeps/vae_lr_latent.yaml}"
case "${WANDB_MODE:-}" in
  offline|dryrun|disabled)
    echo "jobs/wandb_sweep.sh: WANDB_MODE=$WANDB_MODE: a W&B sweep needs the server; unset it" >&2
    exit 2 ;;
esac
export WANDB_PROJECT="${PROJECT:-${WANDB_PROJECT:-resvae}}"
[ -n "${ENTITY:-}" ] && export WANDB_ENTITY="$ENTITY"
if [ -z "${SWEEP_ID:-}" ]; then
  out="$(uv run wandb sweep --project "$WANDB_PROJECT" ${WANDB_ENTITY:+--entity "$WANDB_ENTITY"} "$file" 2>&1)" || {
    printf '%s\n' "$out" >&2
    echo "jobs/wandb_sweep.sh: could not create the sweep (logged in? \`uv run wandb login\`)" >&2
    exit 1
  }
  printf '%s\n' "$out"
  # "wandb: Run sweep agent with: wandb agent ENTITY/PROJECT/ID" (colours stripped)
  SWEEP_ID="$(printf '%s\n' "$out" | sed 's/\x1b\[[0-9;]*m//g' | sed -n 's/.*wandb agent \([^ ]*\).*/\1/p' | tail -n 1)"
  [ -n "$SWEEP_ID" ] || { echo "jobs/wandb_sweep.sh: no sweep id in the output above" >&2; exit 1; }
  echo "more agents for this sweep: SWEEP_ID=$SWEEP_ID jobs/wandb_sweep.sh"
fi
PYTHONUNBUFFERED=1 exec uv run wandb agent --forward-signals ${COUNT:+--count "$COUNT"} "$SWEEP_ID"
