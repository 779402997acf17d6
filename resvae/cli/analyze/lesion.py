"""The lesion study (Veit et al. 2016): delete blocks at test time and measure the loss.

Deleting a block (resvae/models/gradients.py says what a block is) replaces it by its shortcut
path, i.e. the merge with a zero branch (`ResidualBlock.shortcut_path`: x for an identity
shortcut, the projection for a projection, lambda x when scaled, g x when gated), and a plain
block by the identity. Blocks that change the shape (the stride-2 and upsampling blocks, the
first block of a stage that widens) are skipped, as in the paper. Every study checks its own
footing (footing.py: the intact loss against the run's recorded one, BatchNorm re-estimation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resvae.cli.analyze.common import AnalysisError, Subject
from resvae.cli.analyze.footing import intact_check, kept_batch_norm_state, reestimate_batch_norm
from resvae.cli.analyze.output import figure, kinds_title, network_legend, save_figure, write_csv
from resvae.models.gradients import Unit, seeded
from resvae.nn.blocks import ResidualBlock
from resvae.nn.residual import Residual
from resvae.run.io import atomic_write_json

LESION_BLOCK_FIELDS = ("label", "network_kind", "index", "name", "part", "stage", "kind", "deletable",
                       "loss", "increase", "loss_bn_reestimated", "increase_bn_reestimated")  # fmt: skip
LESION_K_FIELDS = ("label", "k", "draws", "mean_increase", "std_increase", "min_increase", "max_increase",
                   "mean_increase_bn_reestimated")  # fmt: skip
LESION_INTACT_FIELDS = ("label", "network_kind", "split", "loss", "loss_bn_reestimated",
                        "recorded_val_loss", "recorded_from", "ratio", "ratio_bn_reestimated", "factor",
                        "agrees", "warning")  # fmt: skip


def _deleted_forward(unit: Unit) -> Callable[[torch.Tensor], torch.Tensor]:
    m = unit.module
    if isinstance(m, ResidualBlock):
        return m.shortcut_path
    if isinstance(m, Residual) and m.merge == "gated":
        gate = m.gate

        def gated_carry(x: torch.Tensor) -> torch.Tensor:
            logit = gate(x) if gate is not None else m.gate_logit
            return torch.sigmoid(logit) * x

        return gated_carry
    return lambda x: x  # a sum Residual's shortcut, or a plain MLP block replaced by identity


@contextmanager
def deleted(units: Sequence[Unit]) -> Iterator[None]:
    """Replace each unit by its shortcut path (a plain one by the identity) while inside."""
    for unit in units:
        if unit.changes_shape:
            raise AnalysisError(f"block {unit.name} changes the shape: it cannot be deleted")
    try:
        for unit in units:
            unit.module.forward = _deleted_forward(unit)  # type: ignore[method-assign]
        yield
    finally:
        for unit in units:
            unit.module.__dict__.pop("forward", None)


@torch.no_grad()
def mean_loss(model: Any, images: torch.Tensor, seed: int, batch: int) -> float:
    """The model's per-image loss (negative ELBO or reconstruction NLL, nats) over `images`, in
    eval mode, with the same noise for every call (the VAE's sample is seeded)."""
    objective = model.objective
    was = objective.training
    objective.eval()
    total, device = 0.0, model.device
    try:
        with seeded(seed, device):
            for start in range(0, len(images), batch):
                x = objective.to_input(images[start : start + batch].to(device))
                total += float(objective(x).loss.double().sum())
    finally:
        objective.train(was)
    return total / len(images)


def lesion_study(
    subject: Subject,
    images: torch.Tensor,
    draws: int,
    seed: int,
    batch: int,
    k_max: int | None = None,
    bn_images: torch.Tensor | None = None,
    split: str = "test",
    bn_batch: int | None = None,
) -> dict[str, Any]:
    """Test loss with each deletable block deleted, and with k random blocks deleted (k = 1..n,
    `draws` seeded draws per k). With `bn_images` (training images), each loss is also computed
    with the BatchNorm statistics re-estimated on them for the network as it is (intact, or with
    the blocks deleted), in batches of `bn_batch` (default `batch`): `*_bn_reestimated` beside
    each loss and increase, so that damage can be told from BatchNorm drift. `intact` compares
    the intact loss with the run's validation loss (intact_check)."""
    units = subject.units
    model = subject.model

    def losses(chosen: Sequence[Unit]) -> tuple[float, float | None]:
        with deleted(chosen):
            raw = mean_loss(model, images, seed, batch)
            if bn_images is None:
                return raw, None
            with kept_batch_norm_state(model.objective):
                reestimate_batch_norm(model, bn_images, seed, bn_batch or batch)
                return raw, mean_loss(model, images, seed, batch)

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    base, base_bn = losses([])
    if not math.isfinite(base):
        raise AnalysisError(
            f"the intact model's {split} loss is {base}: its weights or outputs are not finite (a diverged "
            "run?), so deleting blocks cannot be measured; analyse a checkpoint of a finite epoch"
        )
    blocks = []
    for unit in units:
        row: dict[str, Any] = {
            "index": unit.index,
            "name": unit.name,
            "part": unit.part,
            "stage": unit.stage,
            "kind": unit.kind,
            "deletable": unit.deletable,
            "loss": None,
            "increase": None,
            "loss_bn_reestimated": None,
            "increase_bn_reestimated": None,
        }
        if unit.deletable:
            row["loss"], row["loss_bn_reestimated"] = losses([unit])
            row["increase"] = row["loss"] - base
            row["increase_bn_reestimated"] = minus(row["loss_bn_reestimated"], base_bn)
        blocks.append(row)
    candidates = [u for u in units if u.deletable]
    rng = np.random.default_rng(seed)
    by_k = []
    for k in range(1, min(len(candidates), k_max or len(candidates)) + 1):
        increases: list[float] = []
        increases_bn: list[float | None] = []
        for _ in range(1 if k == len(candidates) else draws):
            chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
            raw, fixed = losses(chosen)
            increases.append(raw - base)
            increases_bn.append(minus(fixed, base_bn))
        by_k.append(
            {
                "k": k,
                "draws": len(increases),
                "mean_increase": statistics.fmean(increases),
                "std_increase": statistics.stdev(increases) if len(increases) > 1 else 0.0,
                "min_increase": min(increases),
                "max_increase": max(increases),
                "increases": increases,
                "mean_increase_bn_reestimated": _mean_or_none(increases_bn),
                "increases_bn_reestimated": increases_bn if bn_images is not None else None,
            }
        )
    return {
        **subject.describe(),
        "images": len(images),
        "baseline_loss": base,
        "baseline_loss_bn_reestimated": base_bn,
        "bn_reestimate_images": None if bn_images is None else len(bn_images),
        "intact": intact_check(subject, base, base_bn, split),
        "blocks": blocks,
        "deletable": len(candidates),
        "skipped": [u.name for u in units if not u.deletable],
        "k": by_k,
    }


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def write_lesion(results: Sequence[dict[str, Any]], out: Path, seed: int) -> list[Path]:
    """lesion.json (everything), lesion_blocks.csv, lesion_k.csv, lesion_intact.csv and lesion.png."""
    block_rows = [{"label": r["label"], "network_kind": r["kind"], **b} for r in results for b in r["blocks"]]
    k_rows = [{"label": r["label"], **k} for r in results for k in r["k"]]
    intact_rows = [{"label": r["label"], "network_kind": r["kind"], **r["intact"]} for r in results]
    return [
        atomic_write_json(out / "lesion.json", {"seed": seed, "models": list(results)}),
        write_csv(out / "lesion_blocks.csv", block_rows, LESION_BLOCK_FIELDS),
        write_csv(out / "lesion_k.csv", k_rows, LESION_K_FIELDS),
        write_csv(out / "lesion_intact.csv", intact_rows, LESION_INTACT_FIELDS),
        save_figure(plot_lesion(results), out / "lesion.png"),
    ]


def plot_lesion(results: Sequence[dict[str, Any]]) -> Any:
    """Loss increase per single deleted block, and per number k of random blocks deleted."""
    fig, (ax_blocks, ax_k) = figure(
        f"Lesion study, {kinds_title(results)}: test loss increase when blocks are deleted", ncols=2
    )
    for i, r in enumerate(results):
        name = network_legend(r)
        if r["intact"].get("warning"):
            name += f" [! intact loss {r['intact']['ratio']:.3g}x the recorded val loss]"
        pts = [(b["index"], b["increase"]) for b in r["blocks"] if b["increase"] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax_blocks.plot(xs, ys, "o-", color=f"C{i}", ms=4, label=name)
        fixed = [(b["index"], b["increase_bn_reestimated"]) for b in r["blocks"]]
        fixed = [(x, y) for x, y in fixed if y is not None]
        if fixed:
            xs, ys = zip(*fixed)
            ax_blocks.plot(xs, ys, "s--", color=f"C{i}", ms=3, alpha=0.8, label=f"{name}, BN re-estimated")
        if r["k"]:
            ks = [row["k"] for row in r["k"]]
            ax_k.plot(ks, [row["mean_increase"] for row in r["k"]], "o-", color=f"C{i}", ms=4, label=name)
            lo, hi = [row["min_increase"] for row in r["k"]], [row["max_increase"] for row in r["k"]]
            ax_k.fill_between(ks, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
            if r["k"][0].get("mean_increase_bn_reestimated") is not None:
                means = [row["mean_increase_bn_reestimated"] for row in r["k"]]
                ax_k.plot(ks, means, "s--", color=f"C{i}", ms=3, alpha=0.8, label=f"{name}, BN re-estimated")
    ax_blocks.set(xlabel="block index (encoder, then decoder)", ylabel="test loss increase (nats/image)")
    ax_blocks.set_title("one block deleted (shape-changing blocks skipped)", fontsize="medium")
    ax_k.set(xlabel="blocks deleted (k, random draws)", ylabel="test loss increase (nats/image)")
    ax_k.set_title("k random blocks deleted: mean over draws, band: min to max", fontsize="medium")
    for ax in (ax_blocks, ax_k):
        _symlog_if_wide(ax, [v for r in results for v in _lesion_values(r)])
        ax.legend(fontsize="small")
    return fig


def _lesion_values(r: dict[str, Any]) -> list[float]:
    blocks = [b[key] for b in r["blocks"] for key in ("increase", "increase_bn_reestimated")]
    ks = [row[key] for row in r["k"] for key in ("mean_increase", "mean_increase_bn_reestimated")]
    return [v for v in blocks + ks if v is not None]


def _symlog_if_wide(ax: Any, values: Sequence[float]) -> None:
    """A symmetric log scale when values span several orders of magnitude (plain vs residual)."""
    mags = [abs(v) for v in values if v and math.isfinite(v)]
    if mags and max(mags) / max(min(mags), 1e-12) > 1e3:
        ax.set_yscale("symlog", linthresh=max(min(mags), max(mags) * 1e-6))
