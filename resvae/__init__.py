"""resvae: residual VAE / autoencoder experiment suite.

In a notebook, `resvae.load` gives a trained model (resvae/models/inference.py)::

    import resvae
    m = resvae.load("outputs/smoke/default")   # a run folder (its best.ckpt) or a .ckpt file
    m.sample(16, temperature=0.8); m.reconstruct(images); m.encode(images); m.bpd(images)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from resvae.models.inference import Inference

__all__ = ["load"]


def load(path: str | Path, device: str | torch.device = "cpu") -> Inference:
    """The trained model of a checkpoint, or of a run folder (its best.ckpt; last.ckpt where the
    run tests its final weights), on `device`. Loaded with weights_only=True."""
    from resvae.models.loading import load_model  # torch is imported on first use only
    from resvae.run.layout import find_checkpoint

    path = Path(path).expanduser()
    checkpoint = find_checkpoint(path) if path.is_dir() else path
    return load_model(checkpoint, device).inference
