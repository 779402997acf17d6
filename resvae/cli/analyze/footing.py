"""The lesion study's footing (issue 23): is the intact model's loss what the run recorded, and
the BatchNorm running statistics that decide it.

The intact model's loss is compared with the validation loss the run recorded for the
checkpoint; a ratio outside [1/1.5, 1.5] is a loud warning (BatchNorm running statistics that do
not fit the images make deleting blocks look harmless or even helpful). `--bn-reestimate N`
re-estimates the BatchNorm statistics on N training batches for every network evaluated
(`reestimate_batch_norm`, undone by `kept_batch_norm_state`) and reports both losses.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from resvae.cli.analyze.common import Subject
from resvae.models.gradients import seeded

# BatchNorm layers whose running statistics eval mode uses (and --bn-reestimate re-estimates)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# The intact model's loss against the run's recorded validation loss: outside [1/F, F] x, the
# lesion numbers are suspect. 1.5: a test/validation gap of a trained model is a few percent;
# BatchNorm statistics that do not fit the images (issue 23: plain networks) give 10x.
AGREEMENT_FACTOR = 1.5


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]


@contextmanager
def kept_batch_norm_state(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics and momentum on the way out."""
    saved = [
        (m, m.momentum, {k: v.detach().clone() for k, v in m.named_buffers(recurse=False)})
        for m in batch_norms(module)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, momentum, buffers in saved:
                m.momentum = momentum
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)


@torch.no_grad()
def reestimate_batch_norm(model: Any, images: torch.Tensor, seed: int, batch: int) -> int:
    """Replace the BatchNorm running statistics by their averages over `images` (training
    images, in batches of `batch`), as some lesion studies do after deleting blocks: the
    statistics are reset, momentum=None makes them a cumulative average over the batches, and
    only the BatchNorm layers are in training mode (nothing else changes: no dropout, no
    updates of other buffers). Returns the number of BatchNorm layers re-estimated."""
    objective = model.objective
    norms = batch_norms(objective)
    was = objective.training
    objective.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with seeded(seed, model.device):
            for start in range(0, len(images), batch):
                objective(objective.to_input(images[start : start + batch].to(model.device)))
    finally:
        objective.train(was)
    return len(norms)


def recorded_val_loss(subject: Subject) -> tuple[float, str] | None:
    """The validation loss the run recorded for the checkpoint's weights, and where it was read:
    metrics.csv's val/loss at the checkpoint's epoch, else summary.json's best_val_loss (for
    best.ckpt) or val_loss (the last epoch's, for any other checkpoint). None without a run."""
    from resvae.sweep.report import read_curves

    run = subject.run_dir
    if run is None or subject.checkpoint is None:
        return None
    if subject.epoch is not None and (run / "metrics.csv").is_file():
        try:
            curve = dict(read_curves(run / "metrics.csv", ("val/loss",))["val/loss"])
        except (OSError, csv.Error, UnicodeDecodeError):
            curve = {}
        number = subject.epoch + 1  # metrics.csv counts epochs from 1, checkpoints (Lightning) from 0
        if number in curve:
            return curve[number], f"metrics.csv val/loss at epoch {number}"
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    key = "best_val_loss" if subject.checkpoint.name == "best.ckpt" else "val_loss"
    value = summary.get(key) if isinstance(summary, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), f"summary.json {key}"
    return None


def intact_check(
    subject: Subject, loss: float, loss_bn: float | None, split: str, factor: float = AGREEMENT_FACTOR
) -> dict[str, Any]:
    """The intact model's loss against the run's recorded validation loss (recorded_val_loss):
    `agrees` is False, and `warning` says why it matters, when their ratio is outside
    [1/factor, factor]; `agrees` is None when there is nothing to compare with."""
    check: dict[str, Any] = {
        "split": split, "loss": loss, "loss_bn_reestimated": loss_bn, "factor": factor,
        "recorded_val_loss": None, "recorded_from": None, "ratio": None, "ratio_bn_reestimated": None,
        "agrees": None, "warning": None,
    }  # fmt: skip
    recorded = recorded_val_loss(subject)
    if recorded is None:
        check["recorded_from"] = "no recorded validation loss (no run folder, or none in it)"
        return check
    value, source = recorded
    check.update(recorded_val_loss=value, recorded_from=source)
    if value <= 0 or loss <= 0:  # a ratio of losses of different signs says nothing
        check["recorded_from"] = f"{source} (not compared: a loss is not positive)"
        return check
    ratio = loss / value
    check["ratio"] = ratio
    if loss_bn is not None and loss_bn > 0:
        check["ratio_bn_reestimated"] = loss_bn / value
    check["agrees"] = 1 / factor <= ratio <= factor
    bn_ratio = check["ratio_bn_reestimated"]
    if check["agrees"] and bn_ratio is not None and not 1 / factor <= bn_ratio <= factor:
        check["warning"] = (
            f"with BatchNorm re-estimated the intact model's {split} loss is {loss_bn:.4g}, "
            f"{bn_ratio:.3g}x the run's recorded validation loss {value:.4g} ({source}): the re-estimate "
            "does not fit (too few batches? raise --bn-reestimate), so the re-estimated losses mean little"
        )
    if not check["agrees"]:
        check["warning"] = (
            f"the intact model's {split} loss {loss:.4g} is {ratio:.3g}x the run's recorded validation "
            f"loss {value:.4g} ({source}), outside [{1 / factor:.2f}, {factor:g}]x: its BatchNorm running "
            "statistics probably do not fit these images (plain networks are prone to it), so the losses "
            "with blocks deleted show that drift as much as damage"
            + (
                f"; with BatchNorm re-estimated the intact loss is {loss_bn:.4g} ({loss_bn / value:.3g}x)"
                if loss_bn is not None
                else "; rerun with --bn-reestimate N"
            )
        )
    return check
