"""resvae-analyze: the residual-network analyses of the literature, on trained or fresh models.

    resvae-analyze lesion CKPT [CKPT ...]        # Veit et al. 2016: delete blocks at test time
    resvae-analyze gradients CKPT [CKPT ...]     # per-block gradient norms of a checkpoint
    resvae-analyze gradients --init "model.arch.shortcut=none model.arch.depth=100" --out DIR
    resvae-analyze activations CKPT              # per-stage feature-map grids of a few images
    resvae-analyze compare SWEEP_DIR --x model.arch.depth --series model.arch.shortcut

CKPT is a checkpoint or a run folder (its best.ckpt, else last.ckpt). Each writes a JSON and
CSV table and a PNG plot into `--out` (default: `<run>/analysis/` of the first checkpoint;
`<SWEEP_DIR>/analysis/` for compare) and, with `--wandb-project`, logs them to W&B. Images come
from the run's data config (the one stored in the checkpoint, else `.hydra/config.yaml`) read
from the data root that resvae/cli/data_root.py picks, as resvae-eval and resvae-sample do:
`--data-root DIR`, else the run's `.hydra/config.yaml` `data.root`, else `$RESVAE_DATA` or
`./data`; one line on stderr says which and why. `--synthetic` uses generated images instead.
Bad input (a missing or unsafe checkpoint, missing data, a bad override) is one error line and
exit code 2.

The lesion study checks its own footing (issue 23): the intact model's loss is compared with
the validation loss the run recorded for the checkpoint; a ratio outside [1/1.5, 1.5] is a loud
warning (BatchNorm running statistics that do not fit the images make deleting blocks look
harmless or even helpful). `--bn-reestimate N` re-estimates the BatchNorm statistics on N
training batches for every network evaluated and reports both losses.

What "block" means: a `ResidualBlock` of the ResNet (shortcut="none": a plain block), or a
`Residual(MLPBlock)` / bare `MLPBlock` of the MLP network, in the order they run (encoder, then
decoder). Deleting a block (lesion) replaces it by its shortcut path, i.e. the merge with a zero
branch (`ResidualBlock.shortcut_path`: x for an identity shortcut, the projection for a
projection, lambda x when scaled, g x when gated), and a plain block by the identity. Blocks
that change the shape (the stride-2 and upsampling blocks, the first block of a stage that
widens) are skipped, as in the paper.

`SweepComparison` is the Hydra callback that experiments (conf/experiment/degradation.yaml,
identity_mappings.yaml) add: when the multirun ends it writes `analysis/<name>.{csv,md,json,png}`
into the sweep folder, the final losses of each job side by side.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import hashlib
import io
import json
import math
import os
import shlex
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from torch import nn

from resvae.nn.blocks import ResidualBlock
from resvae.nn.mlp import MLPBlock
from resvae.nn.residual import Residual
from resvae.run.io import atomic_write, atomic_write_json

PROGRAM = "resvae-analyze"


class AnalysisError(ValueError):
    """Input the analysis cannot use (no blocks to delete, no data, several runs and no --out)."""


# ------------------------------------------------------------------------------------- blocks
@dataclass
class Unit:
    """One block of a network, in the order the blocks run."""

    index: int
    name: str  # its module name, e.g. encoder.layer2.0 or decoder.blocks.3
    module: nn.Module
    part: str  # encoder | decoder
    stage: str  # layer1..layer4 for the ResNet, blocks for the MLP
    kind: str  # residual | plain
    changes_shape: bool

    @property
    def deletable(self) -> bool:
        return not self.changes_shape


def network_units(net: nn.Module) -> list[Unit]:
    """The blocks of `net` (a LatentAutoencoder or MLPAutoencoder) in forward order."""
    units: list[Unit] = []
    inside: set[int] = set()
    for name, module in net.named_modules():
        if id(module) in inside:
            continue
        if isinstance(module, ResidualBlock):
            kind = "plain" if module.shortcut_kind == "none" else "residual"
            changes = module.changes_shape
        elif isinstance(module, Residual):
            kind, changes = "residual", False
        elif isinstance(module, MLPBlock):
            kind, changes = "plain", False
        else:
            continue
        inside.update(id(m) for m in module.modules())
        parts = name.split(".")
        units.append(
            Unit(len(units), name, module, parts[0], parts[1] if len(parts) > 2 else "", kind, changes)
        )
    return units


def network_kind(units: Sequence[Unit]) -> str:
    """plain (no block has a shortcut: shortcut none), residual, or mixed; for titles and legends."""
    kinds = {u.kind for u in units}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "unknown")


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


# ------------------------------------------------------------------------------------- models
@dataclass
class Subject:
    """A model to analyse: a LatentModel, its label, where it came from, and its images."""

    label: str
    model: Any  # resvae.models.LatentModel
    source: str
    run_dir: Path | None
    data_cfg: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None  # None: a fresh init
    epoch: int | None = None  # the checkpoint's epoch (Lightning's `epoch`)
    data: Any = None  # its data module, once set up (load_images)

    @property
    def units(self) -> list[Unit]:
        units = network_units(self.model.net)
        if not units:
            raise AnalysisError(
                f"{self.source}: its network ({getattr(self.model.arch, 'network', '?')}) has no blocks "
                "that resvae-analyze knows (ResidualBlock, Residual, MLPBlock)"
            )
        return units

    def describe(self) -> dict[str, Any]:
        arch = self.model.arch
        return {
            "label": self.label,
            "source": self.source,
            "model": type(self.model).__name__,
            "network": getattr(arch, "network", None),
            "kind": network_kind(network_units(self.model.net)),
            "depth": getattr(arch, "depth", None),
            "shortcut": getattr(arch, "shortcut", getattr(arch, "merge", None)),
            "preact": getattr(arch, "preact", None),
            "width": getattr(arch, "width", None),
            "params": sum(p.numel() for p in self.model.parameters()),
        }


def run_dir_of(ckpt: Path) -> Path:
    """`<run>/checkpoints/x.ckpt` -> `<run>`; any other checkpoint -> its folder."""
    ckpt = ckpt.resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_subject(path: str | Path, device: torch.device) -> Subject:
    from resvae.models.loading import load_model
    from resvae.run.checkpoints import CHECKPOINT_TAG, read_checkpoint

    path = Path(path)
    if path.is_dir():  # a run folder, as resvae-eval and resvae-sample take it
        from resvae.cli.evaluate import find_checkpoint

        path = find_checkpoint(path)
    model = load_model(path, device)
    ckpt = read_checkpoint(path)
    info = ckpt[CHECKPOINT_TAG]
    run_dir = run_dir_of(path)
    # the checkpoint's config is what was trained (resolved then), but it has no data.root:
    # where the images are is resolve_data_root's answer (load_images)
    data_cfg = (info.get("run") or {}).get("config", {}).get("data")
    if data_cfg is None and (run_dir / ".hydra" / "config.yaml").is_file():
        data_cfg = _run_data_config(run_dir / ".hydra" / "config.yaml")
    epoch = ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None
    return Subject(run_dir.name, model, str(path), run_dir, data_cfg, info, path, epoch)


def _run_data_config(path: Path) -> dict[str, Any] | None:
    """The `data` node of a run's composed config (.hydra/config.yaml), interpolations resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import resvae.run.config  # noqa: F401  (registers the resolvers the configs use)

    try:
        cfg = OmegaConf.load(path)
        return OmegaConf.to_container(cfg.data, resolve=True) if "data" in cfg else None
    except OmegaConfBaseException as err:
        raise AnalysisError(
            f"{path}: its data config cannot be read ({' '.join(str(err).split())[:200]}); "
            "pass --data-root DIR (CIFAR-10) or --synthetic"
        ) from err


