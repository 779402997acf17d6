"""Activations: the convolutional encoder's stage outputs (layer1..layer4) for a few images, as
grids of feature maps beside each image and as per-stage statistics (mean, spread, dead channels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resvae.cli.analyze.common import AnalysisError

ACTIVATION_FIELDS = (
    "label",
    "stage",
    "channels",
    "resolution",
    "mean",
    "std",
    "mean_abs",
    "fraction_negative",
    "dead_channels",
)


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
    """One row per stage: its shape, mean, sd, mean magnitude, negative fraction, dead channels."""
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
