"""Hydra callbacks: a multirun ends with a table of its jobs and the list of those that failed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resvae.callbacks.summary import read_summary

log = logging.getLogger("resvae.sweep")


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(sweep_dir.glob("*/summary.json")):
        summary = read_summary(path.parent) or {}
        rows.append({"job": path.parent.name, **summary})
    return rows


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_rows(sweep_dir)
        lines = [f"sweep {sweep_dir}: {len(rows)} job(s)"]
        for r in rows:
            lines.append(
                f"  {r['job']:<40} {r.get('status', '?'):<9} depth={r.get('depth')} "
                f"epochs={r.get('epochs')} best_val_loss={r.get('best_val_loss')}"
            )
        failed = [r for r in rows if r.get("status") == "failed"]
        if failed:
            lines.append(f"{len(failed)} job(s) failed:")
            lines += [f"  {r['job']}: {r.get('error')}" for r in failed]
        print("\n".join(lines), flush=True)
