"""Sweep report: one table, three plots and one static HTML page for a folder of runs.

Usage::

    resvae-report outputs/depth_sweep/multirun
    resvae-report outputs/depth_sweep/multirun --wandb-project resvae --wandb-group depth_sweep
    python -m resvae.sweep.report outputs/depth_sweep/multirun

A sweep folder holds one folder per job (one with a `summary.json` or a `.hydra/` folder).
`write_report(sweep_dir)` writes into the sweep folder:

- `report.md` and `report.csv`: the study's "Table 1" (depth, layers, parameters, epochs,
  training hours, minimum training and validation loss, test bits/dim, images/s, status), one
  row per job, sorted by depth then seed, plus a mean ± sample-std row per depth wherever two or
  more finished runs of that depth differ in seed;
- `report/*.png`: validation loss per epoch for every run, minimum validation loss vs depth,
  training hours vs depth;
- `report.html`: one static page (no server, no network, relative links, so the sweep folder
  can be moved) with the table, the plots, each run's latest sample and reconstruction grid,
  and the failed and broken runs with their errors.

A job whose summary.json is missing or unreadable is "broken"; it is listed with the reason
and the report covers the rest. `log_report_to_wandb` logs the table and the plots to W&B.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from resvae.run.io import atomic_write

PLOTS_DIR = "report"
FAILED = ("failed", "interrupted", "broken")
NOT_LIKELIHOOD = "† not a likelihood: these runs' loss is not a normalized likelihood of the 8-bit images \
(bpd_is_likelihood is false, e.g. the study's Bernoulli cross-entropy), so their bits/dim only compares \
with each other."

Row = dict[str, Any]


# ---------------------------------------------------------------------------------- reading
@dataclass
class RunRecord:
    """What one job folder holds. `broken` is why its summary.json could not be read."""

    folder: Path
    summary: dict[str, Any] = field(default_factory=dict)
    broken: str | None = None
    eval: dict[str, Any] | None = None
    val_curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, val/loss)
    train_curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, train/loss)
    sample_png: Path | None = None
    recon_png: Path | None = None
    notes: list[str] = field(default_factory=list)  # problems that do not break the run

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def status(self) -> str:
        return "broken" if self.broken else str(self.summary.get("status") or "unknown")

    @property
    def error(self) -> str | None:
        return self.broken or (self.summary.get("error") if self.status in FAILED else None)


def collect_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """One record per job folder directly below `sweep_dir`, in folder-name order."""
    folders = sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and _is_job(p))
    return [read_run(folder) for folder in folders]


def _is_job(folder: Path) -> bool:
    return (folder / "summary.json").is_file() or (folder / ".hydra").is_dir()


def read_run(folder: Path) -> RunRecord:
    run = RunRecord(folder)
    summary, run.broken = _read_json(folder / "summary.json")
    run.summary = summary or {}
    if (folder / "eval.json").exists():
        run.eval, problem = _read_json(folder / "eval.json")
        if problem:
            run.notes.append(problem)
    try:
        curves = read_curves(folder / "metrics.csv", ("val/loss", "train/loss"))
        run.val_curve, run.train_curve = curves["val/loss"], curves["train/loss"]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        run.notes.append(f"metrics.csv: {e}")
    run.sample_png = latest_png(folder / "samples")
    run.recon_png = latest_png(folder / "recon")
    return run


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, None), or (None, why it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name}: missing (the job never started or was killed before writing it)"
    except json.JSONDecodeError as e:
        return None, f"{path.name}: {e.msg}: line {e.lineno} column {e.colno}"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path.name}: {e}"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, None


def read_curves(path: Path, names: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """Per metric, (epoch, value) pairs from a wide metrics.csv; empty cells are skipped, and
    an epoch logged twice keeps its last value. A missing file gives empty curves."""
    by_epoch: dict[str, dict[float, float]] = {name: {} for name in names}
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = _number(row.get("epoch"))
                for name in names:
                    value = _number(row.get(name))
                    if epoch is not None and value is not None:
                        by_epoch[name][epoch] = value
    return {name: sorted(points.items()) for name, points in by_epoch.items()}


def latest_png(folder: Path) -> Path | None:
    """The grid with the highest epoch number, `epoch_NNN.png`, in `folder`."""
    found = [
        (int(m[1]), p) for p in folder.glob("epoch_*.png") if (m := re.fullmatch(r"epoch_(\d+)\.png", p.name))
    ]
    return max(found)[1] if found else None


def _number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; None for anything else (bools too)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


# ---------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str = ""  # format spec of a number; "" for text, "M" for millions
    stat: bool = True  # averaged in the aggregate rows


COLUMNS = (
    Column("run", "run", stat=False),
    Column("depth", "depth", "d", stat=False),
    Column("seed", "seed", "d", stat=False),
    Column("layers", "layers", "d"),
    Column("params", "parameters", "M"),
    Column("epochs", "epochs", "d"),
    Column("train_hours", "training hours", ".3f"),
    Column("min_train_loss", "min train loss", ".5g"),
    Column("min_val_loss", "min val loss", ".5g"),
    Column("test_bpd", "test bits/dim (ELBO)", ".3f"),
    Column("test_bpd_iw", "test bits/dim (IW)", ".3f"),
    Column("active_units", "active units", "d"),
    Column("images_per_second", "images/s", ".0f"),
    Column("status", "status", stat=False),
)
STATS = [c.key for c in COLUMNS if c.stat]
BPD_COLUMNS = ("test_bpd", "test_bpd_iw")
CSV_FIELDS = [
    "kind",
    "run",
    "network",
    "depth",
    "seed",
    "n_seeds",
    *[k for key in STATS for k in (key, f"{key}_std")],
    "bpd_is_likelihood",
    "status",
    "error",
]


def run_row(run: RunRecord) -> Row:
    """A run's table row: numbers as floats/ints or None, eval.json preferred for bits/dim."""
    s = run.summary
    # eval.json may hold another split (resvae-eval --split val|train): only test numbers go in test columns
    ev = run.eval if run.eval and run.eval.get("split", "test") == "test" else {}
    curve_min = lambda curve: min((v for _, v in curve), default=None)  # noqa: E731
    seconds = _number(s.get("train_seconds"))
    likelihood = s.get("bpd_is_likelihood")
    return {
        "kind": "run",
        "run": run.name,
        "network": s.get("network") if isinstance(s.get("network"), str) else None,
        "width": _integer(s.get("width")),
        "depth": _integer(s.get("depth")),
        "seed": _integer(s.get("seed")),
        "n_seeds": None,
        "layers": _integer(s.get("layers")),
        "params": _integer(s.get("params")),
        "epochs": _integer(s.get("epochs")),
        "train_hours": seconds / 3600 if seconds is not None else None,
        "min_train_loss": _first(_number(s.get("min_train_loss")), curve_min(run.train_curve)),
        "min_val_loss": _first(
            _number(s.get("min_val_loss")), curve_min(run.val_curve), _number(s.get("best_val_loss"))
        ),
        "test_bpd": _first(_number(ev.get("bpd")), _number(s.get("test_bpd"))),
        "test_bpd_iw": _first(_number(ev.get("bpd_iw")), _number(s.get("test_bpd_iw"))),
        "active_units": _integer(ev.get("active_units")),
        "images_per_second": _number(s.get("images_per_second")),
        "bpd_is_likelihood": likelihood if isinstance(likelihood, bool) else None,
        "status": run.status,
        "error": run.error,
    }


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def table_rows(runs: Iterable[RunRecord]) -> list[Row]:
    """Run rows sorted by depth then seed (broken and depth-less runs last); after the runs of
    one depth (and network and width), a "mean" row over its finished runs when two or more of
    them differ in seed: each statistic's mean, its sample std as `<key>_std`, and `n_seeds`."""
    rows = sorted((run_row(r) for r in runs), key=_sort_key)
    out: list[Row] = []
    for i, row in enumerate(rows):
        out.append(row)
        last_of_group = i + 1 == len(rows) or _group(rows[i + 1]) != _group(row)
        if last_of_group and row["depth"] is not None:
            members = [r for r in rows if _group(r) == _group(row) and r["status"] == "finished"]
            if len({r["seed"] for r in members}) >= 2:
                out.append(aggregate_row(members))
    return out


