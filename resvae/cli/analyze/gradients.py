"""Gradient-flow tables and plots: per-block gradient norms (resvae/models/gradients.py measures
them) of several models or epochs, as JSON, CSV and a plot of norm against block index. Written
by `resvae-analyze gradients` and the gradient-flow training callback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resvae.cli.analyze.output import figure, kinds_title, network_legend, save_figure, write_csv
from resvae.models.gradients import GRADIENT_FIELDS
from resvae.run.io import atomic_write_json


def plot_gradients(results: Sequence[dict[str, Any]]) -> Any:
    """Parameter and block-output gradient norms against block index, one line per result."""
    fig, (ax_p, ax_o) = figure(f"Gradient flow, {kinds_title(results)}: per-block gradient norms", ncols=2)
    for i, r in enumerate(results):
        idx, name = [row["index"] for row in r["blocks"]], network_legend(r)
        ax_p.plot(idx, [row["param_grad_norm"] for row in r["blocks"]], "o-", ms=3, color=f"C{i}", label=name)
        ax_o.plot(idx, [row["out_grad_norm"] for row in r["blocks"]], "o-", ms=3, color=f"C{i}", label=name)
    ax_p.set(xlabel="block index (input -> output: encoder, then decoder)", ylabel="||dL/d parameters||")
    ax_o.set(
        xlabel="block index (input -> output: encoder, then decoder)",
        ylabel="||dL/d block output|| per image",
    )
    for ax in (ax_p, ax_o):
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    return fig


def write_gradients(
    results: Sequence[dict[str, Any]],
    out: Path,
    stem: str = "gradients",
    kinds: Sequence[str] = ("json", "csv", "png"),
) -> list[Path]:
    """`stem`.json (everything), .csv (one row per model and block) and .png (norms vs block index)."""
    written = []
    if "json" in kinds:
        written.append(atomic_write_json(out / f"{stem}.json", {"models": list(results)}))
    if "csv" in kinds:
        rows = [{"label": r["label"], **row} for r in results for row in r["blocks"]]
        written.append(write_csv(out / f"{stem}.csv", rows, GRADIENT_FIELDS))
    if "png" in kinds:
        written.append(save_figure(plot_gradients(results), out / f"{stem}.png"))
    return written
