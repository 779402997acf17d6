#!/usr/bin/env bash
# The GPU acceptance run (issue 17's targets) on one GPU, in under 10 minutes:
#   jobs/acceptance.sh [OUT.json] [resvae-bench options or overrides ...]
# With a .whl/ folder of wheels (a GPU machine with torch, Lightning and torchmetrics
# preinstalled but not hydra-core, omegaconf and antlr4; see docs/benchmarks.md) they are
# installed into a private folder and the source tree runs with the machine's python3;
# otherwise the project's uv environment runs it. Without CUDA it runs a tiny CPU version.
set -euo pipefail
cd "$(dirname "$0")/.."
out=acceptance.json
if (($#)) && [[ $1 != -* && $1 != *=* ]]; then
  out=$1
  shift
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  site="${RESVAE_SITE:-/tmp/resvae-site}"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
  exec python3 -m resvae.cli.bench --acceptance --json "$out" "$@"
fi
exec uv run resvae-bench --acceptance --json "$out" "$@"
