"""The sweep report's plots (matplotlib, no display needed), written as PNG files.

What goes on x is what the sweep varied (resvae/sweep/varied.py, `x_axis`): depth when the runs'
depths differ, else the first numeric varied parameter (a log axis for one spanning decades, such
as a learning rate), else nothing numeric, and the runs (or the values of a varied categorical
parameter) stand side by side.

- `val_loss_curves.png`: validation loss per epoch of every run, coloured by depth (or by the
  first varied parameter), line style by seed;
- `val_loss_vs_<x>.png`, `test_bpd_vs_<x>.png`, `train_hours_vs_<x>.png`,
  `images_per_second_vs_<x>.png`: minimum validation loss, test bits/dim, training time and
  throughput vs `<x>` (`depth`, `lr`, ...), each run and the mean ± sd over seeds, one line per
  network (or per value of a second varied parameter); `..._by_run.png` (or `..._by_<param>`)
  when nothing numeric varies.

Every axis says its unit. A plot without data is not drawn, and an old file of it (or of another
x) is removed.
"""

from __future__ import annotations

import contextlib
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from resvae.run.io import atomic_write
from resvae.sweep.runs import RunRecord
from resvae.sweep.tables import Row
from resvae.sweep.varied import Axis, Param, file_name, format_param, x_axis

STATS: dict[str, tuple[str, str, str]] = {  # statistic: (file stem's start, title, y label)
    "min_val_loss": ("val_loss", "Minimum validation loss", "minimum validation loss (nats/image)"),
    "test_bpd": ("test_bpd", "Test bits/dim (ELBO)", "test bits/dim (ELBO)"),
    "train_hours": ("train_hours", "Training time", "training time (hours)"),
    "images_per_second": ("images_per_second", "Training throughput", "training throughput (images/s)"),
}
OURS = re.compile(rf"(val_loss_curves|({'|'.join(s for s, _, _ in STATS.values())})_(vs|by)_\w+)\.png")
MAX_SERIES = 8  # a second varied parameter with more values than this is no series of its own


