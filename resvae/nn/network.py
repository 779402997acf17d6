"""The residual encoder and transposed-convolution decoder, and their architecture config.

Shapes at the defaults (image 32, width 64, bottleneck, dense latent 256):
  encoder  x [B, 3, 32, 32] -> stem [B, 256, 32, 32] -> stages at 32/16/8/4 px with outputs
           256, 512, 1024, 2048 channels -> features [B, 2048, 4, 4]
  head     features -> flatten [B, 32768] -> Linear -> [B, code_multiplier * 256]
  decoder  z [B, 256] -> Linear -> [B, 2048, 4, 4] -> stages at 4/8/16/32 px, each ending with a
           2x transposed-conv block into the previous stage's width -> [B, 256, 32, 32]
           -> 3x3 conv -> likelihood parameters [B, out_channels, 32, 32]
With latent="spatial" the head is a 1x1 conv and z is [B, latent_dim, 4, 4].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from resvae.nn.blocks import BlockOptions, ResidualBlock
from resvae.nn.layers import make_act, make_norm
from resvae.nn.plan import STAGES, depth_of, resolve_blocks

LATENTS = ("dense", "spatial")


@dataclass(frozen=True)
class ArchConfig(BlockOptions):
    """Everything that fixes the network's shape (the block options included); validated on
    construction."""

    network: ClassVar[str] = "resnet"  # the suite's network (summary.json's `network`)

    depth: int | None = 28
    blocks: tuple[int, ...] | None = None
    width: int = 64
    latent_dim: int = 256
    latent: str = "dense"
    image_size: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        plan = resolve_blocks(self.depth, self.blocks, self.block)
        object.__setattr__(self, "blocks", plan)
        object.__setattr__(self, "depth", depth_of(plan, self.block))
        for name in ("width", "latent_dim", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.arch.{name} must be a positive integer, got {getattr(self, name)}")
        if self.latent not in LATENTS:
            raise ValueError(f"unknown latent {self.latent!r}; choose one of {', '.join(LATENTS)}")
        down = 2 ** (STAGES - 1)
        if self.image_size < down or self.image_size % down:
            raise ValueError(
                f"model.arch.image_size must be a positive multiple of {down}, got {self.image_size}"
            )

    @property
    def block_options(self) -> BlockOptions:
        return BlockOptions(**{f.name: getattr(self, f.name) for f in fields(BlockOptions)})

    def stage_channels(self) -> list[int]:
        """Block output channels per stage: width * 2**i * expansion."""
        e = self.block_options.expansion
        return [self.width * 2**i * e for i in range(STAGES)]

    @property
    def feature_size(self) -> int:
        return self.image_size // 2 ** (STAGES - 1)

    @property
    def layers(self) -> int:
        """Weighted layers on the main path (see `conv_layer_count`): equal to `depth` for every
        block type (resvae/nn/plan.py)."""
        return conv_layer_count(self.blocks, self.block)

    def build(self, out_channels: int, code_multiplier: int) -> LatentAutoencoder:
        """The network this config describes: `out_channels` likelihood parameters per pixel and
        a code of `code_multiplier * latent_dim` features (2 for a VAE's mean and log-variance)."""
        return LatentAutoencoder(self, out_channels, code_multiplier)


class ResNetEncoder(nn.Module):
    """x [B, C, H, W] -> features [B, channels[-1], H/8, W/8].

    Named like timm's ResNet: `stem`, stages `layer1..layer4` (32, 16, 8, 4 px at image 32),
    then `final` (the norm and activation a pre-activation network still owes its output).
    """

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        opts, ch = cfg.block_options, cfg.stage_channels()
        stem: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1, bias=cfg.preact)]
        if not cfg.preact:
            stem += [make_norm(cfg.norm, ch[0]), make_act(cfg.act)]
        self.stem = nn.Sequential(*stem)
        c = ch[0]
        for i, n in enumerate(cfg.blocks):
            blocks = []
            for j in range(n):
                down = j == 0 and i > 0
                blocks.append(ResidualBlock(c, ch[i], "down" if down else "none", opts))
                c = ch[i]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.final = nn.Sequential(make_norm(cfg.norm, c), make_act(cfg.act)) if cfg.preact else nn.Identity()
        self.out_channels = c

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(STAGES)]

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage, layer1..layer4: [B, channels[i], H / 2**i, W / 2**i]."""
        h, features = self.stem(x), []
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.stage_features(x)[-1])


class ResNetDecoder(nn.Module):
    """features [B, channels[-1], h, w] -> [B, out_channels, 8h, 8w], mirroring the encoder.

    Stage `layerN` mirrors the encoder's `layerN` (same resolution and width) and they run
    layer4 -> layer1; each stage's last block upsamples into the next stage's width. Then
    `final` (norm + act when pre-activated) and `head`, a 3x3 conv to the likelihood's parameters.
    """

    def __init__(self, cfg: ArchConfig, out_channels: int) -> None:
        super().__init__()
        opts, ch = cfg.block_options, cfg.stage_channels()
        c = ch[-1]
        for i in reversed(range(STAGES)):
            n, blocks = cfg.blocks[i], []
            for j in range(n):
                up = j == n - 1 and i > 0  # the stage's last block upsamples into the next stage
                cout = ch[i - 1] if up else ch[i]
                blocks.append(ResidualBlock(c, cout, "up" if up else "none", opts))
                c = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.final = nn.Sequential(make_norm(cfg.norm, c), make_act(cfg.act)) if cfg.preact else nn.Identity()
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)

    @property
    def stages(self) -> list[nn.Sequential]:
        """In the order they run: layer4 (smallest resolution) first."""
        return [getattr(self, f"layer{i}") for i in range(STAGES, 0, -1)]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            h = stage(h)
        return self.head(self.final(h))


class LatentAutoencoder(nn.Module):
    """Encoder + latent head, latent stem + decoder.

    encode(x) -> code with `code_multiplier * latent_dim` features (dense: [B, k*D];
    spatial: [B, k*D, s, s]); decode(z) -> [B, out_channels, H, W] likelihood parameters.
    """

    def __init__(self, cfg: ArchConfig, out_channels: int, code_multiplier: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ResNetEncoder(cfg)
        c, s, d = self.encoder.out_channels, cfg.feature_size, cfg.latent_dim
        self.latent_shape: tuple[int, ...]
        if cfg.latent == "dense":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, code_multiplier * d))
            self.stem = nn.Sequential(nn.Linear(d, c * s * s), nn.Unflatten(1, (c, s, s)))
            self.latent_shape = (d,)
        else:
            self.head = nn.Conv2d(c, code_multiplier * d, 1)
            self.stem = nn.Conv2d(d, c, 1)
            self.latent_shape = (d, s, s)
        self.decoder = ResNetDecoder(cfg, out_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.stem(z))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_layer_count(blocks: Sequence[int], block: str) -> int:
    """Weighted layers on the main path (shortcut projections and gates excluded): the depth of
    the plan for that block type, 6 * blocks + 4 (bottleneck) or 4 * blocks + 4 (basic)."""
    return depth_of(blocks, block)
