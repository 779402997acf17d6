"""The sweep report's plots (matplotlib, no display needed), written as PNG files.

- `val_loss_curves.png`: validation loss per epoch of every run, coloured by depth;
- `val_loss_vs_depth.png`: minimum validation loss vs depth, each run and the mean ± sd over seeds;
- `train_hours_vs_depth.png`: training hours vs depth, likewise.

A plot without data is not drawn, and an old file of it is removed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from resvae.run.io import atomic_write
from resvae.sweep.runs import RunRecord, integer
from resvae.sweep.tables import Row

PLOTS: dict[str, tuple[str, str, str]] = {  # file stem: (statistic, title, y label)
    "val_loss_vs_depth": ("min_val_loss", "Minimum validation loss vs depth", "minimum validation loss"),
    "train_hours_vs_depth": ("train_hours", "Training time vs depth", "training time (hours)"),
}


def write_plots(runs: Sequence[RunRecord], rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """PNG plots in `out_dir`; a plot without data is not drawn (and an old one is removed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {"val_loss_curves": _curves_figure(runs)}
    for stem, (key, title, label) in PLOTS.items():
        drawn[stem] = _by_depth_figure(rows, key, title, label)
    written = []
    for stem, fig in drawn.items():
        path = out_dir / f"{stem}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
        written.append(path)
    return written


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _depth_colors(depths: Iterable[int | None]) -> Callable[[int | None], Any]:
    from matplotlib import colormaps

    distinct = sorted({d for d in depths if d is not None})
    cmap = colormaps["viridis"]
    return lambda d: cmap(distinct.index(d) / max(len(distinct) - 1, 1)) if d in distinct else "gray"


def _curves_figure(runs: Sequence[RunRecord]) -> Any | None:
    with_curves = [r for r in runs if r.val_curve]
    if not with_curves:
        return None
    fig, ax = _figure("Validation loss per epoch", "epoch", "validation loss")
    depth = lambda r: integer(r.summary.get("depth"))  # noqa: E731
    color = _depth_colors(depth(r) for r in with_curves)
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(sorted(with_curves, key=lambda r: (depth(r) or 0, r.name))):
        seed = integer(run.summary.get("seed"))
        label = f"depth {depth(run)}, seed {seed}" if depth(run) is not None else run.name
        epochs, values = zip(*run.val_curve)
        style = styles[(seed if seed is not None else i) % len(styles)]
        ax.plot(
            epochs,
            values,
            style,
            color=color(depth(run)),
            label=label,
            marker="." if len(epochs) < 30 else None,
        )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small", ncols=2 if len(with_curves) > 8 else 1)
    return fig


def _by_depth_figure(rows: Sequence[Row], key: str, title: str, label: str) -> Any | None:
    runs = [r for r in rows if r["kind"] == "run" and r["depth"] is not None and r[key] is not None]
    if not runs:
        return None
    fig, ax = _figure(title, "depth", label)
    series = sorted({r["network"] or "" for r in runs})
    for i, network in enumerate(series):
        mine = [r for r in runs if (r["network"] or "") == network]
        color = f"C{i}"
        finished = [r for r in mine if r["status"] == "finished"]
        others = [r for r in mine if r["status"] != "finished"]
        ax.scatter([r["depth"] for r in finished], [r[key] for r in finished], color=color, alpha=0.5, s=18)
        if others:
            ax.scatter(
                [r["depth"] for r in others],
                [r[key] for r in others],
                color=color,
                marker="x",
                label=f"{network} not finished".strip(),
            )
        depths = sorted({r["depth"] for r in finished})
        if depths:
            values = [[r[key] for r in finished if r["depth"] == d] for d in depths]
            means = [statistics.fmean(v) for v in values]
            stds = [statistics.stdev(v) if len(v) >= 2 else 0.0 for v in values]
            ax.errorbar(
                depths,
                means,
                yerr=stds,
                color=color,
                capsize=4,
                marker="o",
                label=f"{network} mean ± sd over seeds".strip(),
            )
    ax.set_xticks(sorted({r["depth"] for r in runs}))
    ax.legend(fontsize="small")
    return fig