def _sort_key(row: Row) -> tuple:
    absent = lambda v: (v is None, v if v is not None else 0)  # noqa: E731
    return (
        row["status"] == "broken",
        *absent(row["depth"]),
        _group(row)[1:],
        *absent(row["seed"]),
        row["run"],
    )


def _group(row: Row) -> tuple:
    return (row["depth"], row["network"] or "", row["width"] or 0)


def aggregate_row(members: Sequence[Row]) -> Row:
    first = members[0]
    label = f"depth {first['depth']}" + (f" {first['network']}" if first["network"] else "")
    row: Row = {
        "kind": "mean",
        "run": f"{label}: mean ± sd over {len(members)} seeds",
        "network": first["network"],
        "width": first["width"],
        "depth": first["depth"],
        "seed": None,
        "n_seeds": len(members),
        "bpd_is_likelihood": _all_likelihood(m["bpd_is_likelihood"] for m in members),
        "status": "",
        "error": None,
    }
    for key in STATS:
        values = [m[key] for m in members if m[key] is not None]
        row[key] = statistics.fmean(values) if values else None
        row[f"{key}_std"] = statistics.stdev(values) if len(values) >= 2 else None
        row[f"{key}_n"] = len(values)
    return row


def _all_likelihood(flags: Iterable[bool | None]) -> bool | None:
    """False when any run's bits/dim is no likelihood, True when all are, else unknown."""
    flags = list(flags)
    return False if False in flags else (True if flags and all(flags) else None)


