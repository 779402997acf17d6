"""What resvae-eval and resvae-sample work on: the checkpoints a path names (a .ckpt, a run
folder, a sweep folder), the run's config, the device, and the errors that are the input's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resvae.run.checkpoints import CheckpointError
from resvae.run.errors import USER_ERRORS
from resvae.run.layout import find_checkpoint, is_run_dir, run_dirs_below, run_folder

INPUT_ERRORS: tuple[type[BaseException], ...] = (*USER_ERRORS, OSError)


@dataclass
class Target:
    """One checkpoint to evaluate (or a run folder whose checkpoint is still to be found)."""

    label: str  # how the output names it: the run folder (or the checkpoint) as the user wrote it
    run_dir: Path | None
    checkpoint: Path | None = None

    def resolve_checkpoint(self) -> Path:
        if self.checkpoint is None:
            assert self.run_dir is not None
            self.checkpoint = find_checkpoint(self.run_dir)
        return self.checkpoint


def targets_of(path: Path) -> tuple[list[Target], bool]:
    """(the checkpoints that `path` names, whether it is a sweep folder)."""
    if path.is_file():
        return [Target(str(path), run_folder(path), path)], False
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist: pass a checkpoint file, a run folder or a sweep folder"
        )
    if is_run_dir(path):
        return [Target(str(path), path)], False
    runs = run_dirs_below(path)
    if not runs:
        raise CheckpointError(
            f"{path} is neither a run folder (it has no checkpoints/ folder) nor a sweep folder "
            "(no run folder with checkpoints/ below it)"
        )
    return [Target(str(run), run) for run in runs], True


def run_config(target: Target, config_file: Path | None) -> DictConfig:
    """The run's composed config: --config, else RUN/.hydra/config.yaml, else summary.json's."""
    candidates = [config_file] if config_file else []
    if target.run_dir is not None:
        candidates.append(target.run_dir / ".hydra" / "config.yaml")
    for path in candidates:
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as err:
                raise ValueError(f"cannot read the run config {path}: {' '.join(str(err).split())}") from err
            if not isinstance(cfg, DictConfig):
                raise ValueError(f"the run config {path} is not a mapping")
            return cfg
        if path == config_file:
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ValueError(f"--config {path} {what}: pass the run's config file, RUN/.hydra/config.yaml")
    if target.run_dir is not None and (target.run_dir / "summary.json").is_file():
        try:
            summary = json.loads((target.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
            return OmegaConf.create(summary["config"])
    where = target.run_dir or (target.checkpoint.parent if target.checkpoint else Path("."))
    raise ValueError(
        f"no run config for {target.label}: {where}/.hydra/config.yaml is missing (and so is "
        "summary.json's config); pass --config FILE, the .hydra/config.yaml of the run that "
        "wrote the checkpoint"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def deterministic_kernels() -> None:
    """cuDNN picks the same convolution algorithms in every process (no benchmark autotuning)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def open_targets(path: Path, device: str, one_run: bool = False) -> tuple[torch.device, list[Target], bool]:
    """(the device, the checkpoints `path` names, whether it is a sweep folder) for a tool; with
    `one_run`, a sweep folder is refused."""
    targets, sweep = targets_of(path)
    if sweep and one_run:
        raise ValueError(f"{path} is a sweep folder: pass one run folder or checkpoint")
    return pick_device(device), targets, sweep
