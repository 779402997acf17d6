"""What every benchmark row shares: the config, the model, the device, the clock, the FLOP count."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from resvae.models.base import LatentModel
from resvae.run.config import auto_precision, config_dir
from resvae.run.numerics import set_float32_precision

EPOCH_IMAGES, VAL_IMAGES = 50_000, 10_000  # CIFAR-10: a training epoch, the test set


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_model(cfg: DictConfig, device: torch.device) -> LatentModel:
    model = instantiate(cfg.model, _convert_="all").to(device)
    if model.channels_last:
        model.net.to(memory_format=torch.channels_last)
    return model.train()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (this syncs): called at window boundaries only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Return the previous row's memory (graph pools included) before the next row measures its peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@dataclass(frozen=True)
class Numerics:
    """How float32 maths runs: the trainer precision and whether TF32 is allowed."""

    precision: str  # "32-true" or "bf16-mixed" (what Lightning's trainer.precision says)
    tf32: bool  # TF32 tensor cores for float32 matmuls and convolutions

    @property
    def math(self) -> str:
        """Which peak MFU is measured against: bf16, tf32 or fp32."""
        if self.precision.startswith("bf16"):
            return "bf16"
        return "tf32" if self.tf32 else "fp32"


def resolve_numerics(cfg: DictConfig, requested: str, device: torch.device) -> Numerics:
    """The precision every row of `cfg` runs with, applied to this process as resvae-train applies
    it (resvae.run.numerics: matmul_precision=highest is IEEE float32 for convolutions too)."""
    precision = str(cfg.trainer.precision) if requested == "config" else requested
    if precision in ("auto", "None") or "auto_precision" in precision:
        precision = auto_precision()
    if device.type != "cuda":
        precision = "32-true"
    effective = set_float32_precision(str(cfg.matmul_precision), cfg.get("conv_precision"))
    # MFU's peak: the convolutions are most of the FLOPs, so their precision decides it
    return Numerics(precision, effective["conv"] == "tf32" and device.type == "cuda")


def train_gflop_per_image(model: LatentModel, device: torch.device) -> float:
    """Forward + backward GFLOP of the network per image (matmuls and convolutions, as
    torch.utils.flop_counter counts them): the same for every row, whatever its loss."""
    from torch.utils.flop_counter import FlopCounterMode

    size = model.arch.image_size
    x = torch.rand(2, model.arch.in_channels, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        objective, _ = model.objective.objective_and_metrics(x * 2 - 1)
        objective.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


class Clock:
    """Seconds since `start()`, read after synchronising the device (each read syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def seconds(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self._start
