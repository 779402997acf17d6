"""How the analyses write their results: CSV and text files (atomically), matplotlib figures
whose titles and legends say which network is plain and which residual, and one W&B run with
the tables and plots (`--wandb-project`, or a sweep with a W&B logger)."""

from __future__ import annotations

import csv
import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resvae.run.io import atomic_write


# ------------------------------------------------------------------------------------- files
def figure(title: str, ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure (no pyplot) with `ncols` gridded axes side by side, titled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * ncols, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, axes


def save_figure(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> Path:
    """`rows` as CSV with the columns `fields` (other keys left out)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------- legends
KIND_NAMES = {
    "plain": "plain (shortcut none)",
    "residual": "residual",
    "mixed": "mixed plain and residual blocks",
}


def network_legend(result: dict[str, Any]) -> str:
    """A model's legend entry: which network it is and its label, e.g. `plain (shortcut none):
    d40` or `residual (shortcut identity): d40`: the comparison the plots exist for."""
    kind = _result_kind(result)
    if kind == "unknown":
        text = str(result["label"])
    elif kind == "residual" and result.get("shortcut") not in (None, "none"):
        text = f"residual (shortcut {result['shortcut']}): {result['label']}"
    else:
        text = f"{KIND_NAMES.get(kind, kind)}: {result['label']}"
    # long labels (--init overrides) wrapped: an unwrapped legend squeezes the axes to nothing
    return textwrap.fill(text, width=48, break_on_hyphens=False)


def _result_kind(result: dict[str, Any]) -> str:
    """The result's network kind, or that of its block rows (the gradient-flow callback's
    results carry only those)."""
    if result.get("kind"):
        return str(result["kind"])
    kinds = {row.get("kind") for row in result.get("blocks", [])} - {None}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "unknown")


def kinds_title(results: Sequence[dict[str, Any]]) -> str:
    """What the title says about the networks: `plain (shortcut none) vs residual` etc."""
    kinds = sorted({_result_kind(r) for r in results} - {"unknown"}, key=lambda k: (k != "plain", k))
    return " vs ".join(KIND_NAMES.get(k, k) for k in kinds) or "networks"


# ------------------------------------------------------------------------------------- W&B
def log_to_wandb(
    files: Sequence[Path],
    project: str | None,
    group: str | None,
    entity: str | None = None,
    name: str | None = None,
) -> None:
    """Log the CSV tables (wandb.Table) and PNG plots (wandb.Image) as one W&B run, job_type
    "analysis", its files (wandb/) beside the first file. WANDB_MODE decides the mode when set;
    otherwise online only when logged in."""
    import wandb

    from resvae.run.config import wandb_offline

    mode = None if os.environ.get("WANDB_MODE") else ("offline" if wandb_offline() else "online")
    run = wandb.init(
        project=project or "resvae", group=group, entity=entity, job_type="analysis", name=name, mode=mode,
        dir=str(files[0].parent) if files else None,
    )  # fmt: skip
    logged: dict[str, Any] = {}
    for path in files:
        key = f"analysis/{path.stem}"  # a table and a plot may share a stem: .../table, .../plot
        if path.suffix == ".png":
            logged[f"{key}/plot"] = wandb.Image(str(path))
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                table = list(csv.reader(f))
            if table:
                logged[f"{key}/table"] = wandb.Table(columns=table[0], data=table[1:])
    run.log(logged)
    run.finish()
