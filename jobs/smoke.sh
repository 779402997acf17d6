#!/usr/bin/env bash
# A CPU run of a minute on generated images: checks that the install and the pipeline work.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONUNBUFFERED=1 uv run resvae-train experiment=smoke "$@"
