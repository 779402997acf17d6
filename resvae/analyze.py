"""resvae-analyze: the residual-network analyses of the literature, on trained or fresh models.

    resvae-analyze lesion CKPT [CKPT ...]        # Veit et al. 2016: delete blocks at test time
    resvae-analyze gradients CKPT [CKPT ...]     # per-block gradient norms of a checkpoint
    resvae-analyze gradients --init "model.arch.shortcut=none model.arch.depth=100" --out DIR
    resvae-analyze activations CKPT              # per-stage feature-map grids of a few images
    resvae-analyze compare SWEEP_DIR --x model.arch.depth --series model.arch.shortcut

Each writes a JSON and CSV table and a PNG plot into `--out` (default: `<run>/analysis/` of the
first checkpoint; `<SWEEP_DIR>/analysis/` for compare) and, with `--wandb-project`, logs them to
W&B. Images come from the data the run was trained on (the config stored in the checkpoint), or
from `--data-root DIR` (CIFAR-10 there) or `--synthetic`. Bad input (a missing or unsafe
checkpoint, missing data, a bad override) is one error line and exit code 2.

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
import io
import math
import os
import shlex
import statistics
import sys
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

from resvae.io import atomic_write, atomic_write_json
from resvae.nn.blocks import ResidualBlock
from resvae.nn.mlp import MLPBlock
from resvae.nn.residual import Residual

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
    from resvae.checkpointing import CHECKPOINT_TAG, read_checkpoint
    from resvae.models.loading import load_model

    path = Path(path)
    model = load_model(path, device)
    info = read_checkpoint(path)[CHECKPOINT_TAG]
    run_dir = run_dir_of(path)
    data_cfg = (info.get("run") or {}).get("config", {}).get("data")
    if data_cfg is None and (run_dir / ".hydra" / "config.yaml").is_file():
        data_cfg = _run_data_config(run_dir / ".hydra" / "config.yaml")
    return Subject(run_dir.name, model, str(path), run_dir, data_cfg, info)


def _run_data_config(path: Path) -> dict[str, Any] | None:
    """The `data` node of a run's composed config (.hydra/config.yaml), interpolations resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    import resvae.config  # noqa: F401  (registers the resolvers the configs use)

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

    from resvae.config import config_dir

    words = shlex.split(overrides)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=words)
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model, _convert_="all").to(device)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    label = " ".join(words) or "default"
    return Subject(label, model, f"init: {label}", None, data_cfg)


def load_images(subject: Subject, args: argparse.Namespace, split: str, n: int) -> torch.Tensor:
    """The first `n` images of `split` (uint8 [n, C, H, W]) of the subject's data, or of
    --data-root / --synthetic."""
    from hydra.utils import instantiate

    from resvae.data import CIFAR10DataModule, SyntheticDataModule

    arch = subject.model.arch
    if args.synthetic:
        dm = SyntheticDataModule(train_size=max(n, 64), test_size=max(n, 64), image_size=arch.image_size)
    elif args.data_root:
        dm = CIFAR10DataModule(root=args.data_root, download=False, val_size=1)
    elif subject.data_cfg and "_target_" in subject.data_cfg:
        cfg = {k: v for k, v in subject.data_cfg.items() if k != "download"}
        if "CIFAR10" in str(cfg["_target_"]):
            cfg["download"] = False
        dm = instantiate(cfg)
    else:
        raise AnalysisError(
            f"{subject.source}: no data config (the checkpoint has no run config and there is no "
            ".hydra/config.yaml beside it); pass --data-root DIR (CIFAR-10) or --synthetic"
        )
    dm.setup()
    images = dm.splits[split][:n]
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
def lesion_study(
    subject: Subject, images: torch.Tensor, draws: int, seed: int, batch: int, k_max: int | None = None
) -> dict[str, Any]:
    """Test loss with each deletable block deleted, and with k random blocks deleted (k = 1..n,
    `draws` seeded draws per k)."""
    units = subject.units
    model = subject.model
    base = mean_loss(model, images, seed, batch)
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
        }
        if unit.deletable:
            with deleted([unit]):
                row["loss"] = mean_loss(model, images, seed, batch)
            row["increase"] = row["loss"] - base
        blocks.append(row)
    candidates = [u for u in units if u.deletable]
    rng = np.random.default_rng(seed)
    by_k = []
    for k in range(1, min(len(candidates), k_max or len(candidates)) + 1):
        increases = []
        for _ in range(1 if k == len(candidates) else draws):
            chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=k, replace=False))]
            with deleted(chosen):
                increases.append(mean_loss(model, images, seed, batch) - base)
        by_k.append(
            {
                "k": k,
                "draws": len(increases),
                "mean_increase": statistics.fmean(increases),
                "std_increase": statistics.stdev(increases) if len(increases) > 1 else 0.0,
                "min_increase": min(increases),
                "max_increase": max(increases),
                "increases": increases,
            }
        )
    return {
        **subject.describe(),
        "images": len(images),
        "baseline_loss": base,
        "blocks": blocks,
        "deletable": len(candidates),
        "skipped": [u.name for u in units if not u.deletable],
        "k": by_k,
    }


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
@torch.no_grad()
def stage_activations(model: Any, images: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's stage outputs (layer1..layer4) for `images`, in eval mode."""
    encoder = getattr(model.net, "encoder", None)
    if not hasattr(encoder, "stage_features"):
        raise AnalysisError(
            f"activations needs a convolutional encoder with named stages (network=resnet); this "
            f"model's network is {getattr(model.arch, 'network', '?')}"
        )
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
    "status",
    "epochs",
    "params",
    "train_loss",
    "val_loss",
    "min_train_loss",
    "min_val_loss",
    "test_bpd",
)