def init_subject(overrides: str, device: torch.device) -> Subject:
    """A freshly initialised model of the training config with `overrides` (seeded by cfg.seed)."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from resvae.run.config import config_dir

    words = shlex.split(overrides)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=words)
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model, _convert_="all").to(device)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    label = " ".join(words) or "default"
    return Subject(label, model, f"init: {label}", None, data_cfg)


def subject_data(subject: Subject, args: argparse.Namespace) -> Any:
    """The subject's data module, set up (made once per subject): --synthetic, else the run's
    data config reading from the data root that resvae/cli/data_root.py picks (--data-root, the
    run's .hydra/config.yaml, the default), as resvae-eval and resvae-sample do. Prints one line
    on stderr saying which data and why, and a warning when the images are not the run's."""
    from hydra.utils import instantiate

    from resvae.cli.data_root import check_fingerprint, describe, resolve_data_root, with_root
    from resvae.data import CIFAR10DataModule, SyntheticDataModule

    if subject.data is not None:
        return subject.data
    arch = subject.model.arch
    if args.synthetic:
        size = max(args.images, 64)
        dm = SyntheticDataModule(train_size=size, test_size=size, image_size=arch.image_size)
        line = f"{subject.label}: data: generated images (--synthetic)"
    else:
        try:
            composed = (subject.data_cfg or {}).get("root") if subject.checkpoint is None else None
            root = resolve_data_root(args.data_root, subject.checkpoint, composed_root=composed)
        except ValueError as err:
            raise AnalysisError(str(err)) from err
        data = subject.data_cfg
        if data and "_target_" in data:
            if not str(data["_target_"]).startswith("resvae.data."):
                raise AnalysisError(
                    f"{subject.source}: its data config targets {data['_target_']!r}, not one of "
                    "resvae's data modules (resvae.data.*): refusing to import it"
                )
            cfg = with_root(data, root)
            dm, line = instantiate(cfg), f"{subject.label}: {describe(cfg, root)}"
        elif root.source == "option":
            dm = CIFAR10DataModule(root=str(root.path), download=False, val_size=1)
            line = f"{subject.label}: {root.line()} (the run's data config is unknown: CIFAR-10 there)"
        else:
            raise AnalysisError(
                f"{subject.source}: no data config (the checkpoint has no run config and there is no "
                ".hydra/config.yaml beside it); pass --data-root DIR (CIFAR-10) or --synthetic"
            )
    warning = check_fingerprint(dm, subject.info)  # before setup, which drops the arrays it hashes
    dm.setup()
    print(line, file=sys.stderr, flush=True)
    if warning:
        print(f"{subject.label}: {warning}", file=sys.stderr, flush=True)
    subject.data = dm
    return dm


def load_images(subject: Subject, args: argparse.Namespace, split: str, n: int) -> torch.Tensor:
    """The first `n` images of `split` (uint8 [n, C, H, W]) of the subject's data (subject_data)."""
    arch = subject.model.arch
    images = subject_data(subject, args).splits[split][:n]
    if tuple(images.shape[1:]) != (arch.in_channels, arch.image_size, arch.image_size):
        raise AnalysisError(
            f"the data's images are {list(images.shape[1:])} but {subject.label} is built for "
            f"{[arch.in_channels, arch.image_size, arch.image_size]}"
        )
    return images


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draw random numbers from `seed` inside, leaving the global generators as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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


# ------------------------------------------------------------------------------------- lesion
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
        if subject.epoch in curve:
            return curve[subject.epoch], f"metrics.csv val/loss at epoch {subject.epoch}"
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


# ------------------------------------------------------------------------------------- gradients
def gradient_profile(model: Any, images: torch.Tensor, seed: int) -> list[dict[str, Any]]:
    """Per block: the norm of the training objective's gradient with respect to the block's
    parameters (`param_grad_norm`), the norm of those parameters, and the mean per-image norm of
    the gradient with respect to the block's output (`out_grad_norm`), on one batch of `images`.

    The model is in training mode (batch statistics, as an update sees it), but nothing changes:
    buffers (BatchNorm statistics, the AE's code fit) are restored, the global random generators
    are left as they were, and parameters' `.grad` are not touched.
    """
    objective = model.objective
    units = network_units(objective.net)
    if not units:
        raise AnalysisError("the network has no blocks that resvae-analyze knows")
    device = next(objective.parameters()).device
    saved = {name: buf.detach().clone() for name, buf in objective.named_buffers()}
    was = objective.training
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        u.module.register_forward_hook(lambda _m, _i, out, i=u.index: outputs.__setitem__(i, out))
        for u in units
    ]
    try:
        objective.train()
        with seeded(seed, device), torch.enable_grad():
            x = objective.to_input(images.to(device), getattr(model, "channels_last", False))
            loss, _ = objective.objective_and_metrics(x)
            params = [[p for p in u.module.parameters() if p.requires_grad] for u in units]
            flat = [p for group in params for p in group]
            outs = [outputs[u.index] for u in units]
            grads = torch.autograd.grad(loss, flat + outs, allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
        objective.train(was)
        with torch.no_grad():
            for name, buf in objective.named_buffers():
                buf.copy_(saved[name])
    param_grads, out_grads = grads[: len(flat)], grads[len(flat) :]
    rows, at = [], 0
    for unit, group, g_out in zip(units, params, out_grads):
        mine = param_grads[at : at + len(group)]
        at += len(group)
        sq = sum(float(g.double().pow(2).sum()) for g in mine if g is not None)
        rows.append(
            {
                "index": unit.index,
                "name": unit.name,
                "part": unit.part,
                "stage": unit.stage,
                "kind": unit.kind,
                "param_grad_norm": math.sqrt(sq),
                "param_norm": math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in group)),
                "out_grad_norm": float(g_out.flatten(1).double().norm(dim=1).mean())
                if g_out is not None
                else 0.0,
            }
        )
    return rows