def format_cell(row: Row, column: Column) -> str:
    """A cell as text: "mean ± sd" in aggregate rows, a dagger on bits/dim that is no likelihood."""
    value = row.get(column.key)
    if column.key == "seed" and row["kind"] == "mean":
        return f"n={row['n_seeds']}"
    if value is None:
        return "–"
    if not column.fmt:
        return str(value)
    text = _format_number(value, column.fmt)
    std = row.get(f"{column.key}_std")
    if std:  # a constant column (layers, parameters) shows no "± 0"
        text += f" ± {_format_number(std, column.fmt)}"
    if row["kind"] == "mean" and column.stat and row[f"{column.key}_n"] < row["n_seeds"]:
        text += f" (n={row[f'{column.key}_n']})"
    if column.key in BPD_COLUMNS and row.get("bpd_is_likelihood") is False:
        text += "†"
    return text


def _format_number(value: float, fmt: str) -> str:
    if fmt == "M":
        return f"{value / 1e6:.2f}M"
    if fmt == "d":
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
    return format(value, fmt)


def markdown_table(rows: Sequence[Row]) -> str:
    """The table as GitHub Markdown, aggregate rows in bold, with the likelihood footnote."""
    esc = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [
        "| " + " | ".join(c.header for c in COLUMNS) + " |",
        "|" + "|".join("---" if not c.fmt else "--:" for c in COLUMNS) + "|",
    ]
    for row in rows:
        cells = [esc(format_cell(row, c)) for c in COLUMNS]
        if row["kind"] == "mean":
            cells = [f"**{cell}**" if cell else "" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["bpd_is_likelihood"] is False for r in rows):
        lines += ["", NOT_LIKELIHOOD]
    return "\n".join(lines)


def csv_text(rows: Sequence[Row]) -> str:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def problems(runs: Iterable[RunRecord]) -> list[tuple[RunRecord, str]]:
    """(run, what went wrong) for failed, interrupted and broken runs, and unreadable side files."""
    found = []
    for run in runs:
        if run.status in FAILED:
            found.append((run, f"{run.status}: {run.error or 'no error recorded'}"))
        found += [(run, note) for note in run.notes]
    return found


