"""Sweep comparison: the final losses of a sweep's jobs side by side, and their mean ± sd over
the runs that differ only in their seeds, as CSV, JSON, Markdown and a plot
(`resvae-analyze compare`, and the SweepComparison Hydra callback in resvae/sweep/comparison.py)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resvae.cli.analyze.common import AnalysisError
from resvae.cli.analyze.output import figure, save_figure, write_csv, write_text
from resvae.run.io import atomic_write_json

SWEEP_COLUMNS = (
    "run",
    "seed",
    "status",
    "epochs",
    "params",
    "train_loss",
    "val_loss",
    "min_train_loss",
    "min_val_loss",
    "test_bpd",
)
# the numbers averaged over the seeds of a configuration
SEED_STATS = ("train_loss", "val_loss", "min_train_loss", "min_val_loss", "test_bpd")


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _without_seeds(node: Any) -> Any:
    """The config without any `seed` key: the run's seed and those it sets (data.seed: ${seed})."""
    if isinstance(node, dict):
        return {k: _without_seeds(v) for k, v in node.items() if k != "seed"}
    if isinstance(node, list):
        return [_without_seeds(v) for v in node]
    return node


def seed_group(summary: dict[str, Any], run: str) -> str:
    """Equal for two runs whose configs differ only in their seeds; a run without a config is
    a group of its own."""
    config = summary.get("config")
    if not isinstance(config, dict):
        return f"run:{run}"
    text = json.dumps(_without_seeds(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def compare_rows(sweep_dir: Path, keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per job folder of `sweep_dir`: the values of `keys` (dotted config keys, read from
    summary.json's config), its seed, the final and minimum losses, and `group`: the same for
    the runs that differ only in their seeds (seed_group)."""
    from resvae.sweep.report import collect_runs

    rows = []
    for run in collect_runs(sweep_dir):
        s = run.summary
        row = {k: _dotted(s.get("config") or {}, k) for k in keys}
        row.update({c: s.get(c) for c in SWEEP_COLUMNS})
        row["run"], row["status"], row["group"] = run.name, run.status, seed_group(s, run.name)
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple:
        return (
            *((row[k] is None, str(type(row[k])), row[k] if row[k] is not None else 0) for k in keys),
            row["group"],
            (row["seed"] is None, row["seed"] if isinstance(row["seed"], (int, float)) else 0),
            row["run"],
        )

    return sorted(rows, key=order)


def seed_means(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per configuration (the runs of a `group`, which differ only in their seeds): its
    `keys`, `n` runs and their seeds, and per statistic the mean, its sample sd (`<stat>_sd`,
    None for one value) and the number of runs that have it (`<stat>_n`)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for group, members in groups.items():
        first = members[0]
        mean: dict[str, Any] = {k: first.get(k) for k in keys}
        mean.update(
            group=group,
            n=len(members),
            seeds=[m.get("seed") for m in members],
            runs=[m["run"] for m in members],
            statuses=sorted({str(m["status"]) for m in members}),
        )
        for stat in SEED_STATS:
            values = [float(m[stat]) for m in members if _finite(m.get(stat))]
            mean[stat] = statistics.fmean(values) if values else None
            mean[f"{stat}_sd"] = statistics.stdev(values) if len(values) > 1 else None
            mean[f"{stat}_n"] = len(values)
        out.append(mean)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare_sweep(
    sweep_dir: str | Path, name: str = "compare", x: str | None = None, series: str | None = None
) -> list[Path]:
    """Write `analysis/<name>.{csv,json,md,png}` and `<name>_seeds.csv` into `sweep_dir`: each
    job's final training and validation loss (and minima), and their mean ± sd over the runs
    that differ only in their seeds (n shown), plotted against `x` with one line per `series`
    value, or as bars per configuration when there is no `x`."""
    sweep_dir = Path(sweep_dir)
    keys = [k for k in (series, x) if k]
    rows = compare_rows(sweep_dir, keys)
    if not rows:
        raise AnalysisError(f"no job folders (with summary.json or .hydra/) in {sweep_dir}")
    means = seed_means(rows, keys)
    out = sweep_dir / "analysis"
    fields = [*keys, *SWEEP_COLUMNS]
    mean_fields = [*keys, "n", "seeds", *(f"{s}{e}" for s in SEED_STATS for e in ("", "_sd", "_n"))]
    written = [
        write_csv(out / f"{name}.csv", rows, fields),
        write_csv(out / f"{name}_seeds.csv", [_flat(m) for m in means], mean_fields),
        atomic_write_json(
            out / f"{name}.json", {"x": x, "series": series, "runs": rows, "seed_means": means}
        ),
        write_text(out / f"{name}.md", _seed_markdown(means, keys) + "\n" + _markdown(rows, fields)),
    ]
    fig = compare_figure(means, name, x, series)
    if fig is not None:
        written.append(save_figure(fig, out / f"{name}.png"))
    return written


def _flat(mean: dict[str, Any]) -> dict[str, Any]:
    return {**mean, "seeds": " ".join(str(s) for s in mean["seeds"])}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pm(mean: dict[str, Any], stat: str) -> str:
    if mean[stat] is None:
        return "–"
    sd = mean[f"{stat}_sd"]
    return f"{mean[stat]:.6g} ± {sd:.3g}" if sd is not None else f"{mean[stat]:.6g}"


def _markdown(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    lines = ["| " + " | ".join(fields) + " |", "|" + "|".join("---" for _ in fields) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(f)) for f in fields) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _seed_markdown(means: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """The table of configurations: mean ± sd over seeds, n runs."""
    head = [*keys, "n", "seeds", *SEED_STATS]
    lines = [
        "Mean ± sd over the runs that differ only in their seeds (n: how many; one run: no sd).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for m in means:
        cells = [_cell(m.get(k)) for k in keys] + [str(m["n"]), " ".join(_cell(s) for s in m["seeds"])]
        lines.append("| " + " | ".join(cells + [_pm(m, stat) for stat in SEED_STATS]) + " |")
    return "\n".join(lines) + "\n"


def _n_label(members: Sequence[dict[str, Any]]) -> str:
    ns = sorted({m["n"] for m in members})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def compare_figure(means: Sequence[dict[str, Any]], name: str, x: str | None, series: str | None) -> Any:
    """Final training and validation losses, mean ± sd over seeds: lines against `x` (one per
    `series` value, minima dotted), or bars per configuration without `x`; None when no job
    has a loss."""
    done = [m for m in means if m.get("train_loss") is not None or m.get("val_loss") is not None]
    if not done:
        return None
    title = f"{name}: final (and minimum) losses" if x else f"{name}: final losses"
    fig, axes = figure(f"{title}, mean ± sd over seeds", ncols=2)
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in done:
        groups.setdefault(str(m.get(series)) if series else "runs", []).append(m)
    for ax, key, label in zip(
        axes, ("train_loss", "val_loss"), ("final training loss", "final validation loss")
    ):
        ax.set(title=label, ylabel="loss (nats/image)")
        if x:
            for i, (value, members) in enumerate(groups.items()):
                legend = f"{series}={value}" if series else value
                for stat, style, extra in ((key, "-", "final"), (f"min_{key}", ":", "minimum")):
                    pts = sorted(
                        (m[x], m[stat], m[f"{stat}_sd"] or 0.0)
                        for m in members
                        if m.get(x) is not None and m.get(stat) is not None
                    )
                    if pts:
                        xs, ys, sds = zip(*pts)
                        ax.errorbar(
                            xs, ys, yerr=sds, fmt=f"{style}o" if extra == "final" else f"{style}.",
                            color=f"C{i}", capsize=3, alpha=1.0 if extra == "final" else 0.7,
                            label=f"{legend}, {extra} ({_n_label(members)})",
                        )  # fmt: skip
            ax.set_xlabel(x)
            ax.set_xticks(sorted({m[x] for m in done if isinstance(m.get(x), (int, float))}))
        else:
            labels = [f"{m.get(series) if series else m['runs'][0]} (n={m['n']})" for m in done]
            values = [m.get(key) if m.get(key) is not None else float("nan") for m in done]
            sds = [m.get(f"{key}_sd") or 0.0 for m in done]
            colours = [f"C{i % 10}" for i in range(len(done))]
            ax.bar(range(len(done)), values, yerr=sds, capsize=3, color=colours)
            ax.set_xticks(range(len(done)), labels, rotation=30, ha="right")
            finite = [v for v in values if math.isfinite(v)]
            if finite:  # the differences matter, not the distance from zero
                lo = min(v - sd for v, sd in zip(values, sds) if math.isfinite(v))
                hi = max(v + sd for v, sd in zip(values, sds) if math.isfinite(v))
                pad = 0.1 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-3
                ax.set_ylim(lo - 3 * pad, hi + pad)
        if x:
            ax.legend(fontsize="small")
    return fig
