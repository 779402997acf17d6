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

    depth: int | None = 28
    blocks: tuple[int, ...] | None = None
    width: int = 64
    latent_dim: int = 256
    latent: str = "dense"
    image_size: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        plan = resolve_blocks(self.depth, self.blocks)
        object.__setattr__(self, "blocks", plan)
        object.__setattr__(self, "depth", depth_of(plan))
        for name in ("width", "latent_dim", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.latent not in LATENTS:
            raise ValueError(f"unknown latent {self.latent!r}; choose one of {', '.join(LATENTS)}")
        down = 2 ** (STAGES - 1)
        if self.image_size < down or self.image_size % down:
            raise ValueError(f"image_size must be a positive multiple of {down}, got {self.image_size}")

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> ArchConfig:
        """Build from config keys, naming any unknown key and the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unknown model option(s) {', '.join(unknown)}; "
                f"the architecture options are: {', '.join(sorted(known))}"
            )
        if kwargs.get("blocks") is not None:
            kwargs["blocks"] = tuple(kwargs["blocks"])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]

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


class ResNetEncoder(nn.Module):
    """x [B, C, H, W] -> features [B, channels[-1], H/8, W/8]."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        opts, ch = cfg.block_options, cfg.stage_channels()
        stem: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1, bias=cfg.preact)]
        if not cfg.preact:
            stem += [make_norm(cfg.norm, ch[0]), make_act(cfg.act)]
        layers: list[nn.Module] = [nn.Sequential(*stem)]
        c = ch[0]
        for i, n in enumerate(cfg.blocks):
            for j in range(n):
                down = j == 0 and i > 0
                layers.append(ResidualBlock(c, ch[i], "down" if down else "none", opts))
                c = ch[i]
        if cfg.preact:  # pre-activation blocks leave their output un-normalised
            layers += [make_norm(cfg.norm, c), make_act(cfg.act)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ResNetDecoder(nn.Module):
    """features [B, channels[-1], h, w] -> [B, out_channels, 8h, 8w], mirroring the encoder."""

    def __init__(self, cfg: ArchConfig, out_channels: int) -> None:
        super().__init__()
        opts, ch = cfg.block_options, cfg.stage_channels()
        c = ch[-1]
        layers: list[nn.Module] = []
        for i in reversed(range(STAGES)):
            n = cfg.blocks[i]
            for j in range(n):
                up = j == n - 1 and i > 0  # the stage's last block upsamples into the next stage
                cout = ch[i - 1] if up else ch[i]
                layers.append(ResidualBlock(c, cout, "up" if up else "none", opts))
                c = cout
        if cfg.preact:
            layers += [make_norm(cfg.norm, c), make_act(cfg.act)]
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


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
    """Weighted layers on the main path (shortcut projections excluded)."""
    per_block = 3 if block == "bottleneck" else 2
    return 2 * per_block * sum(blocks) + 4
