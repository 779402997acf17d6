"""What a run folder is, for every tool that reads one: `checkpoints/`, summary.json, `.hydra/`,
and which checkpoint stands for the run (best.ckpt, or last.ckpt where the run tests its final
weights; none where the run diverged before any finite validation).

    RUN/checkpoints/{best,last}.ckpt   RUN/summary.json   RUN/.hydra/config.yaml   RUN/metrics.csv
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from resvae.run.checkpoints import CheckpointError

CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")  # a run folder's checkpoint, in order of preference


def is_run_dir(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir()


def find_checkpoint(run_dir: Path) -> Path:
    """The run folder's checkpoints/best.ckpt, else checkpoints/last.ckpt (last first where the run
    tests its final weights, test_weights=last); refused where the run
    validated but no epoch had a finite val/loss (a diverged run: its last weights are not a
    result, and a tool would only fail on them later)."""
    if not (run_dir / "checkpoints" / CHECKPOINT_NAMES[0]).is_file() and (diverged := _diverged(run_dir)):
        raise CheckpointError(
            f"{run_dir} has no best.ckpt: no epoch had a finite val/loss ({diverged}); to look at its "
            f"last weights anyway, pass {run_dir / 'checkpoints' / CHECKPOINT_NAMES[1]}"
        )
    for name in CHECKPOINT_NAMES[::-1] if _tests_last(run_dir) else CHECKPOINT_NAMES:
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    hint = f" (it holds {', '.join(others)}: pass one of them)" if others else ""
    raise CheckpointError(
        f"no checkpoint in {run_dir / 'checkpoints'}: neither best.ckpt nor last.ckpt{hint}"
    )


def _tests_last(run_dir: Path) -> bool:
    """The run's config says test_weights=last (the 2018 study's protocol: the final weights)."""
    try:
        return OmegaConf.load(run_dir / ".hydra" / "config.yaml").get("test_weights") == "last"
    except Exception:  # no or unreadable config: the default, best.ckpt
        return False


def _diverged(run_dir: Path) -> str | None:
    """summary.json's error when the run failed with no finite validation loss, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") == "failed" and summary.get("best_val_loss") is None and summary.get("epochs"):
        return str(summary.get("error") or "the run failed")
    return None


def run_dirs_below(root: Path) -> list[Path]:
    """Every run folder (one with checkpoints/) below `root`, not looking inside run folders."""
    found: list[Path] = []
    for folder, subdirs, _ in os.walk(root):
        here = Path(folder)
        if here != root and is_run_dir(here):
            found.append(here)
            subdirs[:] = []
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "wandb")
    return sorted(found)


def run_folder(path: Path | None) -> Path | None:
    """The run folder of a checkpoint or run folder: RUN/checkpoints/x.ckpt -> RUN; a folder with
    checkpoints/ or .hydra/ is one; any other checkpoint's folder if it holds .hydra/, else None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return path if (path / "checkpoints").is_dir() or (path / ".hydra").is_dir() else None
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return path.parent if (path.parent / ".hydra").is_dir() else None