def markdown_report(
    sweep_dir: Path, runs: Sequence[RunRecord], rows: Sequence[Row], plots: Sequence[Path]
) -> str:
    lines = [f"# Sweep report: {sweep_name(sweep_dir)}", "", _counts(runs), "", markdown_table(rows), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({_link(p, sweep_dir)})" for p in plots] + [""]
    found = problems(runs)
    if found:
        lines += ["## Failed and broken runs", ""]
        lines += [f"- `{run.name}`: {what.replace(chr(10), ' ')}" for run, what in found] + [""]
    return "\n".join(lines)


def sweep_name(sweep_dir: Path) -> str:
    """The sweep's name: its folder's, or for Hydra's `<name>/multirun` the parent's."""
    resolved = sweep_dir.resolve()
    return resolved.parent.name if resolved.name == "multirun" else resolved.name


def _counts(runs: Sequence[RunRecord]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return f"{len(runs)} run(s): " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


# ---------------------------------------------------------------------------------- plots
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
    depth = lambda r: _integer(r.summary.get("depth"))  # noqa: E731
    color = _depth_colors(depth(r) for r in with_curves)
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(sorted(with_curves, key=lambda r: (depth(r) or 0, r.name))):
        seed = _integer(run.summary.get("seed"))
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


# ---------------------------------------------------------------------------------- HTML
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.status { text-align: left; }
tr.mean { font-weight: bold; background: #f2f2f2; }
tr.failed, tr.broken, tr.interrupted { background: #fde8e8; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.grids img { width: 320px; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.5em; }
.note { font-size: 0.9em; color: #555; }
"""


def html_report(
    sweep_dir: Path, runs: Sequence[RunRecord], rows: Sequence[Row], plots: Sequence[Path]
) -> str:
    e = html.escape
    anchors = {run.name: f"run-{i}" for i, run in enumerate(runs)}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>Sweep report: {e(sweep_name(sweep_dir))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Sweep report: {e(sweep_name(sweep_dir))}</h1>",
        f"<p>{e(_counts(runs))}</p>",
        '<table class="runs"><thead><tr>' + "".join(f"<th>{e(c.header)}</th>" for c in COLUMNS),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        cells = []
        for c in COLUMNS:
            text = e(format_cell(row, c))
            if c.key == "run" and row["kind"] == "run":
                text = f'<a href="#{anchors[row["run"]]}">{text}</a>'
            cells.append(f'<td class="{c.key}">{text}</td>')
        parts.append(f'<tr class="{e(row["kind"])} {e(row["status"])}">' + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    if any(r["bpd_is_likelihood"] is False for r in rows):
        parts.append(f'<p class="note">{e(NOT_LIKELIHOOD)}</p>')
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<figure><img src="{e(_link(p, sweep_dir))}" alt="{e(p.stem)}"></figure>' for p in plots]
    found = problems(runs)
    if found:
        parts.append("<h2>Failed and broken runs</h2><ul>")
        parts += [f"<li><b>{e(run.name)}</b><pre>{e(what)}</pre></li>" for run, what in found]
        parts.append("</ul>")
    parts.append("<h2>Runs</h2>")
    by_name = {run.name: run for run in runs}
    for row in rows:  # in the table's order
        if row["kind"] == "run":
            parts.append(_html_run(by_name[row["run"]], anchors[row["run"]], sweep_dir))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_run(run: RunRecord, anchor: str, sweep_dir: Path) -> str:
    e = html.escape
    facts = [f"status: {run.status}"]
    facts += [
        f"{key}: {run.summary[key]}"
        for key in ("run", "network", "depth", "seed", "epochs")
        if key in run.summary
    ]
    grids = []
    for label, png in (("samples", run.sample_png), ("reconstructions", run.recon_png)):
        if png is not None:
            caption = f"{label}, {png.stem.replace('_', ' ')}"
            grids.append(
                f'<figure><img src="{e(_link(png, sweep_dir))}" alt="{e(caption)}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    body = (
        '<div class="grids">' + "".join(grids) + "</div>" if grids else '<p class="note">no image grids</p>'
    )
    error = f"<pre>{e(run.error)}</pre>" if run.error else ""
    return f'<section id="{anchor}"><h3>{e(run.name)}</h3><p>{e("; ".join(facts))}</p>{error}{body}</section>'


def _link(path: Path, base: Path) -> str:
    """A relative URL from `base` to `path` (names with '=' or ',' are percent-encoded)."""
    return quote(path.relative_to(base).as_posix())


# ---------------------------------------------------------------------------------- writing
def write_report(sweep_dir: str | Path) -> Path:
    """Write report.md, report.csv, report.html and report/*.png into `sweep_dir`; returns the
    HTML page's path. Each file is replaced atomically (written next to it, then renamed)."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    rows = table_rows(runs)
    plots = write_plots(runs, rows, sweep_dir / PLOTS_DIR)
    _write_text(sweep_dir / "report.md", markdown_report(sweep_dir, runs, rows, plots))
    _write_text(sweep_dir / "report.csv", csv_text(rows))
    return _write_text(sweep_dir / "report.html", html_report(sweep_dir, runs, rows, plots))


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def log_report_to_wandb(sweep_dir: str | Path, project: str, group: str, entity: str | None = None) -> None:
    """Log the table (a wandb.Table) and the plots (wandb.Image) as one W&B run of `group` with
    job_type "report". WANDB_MODE decides the mode when set (offline, disabled, online);
    otherwise the run is online only when a W&B API key is configured."""
    import os

    import wandb

    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    rows = table_rows(runs)
    plots = write_plots(runs, rows, sweep_dir / PLOTS_DIR)
    mode = None
    if not os.environ.get("WANDB_MODE"):
        from resvae.run.config import wandb_offline

        mode = "offline" if wandb_offline() else "online"
    wandb.init(
        project=project, group=group, entity=entity, job_type="report", name=f"report-{group}", mode=mode,
        dir=str(sweep_dir),  # the W&B run's files stay with the sweep (offline: synced from there)
    )  # fmt: skip
    table = wandb.Table(columns=CSV_FIELDS, data=[[row.get(k) for k in CSV_FIELDS] for row in rows])
    wandb.log({"report/table": table, **{f"report/{p.stem}": wandb.Image(str(p)) for p in plots}})
    wandb.finish()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="resvae-report",
        description="Write report.md, report.csv, report.html and report/*.png for a sweep folder.",
    )
    parser.add_argument(
        "sweep_dir", metavar="SWEEP_DIR", type=Path, help="folder with one sub-folder per job"
    )
    parser.add_argument("--wandb-project", help="also log the table and plots to this W&B project")
    parser.add_argument("--wandb-group", help="W&B group (default: the sweep's name)")
    parser.add_argument("--wandb-entity", help="W&B entity (default: yours)")
    args = parser.parse_args(argv)
    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.is_dir():
        print(f"resvae-report: error: no such sweep folder: {sweep_dir}", file=sys.stderr)
        return 2
    runs = collect_runs(sweep_dir)
    if not runs:
        hint = f" (did you mean {sweep_dir / 'multirun'}?)" if (sweep_dir / "multirun").is_dir() else ""
        print(
            f"resvae-report: error: no job folders (with summary.json or .hydra/) in {sweep_dir}{hint}",
            file=sys.stderr,
        )
        return 2
    page = write_report(sweep_dir)
    print(markdown_table(table_rows(runs)))
    print(f"\nreport: {page}")
    if args.wandb_project:
        group = args.wandb_group or sweep_name(sweep_dir)
        log_report_to_wandb(sweep_dir, args.wandb_project, group, args.wandb_entity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