def _dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def compare_rows(sweep_dir: Path, keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per job folder of `sweep_dir`: the values of `keys` (dotted config keys, read from
    summary.json's config) and the final and minimum losses."""
    from resvae.report import collect_runs

    rows = []
    for run in collect_runs(sweep_dir):
        s = run.summary
        row = {k: _dotted(s.get("config") or {}, k) for k in keys}
        row.update({c: s.get(c) for c in SWEEP_COLUMNS})
        row["run"], row["status"] = run.name, run.status
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple:
        return tuple((row[k] is None, str(type(row[k])), row[k] if row[k] is not None else 0) for k in keys)

    return sorted(rows, key=order)


def compare_sweep(
    sweep_dir: str | Path, name: str = "compare", x: str | None = None, series: str | None = None
) -> list[Path]:
    """Write `analysis/<name>.{csv,json,md,png}` into `sweep_dir`: each job's final training and
    validation loss (and minima), plotted against `x` with one line per `series` value, or as
    bars per `series` value when there is no `x`."""
    sweep_dir = Path(sweep_dir)
    keys = [k for k in (series, x) if k]
    rows = compare_rows(sweep_dir, keys)
    if not rows:
        raise AnalysisError(f"no job folders (with summary.json or .hydra/) in {sweep_dir}")
    out = sweep_dir / "analysis"
    fields = [*keys, *SWEEP_COLUMNS]
    written = [
        _write_csv(out / f"{name}.csv", rows, fields),
        atomic_write_json(out / f"{name}.json", {"x": x, "series": series, "runs": rows}),
        _write_text(out / f"{name}.md", _markdown(rows, fields)),
    ]
    fig = _compare_figure(rows, name, x, series)
    if fig is not None:
        written.append(_save_figure(fig, out / f"{name}.png"))
    return written


def _compare_figure(rows: Sequence[dict[str, Any]], name: str, x: str | None, series: str | None) -> Any:
    done = [r for r in rows if r.get("train_loss") is not None or r.get("val_loss") is not None]
    if not done:
        return None
    fig, axes = _figure(f"{name}: final (and minimum) losses" if x else f"{name}: final losses", ncols=2)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault(str(r.get(series)) if series else "runs", []).append(r)
    for ax, key, title in zip(
        axes, ("train_loss", "val_loss"), ("final training loss", "final validation loss")
    ):
        ax.set(title=title, ylabel="loss (nats/image)")
        if x:
            for i, (label, members) in enumerate(groups.items()):
                pts = sorted(
                    (r[x], r[key]) for r in members if r.get(x) is not None and r.get(key) is not None
                )
                name = f"{series}={label}" if series else label
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"{name}, final")
                mins = sorted(
                    (r[x], r[f"min_{key}"])
                    for r in members
                    if r.get(x) is not None and r.get(f"min_{key}") is not None
                )
                if mins:
                    xs, ys = zip(*mins)
                    ax.plot(xs, ys, ":", marker=".", color=f"C{i}", alpha=0.7, label=f"{name}, minimum")
            ax.set_xlabel(x)
            ax.set_xticks(sorted({r[x] for r in done if isinstance(r.get(x), (int, float))}))
        else:
            labels = [str(r.get(series)) if series else r["run"] for r in done]
            values = [r.get(key) if r.get(key) is not None else float("nan") for r in done]
            ax.bar(range(len(done)), values, color=[f"C{i % 10}" for i in range(len(done))])
            ax.set_xticks(range(len(done)), labels, rotation=30, ha="right")
            finite = [v for v in values if math.isfinite(v)]
            if finite:  # the differences matter, not the distance from zero
                lo, hi = min(finite), max(finite)
                pad = 0.1 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-3
                ax.set_ylim(lo - 3 * pad, hi + pad)
        if x:
            ax.legend(fontsize="small")
    return fig


class SweepComparison(Callback):
    """Hydra callback: `compare_sweep` into the sweep folder when the multirun ends (also at
    exit, if a job's exception ends the sweep early), and to W&B when the config has a W&B logger.

    Add it in an experiment:  hydra.callbacks.<name>: {_target_: resvae.analyze.SweepComparison,
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

    from resvae.config import wandb_offline

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


def _plot_lesion(results: Sequence[dict[str, Any]]) -> Any:
    fig, (ax_blocks, ax_k) = _figure("Lesion study: test loss increase when blocks are deleted", ncols=2)
    for i, r in enumerate(results):
        pts = [(b["index"], b["increase"]) for b in r["blocks"] if b["increase"] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax_blocks.plot(xs, ys, "o-", color=f"C{i}", ms=4, label=r["label"])
        if r["k"]:
            ks = [row["k"] for row in r["k"]]
            ax_k.plot(
                ks, [row["mean_increase"] for row in r["k"]], "o-", color=f"C{i}", ms=4, label=r["label"]
            )
            lo, hi = [row["min_increase"] for row in r["k"]], [row["max_increase"] for row in r["k"]]
            ax_k.fill_between(ks, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
    ax_blocks.set(xlabel="block index (encoder, then decoder)", ylabel="test loss increase (nats/image)")
    ax_blocks.set_title("one block deleted (shape-changing blocks skipped)", fontsize="medium")
    ax_k.set(xlabel="blocks deleted (k, random draws)", ylabel="test loss increase (nats/image)")
    ax_k.set_title("k random blocks deleted: mean over draws, band: min to max", fontsize="medium")
    for ax in (ax_blocks, ax_k):
        _symlog_if_wide(ax, [v for r in results for v in _lesion_values(r)])
        ax.legend(fontsize="small")
    return fig


def _lesion_values(r: dict[str, Any]) -> list[float]:
    return [b["increase"] for b in r["blocks"] if b["increase"] is not None] + [
        row["mean_increase"] for row in r["k"]
    ]


def _symlog_if_wide(ax: Any, values: Sequence[float]) -> None:
    """A symmetric log scale when values span several orders of magnitude (plain vs residual)."""
    mags = [abs(v) for v in values if v and math.isfinite(v)]
    if mags and max(mags) / max(min(mags), 1e-12) > 1e3:
        ax.set_yscale("symlog", linthresh=max(min(mags), max(mags) * 1e-6))


def _plot_gradients(results: Sequence[dict[str, Any]]) -> Any:
    fig, (ax_p, ax_o) = _figure("Gradient flow: per-block gradient norms", ncols=2)
    for i, r in enumerate(results):
        idx = [row["index"] for row in r["blocks"]]
        ax_p.plot(
            idx, [row["param_grad_norm"] for row in r["blocks"]], "o-", ms=3, color=f"C{i}", label=r["label"]
        )
        ax_o.plot(
            idx, [row["out_grad_norm"] for row in r["blocks"]], "o-", ms=3, color=f"C{i}", label=r["label"]
        )
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
        written.append(_save_figure(_plot_gradients(results), out / f"{stem}.png"))
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


LESION_BLOCK_FIELDS = ("label", "index", "name", "part", "stage", "kind", "deletable", "loss", "increase")
LESION_K_FIELDS = ("label", "k", "draws", "mean_increase", "std_increase", "min_increase", "max_increase")


def cmd_lesion(args: argparse.Namespace, device: torch.device) -> list[Path]:
    subjects = _subjects(args, device)
    out = _out_dir(args, subjects)
    results = []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        results.append(lesion_study(s, images, args.draws, args.seed, args.batch, args.k_max))
        r = results[-1]
        single = [b["increase"] for b in r["blocks"] if b["increase"] is not None]
        print(
            f"{s.label}: baseline {r['baseline_loss']:.2f} nats/image over {r['images']} images; "
            f"{r['deletable']} deletable blocks, single deletion +{statistics.fmean(single):.3g} on average "
            f"(max +{max(single):.3g}); all deleted +{r['k'][-1]['mean_increase']:.3g}"
        )
    block_rows = [{"label": r["label"], **b} for r in results for b in r["blocks"]]
    k_rows = [{"label": r["label"], **k} for r in results for k in r["k"]]
    return [
        atomic_write_json(out / "lesion.json", {"seed": args.seed, "models": results}),
        _write_csv(out / "lesion_blocks.csv", block_rows, LESION_BLOCK_FIELDS),
        _write_csv(out / "lesion_k.csv", k_rows, LESION_K_FIELDS),
        _save_figure(_plot_lesion(results), out / "lesion.png"),
    ]


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
        p.add_argument("checkpoints", metavar="CKPT", nargs="*", type=Path, help="resvae checkpoint(s)")
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
    for name in ("images", "draws", "batch", "channels", "k_max", "scale"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: Sequence[str] | None = None) -> int:
    from resvae.errors import USER_ERRORS, one_line

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