# ------------------------------------------------------------------------------------- activations
def staged_encoder(model: Any) -> Any:
    """The model's encoder, if it has named stages (stage_features), else an AnalysisError."""
    encoder = getattr(model.net, "encoder", None)
    if not hasattr(encoder, "stage_features"):
        raise AnalysisError(
            f"activations needs a convolutional encoder with named stages (network=resnet); this "
            f"model's network is {getattr(model.arch, 'network', '?')}"
        )
    return encoder


@torch.no_grad()
def stage_activations(model: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's stage outputs (layer1..layer4) for `images`, in eval mode."""
    encoder = staged_encoder(model)
    objective = model.objective
    was = objective.training
    objective.eval()
    try:
        x = objective.to_input(images.to(model.device))
        return [f.float().cpu() for f in encoder.stage_features(x)]
    finally:
        objective.train(was)


def feature_grid(images: torch.Tensor, features: torch.Tensor, channels: int, scale: int = 1) -> torch.Tensor:
    """[3, H', W'] grid: one row per image, the image first, then its first `channels` feature
    maps, each scaled to [0, 1] on its own and enlarged (nearest) to `scale` times the image's size."""
    from torchvision.utils import make_grid

    n, size = images.shape[0], images.shape[-1] * scale
    maps = features[:, :channels]
    lo = maps.flatten(2).min(-1).values[..., None, None]
    hi = maps.flatten(2).max(-1).values[..., None, None]
    maps = (maps - lo) / (hi - lo).clamp(min=1e-8)
    maps = nn.functional.interpolate(maps, size=(size, size), mode="nearest")
    tiles = []
    for i in range(n):
        image = images[i : i + 1].float().cpu() / 255
        tiles.append(nn.functional.interpolate(image, scale_factor=scale, mode="nearest")[0])
        tiles += [m.expand(3, -1, -1) for m in maps[i].unsqueeze(1)]
    return make_grid(torch.stack(tiles), nrow=1 + maps.shape[1], padding=2, pad_value=1.0)


def activation_stats(features: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    rows = []
    for i, f in enumerate(features):
        rows.append(
            {
                "stage": f"layer{i + 1}",
                "channels": f.shape[1],
                "resolution": f.shape[-1],
                "mean": float(f.mean()),
                "std": float(f.std()),
                "mean_abs": float(f.abs().mean()),
                "fraction_negative": float((f < 0).float().mean()),
                "dead_channels": int((f.flatten(2).abs().amax(dim=(0, 2)) < 1e-6).sum()),
            }
        )
    return rows


# ------------------------------------------------------------------------------------- sweeps
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
        _write_csv(out / f"{name}.csv", rows, fields),
        _write_csv(out / f"{name}_seeds.csv", [_flat(m) for m in means], mean_fields),
        atomic_write_json(
            out / f"{name}.json", {"x": x, "series": series, "runs": rows, "seed_means": means}
        ),
        _write_text(out / f"{name}.md", _seed_markdown(means, keys) + "\n" + _markdown(rows, fields)),
    ]
    fig = compare_figure(means, name, x, series)
    if fig is not None:
        written.append(_save_figure(fig, out / f"{name}.png"))
    return written


def _flat(mean: dict[str, Any]) -> dict[str, Any]:
    return {**mean, "seeds": " ".join(str(s) for s in mean["seeds"])}


def _pm(mean: dict[str, Any], stat: str) -> str:
    if mean[stat] is None:
        return "–"
    sd = mean[f"{stat}_sd"]
    return f"{mean[stat]:.6g} ± {sd:.3g}" if sd is not None else f"{mean[stat]:.6g}"


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
    done = [m for m in means if m.get("train_loss") is not None or m.get("val_loss") is not None]
    if not done:
        return None
    title = f"{name}: final (and minimum) losses" if x else f"{name}: final losses"
    fig, axes = _figure(f"{title}, mean ± sd over seeds", ncols=2)
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


class SweepComparison(Callback):
    """Hydra callback: `compare_sweep` into the sweep folder when the multirun ends (also at
    exit, if a job's exception ends the sweep early), and to W&B when the config has a W&B logger.

    Add it in an experiment:  hydra.callbacks.<name>: {_target_: resvae.cli.analyze.SweepComparison,
    name: <name>, x: <dotted key or null>, series: <dotted key>}
    """

    def __init__(self, name: str = "compare", x: str | None = None, series: str | None = None) -> None:
        self.name, self.x, self.series = name, x, series
        self._pending: Callable[[], None] | None = None

    def _finish(self, config: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = compare_sweep(sweep_dir, self.name, self.x, self.series)
            print(f"{self.name}: {written[-1]}", flush=True)
            logger = (config.get("logger") or {}).get("wandb")
            if logger is not None and os.environ.get("WANDB_MODE", "").lower() != "disabled":
                log_to_wandb(
                    written, project=logger.get("project"), group=config.get("name"),
                    entity=logger.get("entity"), name=f"{self.name}-{config.get('name')}",
                )  # fmt: skip
        except Exception as err:  # an analysis must never hide the sweep's own report and exit code
            print(f"{self.name}: analysis not written ({type(err).__name__}: {err})", flush=True)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._pending = lambda: self._finish(config)
        atexit.register(self._pending)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self._pending is not None:
            atexit.unregister(self._pending)
            self._pending = None
        self._finish(config)


# ------------------------------------------------------------------------------------- writing
def _figure(title: str, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * ncols, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, axes


def _save_figure(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return _write_text(path, buf.getvalue())


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _markdown(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> str:
    lines = ["| " + " | ".join(fields) + " |", "|" + "|".join("---" for _ in fields) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(f)) for f in fields) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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


def plot_lesion(results: Sequence[dict[str, Any]]) -> Any:
    fig, (ax_blocks, ax_k) = _figure(
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


def plot_gradients(results: Sequence[dict[str, Any]]) -> Any:
    fig, (ax_p, ax_o) = _figure(f"Gradient flow, {kinds_title(results)}: per-block gradient norms", ncols=2)
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


GRADIENT_FIELDS = (
    "label",
    "index",
    "name",
    "part",
    "stage",
    "kind",
    "param_grad_norm",
    "param_norm",
    "out_grad_norm",
)


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
        written.append(_write_csv(out / f"{stem}.csv", rows, GRADIENT_FIELDS))
    if "png" in kinds:
        written.append(_save_figure(plot_gradients(results), out / f"{stem}.png"))
    return written


# ------------------------------------------------------------------------------------- commands
def _subjects(args: argparse.Namespace, device: torch.device) -> list[Subject]:
    subjects = [load_subject(p, device) for p in args.checkpoints]
    subjects += [init_subject(o, device) for o in getattr(args, "init", None) or []]
    if not subjects:
        raise AnalysisError("give a checkpoint (CKPT) or --init OVERRIDES")
    if args.label:
        if len(args.label) != len(subjects):
            raise AnalysisError(f"{len(args.label)} --label for {len(subjects)} models: give one per model")
        for s, label in zip(subjects, args.label):
            s.label = label
        return subjects
    seen: dict[str, int] = {}
    for s in subjects:  # distinct labels: the run folder's name, then the checkpoint's
        seen[s.label] = seen.get(s.label, 0) + 1
    for s in subjects:
        if seen[s.label] > 1 and s.source.endswith(".ckpt"):
            s.label = f"{s.label}/{Path(s.source).stem}"
    return subjects


def _out_dir(args: argparse.Namespace, subjects: Sequence[Subject]) -> Path:
    if args.out:
        return Path(args.out)
    if len(subjects) == 1 and subjects[0].run_dir is not None:
        return subjects[0].run_dir / "analysis"
    raise AnalysisError("several models or a fresh init: say where the results go with --out DIR")


LESION_BLOCK_FIELDS = ("label", "network_kind", "index", "name", "part", "stage", "kind", "deletable",
                       "loss", "increase", "loss_bn_reestimated", "increase_bn_reestimated")  # fmt: skip
LESION_K_FIELDS = ("label", "k", "draws", "mean_increase", "std_increase", "min_increase", "max_increase",
                   "mean_increase_bn_reestimated")  # fmt: skip


def cmd_lesion(args: argparse.Namespace, device: torch.device) -> list[Path]:
    subjects = _subjects(args, device)
    out = _out_dir(args, subjects)
    results = []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        bn_images, per_batch = None, int(getattr(s.data, "batch_size", args.batch))
        if args.bn_reestimate:  # N batches of the run's training batch size, as training saw them
            bn_images = load_images(s, args, "train", args.bn_reestimate * per_batch)
        r = lesion_study(
            s, images, args.draws, args.seed, args.batch, args.k_max, bn_images, args.split, per_batch
        )
        results.append(r)
        single = [b["increase"] for b in r["blocks"] if b["increase"] is not None]
        print(
            f"{s.label} ({r['kind']}): baseline {r['baseline_loss']:.2f} nats/image over "
            f"{r['images']} images; "
            f"{r['deletable']} deletable blocks, single deletion +{statistics.fmean(single):.3g} on average "
            f"(max +{max(single):.3g}); all deleted +{r['k'][-1]['mean_increase']:.3g}"
        )
        if bn_images is not None:
            fixed = [b["increase_bn_reestimated"] for b in r["blocks"] if b["increase"] is not None]
            print(
                f"{s.label}: with BatchNorm re-estimated on {len(bn_images)} training images: baseline "
                f"{r['baseline_loss_bn_reestimated']:.2f}; single deletion +{statistics.fmean(fixed):.3g} on "
                f"average (max +{max(fixed):.3g}); all deleted "
                f"+{r['k'][-1]['mean_increase_bn_reestimated']:.3g}"
            )
        if r["intact"]["warning"]:  # loud: the numbers above may be artefacts
            print(f"WARNING: {s.label}: {r['intact']['warning']}", file=sys.stderr, flush=True)
    block_rows = [{"label": r["label"], "network_kind": r["kind"], **b} for r in results for b in r["blocks"]]
    k_rows = [{"label": r["label"], **k} for r in results for k in r["k"]]
    return [
        atomic_write_json(out / "lesion.json", {"seed": args.seed, "models": results}),
        _write_csv(out / "lesion_blocks.csv", block_rows, LESION_BLOCK_FIELDS),
        _write_csv(out / "lesion_k.csv", k_rows, LESION_K_FIELDS),
        _write_csv(out / "lesion_intact.csv", [_intact_row(r) for r in results], LESION_INTACT_FIELDS),
        _save_figure(plot_lesion(results), out / "lesion.png"),
    ]


LESION_INTACT_FIELDS = ("label", "network_kind", "split", "loss", "loss_bn_reestimated",
                        "recorded_val_loss", "recorded_from", "ratio", "ratio_bn_reestimated", "factor",
                        "agrees", "warning")  # fmt: skip


def _intact_row(result: dict[str, Any]) -> dict[str, Any]:
    return {"label": result["label"], "network_kind": result["kind"], **result["intact"]}


def cmd_gradients(args: argparse.Namespace, device: torch.device) -> list[Path]:
    subjects = _subjects(args, device)
    out = _out_dir(args, subjects)
    results = []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        blocks = gradient_profile(s.model, images, args.seed)
        results.append({**s.describe(), "images": len(images), "blocks": blocks})
        g = [b["param_grad_norm"] for b in blocks]
        print(f"{s.label}: parameter gradient norm, first block {g[0]:.3g}, last block {g[-1]:.3g}")
    return write_gradients(results, out)


def cmd_activations(args: argparse.Namespace, device: torch.device) -> list[Path]:
    from torchvision.utils import save_image

    subjects = _subjects(args, device)
    out = _out_dir(args, subjects)
    for s in subjects:  # before reading any data: a model it cannot analyse is the one error line
        staged_encoder(s.model)
    written, stats = [], []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        features = stage_activations(s.model, images)
        prefix = "" if len(subjects) == 1 else f"{_safe(s.label)}_"
        for i, f in enumerate(features):
            grid = feature_grid(images, f, args.channels, args.scale)
            path = out / f"{prefix}activations_layer{i + 1}.png"
            written.append(atomic_write(path, lambda fh, grid=grid: save_image(grid, fh, format="png")))
        stats += [{"label": s.label, **row} for row in activation_stats(features)]
    fields = [
        "label",
        "stage",
        "channels",
        "resolution",
        "mean",
        "std",
        "mean_abs",
        "fraction_negative",
        "dead_channels",
    ]
    written.insert(0, _write_csv(out / "activations.csv", stats, fields))
    written.insert(0, atomic_write_json(out / "activations.json", {"stages": stats}))
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in text)


def cmd_compare(args: argparse.Namespace, device: torch.device) -> list[Path]:
    if not Path(args.sweep_dir).is_dir():
        raise AnalysisError(f"no such sweep folder: {args.sweep_dir}")
    return compare_sweep(args.sweep_dir, args.name, args.x, args.series)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, images: int) -> None:
        p.add_argument(
            "checkpoints", metavar="CKPT", nargs="*", type=Path, help="resvae checkpoint(s) or run folder(s)"
        )
        p.add_argument(
            "--out", type=Path, help="output folder (default: <run>/analysis of the one checkpoint)"
        )
        p.add_argument("--images", type=int, default=images, help=f"images to use (default {images})")
        p.add_argument(
            "--split", choices=("train", "val", "test"), default="test", help="data split (default test)"
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the VAE's noise and the random draws")
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
        src = p.add_mutually_exclusive_group()
        src.add_argument("--data-root", help="use CIFAR-10 from this folder instead of the run's data")
        src.add_argument("--synthetic", action="store_true", help="use generated images")
        p.add_argument("--wandb-project", help="also log the tables and plots to this W&B project")
        p.add_argument("--label", action="append", help="a name per model for plots and tables, in order")

    p = sub.add_parser(
        "lesion", help="delete single blocks and k random blocks at test time (Veit et al. 2016)"
    )
    common(p, 500)
    p.add_argument("--draws", type=int, default=5, help="random draws per k (default 5)")
    p.add_argument("--k-max", type=int, default=None, help="largest k (default: every deletable block)")
    p.add_argument("--batch", type=int, default=250, help="evaluation batch size")
    p.add_argument(
        "--bn-reestimate", type=int, default=None, metavar="N",
        help="also re-estimate the BatchNorm running statistics on N training batches (of the run's "
        "data.batch_size) for each network evaluated, intact and with blocks deleted, and report "
        "both losses (BatchNorm drift vs damage)",
    )  # fmt: skip
    p.set_defaults(run=cmd_lesion)

    p = sub.add_parser("gradients", help="per-block gradient norms of a checkpoint or a fresh init")
    common(p, 64)
    p.add_argument(
        "--init", action="append", metavar="OVERRIDES",
        help='a freshly initialised model of the training config with these overrides, e.g. '
        '--init "model.arch.depth=100 model.arch.shortcut=none" (repeatable)',
    )  # fmt: skip
    p.set_defaults(run=cmd_gradients)

    p = sub.add_parser("activations", help="per-stage feature-map grids of a few images")
    common(p, 4)
    p.add_argument("--channels", type=int, default=8, help="feature maps per stage and image (default 8)")
    p.add_argument("--scale", type=int, default=3, help="enlarge the tiles this many times (default 3)")
    p.set_defaults(run=cmd_activations)

    p = sub.add_parser("compare", help="final losses of a sweep's jobs side by side (table and plot)")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    p.add_argument("--x", help="dotted config key for the x axis, e.g. model.arch.depth")
    p.add_argument(
        "--series", help="dotted config key, one line (or bar) per value, e.g. model.arch.shortcut"
    )
    p.add_argument("--name", default="compare", help="file stem of the outputs (default compare)")
    p.add_argument("--wandb-project", help="also log the table and plot to this W&B project")
    p.set_defaults(run=cmd_compare)
    return parser


def _check(args: argparse.Namespace) -> None:
    for name in ("images", "draws", "batch", "channels", "k_max", "scale", "bn_reestimate"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: Sequence[str] | None = None) -> int:
    from resvae.run.errors import USER_ERRORS, one_line

    args = build_parser().parse_args(argv)
    try:
        _check(args)
        device = torch.device(
            getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AnalysisError(f"--device {device}: CUDA is not available on this machine")
        written = args.run(args, device)
        if args.wandb_project:
            group = Path(args.sweep_dir).name if args.command == "compare" else "analysis"
            log_to_wandb(written, args.wandb_project, group, name=f"{args.command}")
    except (*USER_ERRORS, AnalysisError, HydraException, OSError) as err:
        print(f"{PROGRAM}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
