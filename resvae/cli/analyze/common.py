"""What resvae-analyze analyses: subjects (a checkpoint, a run folder or a fresh init, with its
label and data config), their images, and where the results go.

CKPT is a checkpoint or a run folder (its best.ckpt, else last.ckpt). Images come from the run's
data config (the one stored in the checkpoint, else `.hydra/config.yaml`) read from the data
root that resvae/cli/data_root.py picks, as resvae-eval and resvae-sample do: `--data-root DIR`,
else the run's `.hydra/config.yaml` `data.root`, else `$RESVAE_DATA` or `./data`; one line on
stderr says which and why. `--synthetic` uses generated images instead.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resvae.models.gradients import Unit, network_kind, network_units
from resvae.run.layout import run_folder


class AnalysisError(ValueError):
    """Input the analysis cannot use (no blocks to delete, no data, several runs and no --out)."""


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
    return run_folder(ckpt.resolve()) or ckpt.resolve().parent


def load_subject(path: str | Path, device: torch.device) -> Subject:
    """A checkpoint, or a run folder's (its best.ckpt, else last.ckpt), as a subject."""
    from resvae.models.loading import load_model
    from resvae.run.checkpoints import CHECKPOINT_TAG, read_checkpoint

    path = Path(path)
    if path.is_dir():  # a run folder, as resvae-eval and resvae-sample take it
        from resvae.run.layout import find_checkpoint

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


def subjects_and_out(args: argparse.Namespace, device: torch.device) -> tuple[list[Subject], Path]:
    """The subjects of the command line (CKPTs, then --init), distinctly labelled, and the folder
    their results go to (--out, else the one run's analysis/)."""
    subjects = _subjects(args, device)
    if args.out:
        return subjects, Path(args.out)
    if len(subjects) == 1 and subjects[0].run_dir is not None:
        return subjects, subjects[0].run_dir / "analysis"
    raise AnalysisError("several models or a fresh init: say where the results go with --out DIR")


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