def write_plots(
    runs: Sequence[RunRecord], rows: Sequence[Row], out_dir: Path, params: Sequence[Param] = ()
) -> list[Path]:
    """PNG plots in `out_dir`; a plot without data is not drawn (and an old one is removed, as
    is one of another x)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    axis = x_axis(rows, params)
    drawn = {"val_loss_curves": _curves_figure(runs, rows, params, axis)}
    by = file_name(params[0].short) if params else "run"
    for key, (start, title, label) in STATS.items():
        if any(r["bpd_is_likelihood"] is False for r in rows if r["kind"] == "run") and key == "test_bpd":
            label += " († some not a likelihood)"
        if axis is not None:
            title = f"{title} vs {axis.short}"
            drawn[f"{start}_vs_{axis.name}"] = _vs_figure(rows, key, title, label, axis, params)
        else:
            drawn[f"{start}_by_{by}"] = _strip_figure(rows, key, title, label, params)
    written = []
    for stem, fig in drawn.items():
        path = out_dir / f"{stem}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        atomic_write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
        written.append(path)
    for old in out_dir.glob("*.png"):  # a plot of an earlier report against another x
        if OURS.fullmatch(old.name) and old not in written:
            old.unlink(missing_ok=True)
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


def _colors(values: Iterable[Any]) -> Callable[[Any], Any]:
    """A viridis colour per distinct value (in sorted order when they sort); gray for None."""
    from matplotlib import colormaps

    distinct = list(dict.fromkeys(v for v in values if v is not None))
    with contextlib.suppress(TypeError):  # values of mixed types keep their order
        distinct.sort()
    cmap = colormaps["viridis"]
    return lambda v: cmap(distinct.index(v) / max(len(distinct) - 1, 1)) if v in distinct else "gray"


def _legend(ax: Any, entries: int) -> None:
    if entries > 8:  # beside the axes: many runs would hide the lines
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif entries:
        ax.legend(fontsize="small")


def _run_label(row: Row, varies: dict[str, bool], params: Sequence[Param]) -> str:
    """`depth 28, lr=0.001, seed 1`: what tells a run apart; its name when nothing does."""
    parts = [f"depth {row['depth']}"] if varies["depth"] and row["depth"] is not None else []
    parts += [f"{p.short}={format_param(row.get(p.column))}" for p in params]
    if varies["seed"] and row["seed"] is not None:
        parts.append(f"seed {row['seed']}")
    return ", ".join(parts) if parts else _short(row["run"])


def _short(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else name[: limit - 9] + "…" + name[-8:]


def _curves_figure(runs: Sequence[RunRecord], rows: Sequence[Row], params: Sequence[Param], axis: Any) -> Any:
    by_name = {r["run"]: r for r in rows if r["kind"] == "run"}
    with_curves = [(run, by_name[run.name]) for run in runs if run.val_curve and run.name in by_name]
    if not with_curves:
        return None
    fig, ax = _figure("Validation loss per epoch", "epoch", "validation loss (nats/image)")
    varies = {k: len({row[k] for _, row in with_curves} - {None}) >= 2 for k in ("depth", "seed")}
    colour_key = params[0].column if params else "run"
    if axis is not None and axis.key == "depth":
        colour_key = "depth"
    color = _colors(row.get(colour_key) for _, row in with_curves)
    styles = ["-", "--", ":", "-."]
    order = lambda pair: (pair[1]["depth"] or 0, str(pair[1].get(colour_key)), pair[0].name)  # noqa: E731
    for i, (run, row) in enumerate(sorted(with_curves, key=order)):
        epochs, values = zip(*run.val_curve)
        seed = row["seed"]
        style = styles[(seed if seed is not None else i) % len(styles)]
        ax.plot(
            epochs,
            values,
            style,
            color=color(row.get(colour_key)),
            label=_run_label(row, varies, params),
            marker="." if len(epochs) < 30 else None,
        )
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(ax, len(with_curves))
    return fig


def _series(runs: Sequence[Row], axis: Axis, params: Sequence[Param]) -> tuple[str, str]:
    """(the rows' key of a run's series, the series' name): a second varied parameter with few
    values, else the network (no name)."""
    for p in params:
        if p.column != axis.key and len({r.get(p.column) for r in runs}) <= MAX_SERIES:
            return p.column, p.short
    return "network", ""


def _vs_figure(
    rows: Sequence[Row], key: str, title: str, label: str, axis: Axis, params: Sequence[Param]
) -> Any | None:
    """`key` of each run against `axis`, and per series the mean ± sd over the finished seeds."""
    runs = [r for r in rows if r["kind"] == "run" and r.get(axis.key) is not None and r[key] is not None]
    runs = [r for r in runs if isinstance(r[axis.key], (int, float)) and not isinstance(r[axis.key], bool)]
    if not runs:
        return None
    fig, ax = _figure(title, axis.label, label)
    series_key, short = _series(runs, axis, params)
    series = list(dict.fromkeys(r.get(series_key) for r in runs))
    with contextlib.suppress(TypeError):
        series.sort(key=lambda v: (v is None, v))
    x = lambda r: r[axis.key]  # noqa: E731
    for i, value in enumerate(series):
        mine = [r for r in runs if r.get(series_key) == value]
        name = f"{short}={format_param(value)}" if short else (value or "")
        color = f"C{i}"
        finished = [r for r in mine if r["status"] == "finished"]
        others = [r for r in mine if r["status"] != "finished"]
        ax.scatter([x(r) for r in finished], [r[key] for r in finished], color=color, alpha=0.5, s=18)
        if others:
            ax.scatter(
                [x(r) for r in others],
                [r[key] for r in others],
                color=color,
                marker="x",
                label=f"{name} not finished".strip(),
            )
        xs = sorted({x(r) for r in finished})
        if xs:
            values = [[r[key] for r in finished if x(r) == v] for v in xs]
            seeds = any(len(v) >= 2 for v in values)
            ax.errorbar(
                xs,
                [statistics.fmean(v) for v in values],
                yerr=[statistics.stdev(v) if len(v) >= 2 else 0.0 for v in values],
                color=color,
                capsize=4,
                marker="o",
                label=(f"{name} mean ± sd over seeds" if seeds else name or "finished runs").strip(),
            )
    if axis.log:
        ax.set_xscale("log")
    if axis.ticks:
        ax.set_xticks(sorted({x(r) for r in runs}))
    ax.legend(fontsize="small")
    return fig


def _once(label: str, used: set[str]) -> str | None:
    """`label` the first time, then None (one legend entry per kind)."""
    if label in used:
        return None
    used.add(label)
    return label


def _strip_figure(rows: Sequence[Row], key: str, title: str, label: str, params: Sequence[Param]) -> Any:
    """`key` per run (or per value of the first varied parameter, none numeric) side by side:
    each run a point (`x`: not finished), and the mean ± sd over the finished ones."""
    runs = [r for r in rows if r["kind"] == "run" and r[key] is not None]
    if not runs:
        return None
    first = params[0] if params else None
    group = (lambda r: format_param(r.get(first.column))) if first else (lambda r: r["run"])
    groups = list(dict.fromkeys(group(r) for r in runs))
    xlabel = "run"
    if first:
        xlabel = first.key if first.short == first.key else f"{first.short} ({first.key})"
    fig, ax = _figure(f"{title} by {first.short if first else 'run'}", xlabel, label)
    labelled: set[str] = set()
    for i, name in enumerate(groups):
        mine = [r for r in runs if group(r) == name]
        finished = [r[key] for r in mine if r["status"] == "finished"]
        spread = [0.3 * (j / (len(mine) - 1) - 0.5) for j in range(len(mine))] if len(mine) > 1 else [0.0]
        for dx, r in zip(spread, mine):
            kind = "run" if r["status"] == "finished" else "run not finished"
            style = {"color": "C0", "marker": "o"} if kind == "run" else {"color": "C3", "marker": "x"}
            ax.scatter([i + dx], [r[key]], alpha=0.7, s=24, label=_once(kind, labelled), **style)
        if len(finished) >= 2:
            ax.errorbar(
                [i], [statistics.fmean(finished)], yerr=[statistics.stdev(finished)], color="k", marker="_",
                ms=20, capsize=4, label=_once("mean ± sd over seeds", labelled),
            )  # fmt: skip
    ticks = [name if first else _short(name, 28) for name in groups]
    rotate = len(groups) > 3 or max(len(t) for t in ticks) > 12
    ax.set_xticks(range(len(groups)), ticks, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.legend(fontsize="small")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    return fig
