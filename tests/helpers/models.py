"""Small models and a quiet Trainer for in-process tests on the CPU."""

from __future__ import annotations

import tempfile
from functools import partial

import lightning as L
import torch

from resvae.data import SyntheticDataModule
from resvae.models import VAE
from resvae.nn import ArchConfig


def cpu_trainer(**kwargs) -> L.Trainer:
    """A quiet CPU Trainer for in-process tests (no logger, bar or model summary)."""
    defaults = {
        "default_root_dir": tempfile.mkdtemp(prefix="resvae-test-"),  # never the repository
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **kwargs})


def tiny_vae(**overrides) -> VAE:
    """A tiny VAE (depth 28, width 2, 4 latents, Gaussian likelihood, Adam 1e-3, no scheduler),
    its weights not seeded; `overrides` replace any of these arguments."""
    kwargs = dict(
        arch=ArchConfig(depth=28, width=2, latent_dim=4),
        likelihood="gaussian",
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        scheduler=None,
    )
    return VAE(**{**kwargs, **overrides})


def python_bound_vae(kl_warmup_steps: int = 0, scheduler=None, optimizer=None, **train_step) -> VAE:
    """The size the host-overhead targets are measured at: image 8x8, width 2."""
    torch.manual_seed(0)
    return VAE(
        arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8),
        # not "gaussian": its torch.distributions.Normal.cdf validates its argument, a host sync
        # that no CUDA graph can capture, and an error (not a skip) on a NaN
        likelihood="logistic_mixture",
        n_mix=2,
        kl_warmup_steps=kl_warmup_steps,
        optimizer=optimizer or partial(torch.optim.Adam, lr=1e-3),
        scheduler=scheduler,
        train_step=train_step or None,
    )


def tiny_data(**kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(
        **{"train_size": 64, "test_size": 8, "image_size": 8, "batch_size": 2, "val_size": 8, **kwargs}
    )


class SmallFeatures(torch.nn.Module):
    """A fixed random 3x3 convolution, ReLU and global average pooling: uint8 images
    [B, 3, H, W] -> features [B, num_features] (float64, so that the FID is exact to ~1e-12).
    Stands in for the Inception network, whose weights the tests never download."""

    def __init__(self, num_features: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features
        self.conv = torch.nn.Conv2d(3, num_features, 3)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(num_features, generator=g))
        self.conv.double().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        return torch.relu(self.conv(images.double() / 255)).mean(dim=(2, 3))
