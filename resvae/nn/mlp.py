"""An MLP autoencoder built from the generic `Residual` wrapper (model=mlp_vae, model=mlp_ae).

Shapes at the defaults (image 32, width 512, 2 linear layers per block, depth 28 = 6 blocks):
  encoder  x [B, 3, 32, 32] -> stem: flatten, Linear -> [B, 512] -> `blocks`: 6 residual blocks
           [B, 512] -> [B, 512] -> final (LayerNorm, act) -> head Linear -> [B, k * latent_dim]
  decoder  z [B, latent_dim] -> stem Linear -> [B, 512] -> 6 residual blocks -> final
           -> head Linear, unflatten -> likelihood parameters [B, out_channels, 32, 32]

Each block is `Residual(MLPBlock)`: MLPBlock is `block_layers` pre-activation layers
(LayerNorm -> act -> Linear), shape-preserving, so any merge of `Residual` applies:
merge="sum" (x + f(x)), "gated" (g * x + (1 - g) * f(x), g = sigmoid(Linear(x)) per feature: a
highway layer) or "none" (the bare MLPBlock: a plain MLP of the same depth).

Depth counts the weighted layers on the main path, as for the ResNet (resvae/nn/plan.py):
depth = 2 * block_layers * blocks + 4 (each block's layers in the encoder and in the decoder,
plus stem and head of each), so with 2 layers per block 28 = 6 blocks, 40 = 9 and 100 = 24;
70 needs block_layers=1 (33 blocks). `blocks` counts the blocks of the encoder (the decoder has
as many).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from resvae.nn.layers import ACTIVATIONS, make_act
from resvae.nn.plan import DepthError, check_blocks_match
from resvae.nn.residual import HE2016_GATE_BIAS, Residual

MLP_MERGES = ("sum", "gated", "none")
MLP_NORMS = ("layer", "none")


def _mlp_depth(blocks: int, block_layers: int) -> int:
    return 2 * block_layers * blocks + 4


def _mlp_blocks(depth: int | None, blocks: int | None, block_layers: int) -> int:
    """Blocks per side for `depth` (or the given `blocks`, checked against `depth`)."""
    step = 2 * block_layers
    if blocks is not None:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise DepthError(f"model.arch.blocks must be a positive integer for the MLP, got {blocks!r}")
        have = _mlp_depth(blocks, block_layers)
        check_blocks_match(depth, have, str(blocks), f"{block_layers} linear layer(s) per block")
        return blocks
    if depth is None:
        raise DepthError("set model.arch.depth or model.arch.blocks")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise DepthError(f"depth must be an integer, got {depth!r}")
    lowest = step + 4
    if depth < lowest or (depth - 4) % step:
        below = depth - (depth - 4) % step
        near = [d for d in (below, below + step) if d >= lowest] or [lowest]
        other = "" if block_layers == 1 else " (or model.arch.block_layers=1: depth = 2 * blocks + 4)"
        raise DepthError(
            f"invalid depth {depth} for the MLP with {block_layers} linear layer(s) per block: depth "
            f"must be {step} * blocks + 4 with at least one block ({lowest}, {lowest + step}, ...); "
            f"nearest valid: {' or '.join(map(str, near))}{other}"
        )
    return (depth - 4) // step


@dataclass(frozen=True)
class MLPArchConfig:
    """The MLP autoencoder's shape; the same interface as `ArchConfig` (`network`, `depth`,
    `blocks`, `layers`, `width`, `latent_dim`, `image_size`, `in_channels`, `build`)."""

    network: ClassVar[str] = "mlp"  # summary.json's `network`

    depth: int | None = 28
    blocks: int | None = None  # residual blocks of the encoder (the decoder mirrors them)
    width: int = 512  # hidden features of every block
    latent_dim: int = 256
    image_size: int = 32
    in_channels: int = 3
    block_layers: int = 2  # linear layers per block (pre-activation: norm -> act -> linear)
    merge: str = "sum"  # sum | gated | none (a plain MLP)
    norm: str = "layer"  # layer | none
    act: str = "silu"  # relu | silu | gelu
    zero_init_last: bool = True  # each residual block starts as the identity
    gate_bias: float = HE2016_GATE_BIAS  # initial gate logit of merge=gated (carry sigmoid(6) = 0.9975)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("merge", self.merge, MLP_MERGES),
            ("norm", self.norm, MLP_NORMS),
            ("act", self.act, tuple(ACTIVATIONS)),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        for name in ("width", "latent_dim", "in_channels", "image_size", "block_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.arch.{name} must be a positive integer, got {value!r}")
        blocks = _mlp_blocks(self.depth, self.blocks, self.block_layers)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "depth", _mlp_depth(blocks, self.block_layers))

    @property
    def layers(self) -> int:
        """Weighted layers on the main path (gates excluded): equal to `depth`."""
        return _mlp_depth(self.blocks, self.block_layers)

    @property
    def pixels(self) -> int:
        return self.in_channels * self.image_size**2

    def build(self, out_channels: int, code_multiplier: int) -> MLPAutoencoder:
        """`out_channels` likelihood parameters per pixel, a code of `code_multiplier * latent_dim`."""
        return MLPAutoencoder(self, out_channels, code_multiplier)


RESNET_ONLY = ("preact", "shortcut", "shortcut_scale", "shortcut_dropout", "block", "upsample", "latent")


def mlp_arch(**options: object) -> MLPArchConfig:
    """`MLPArchConfig(**options)` for Hydra (conf/network/mlp.yaml), refusing the ResNet's block
    options (an experiment about shortcuts or pre-activation) with one clear message."""
    foreign = [k for k in options if k in RESNET_ONLY]
    if foreign:
        keys = ", ".join(f"model.arch.{k}" for k in foreign)
        what = "is an option" if len(foreign) == 1 else "are options"
        raise ValueError(
            f"{keys} {what} of the ResNet (network=resnet), which the MLP network (model=mlp_vae, "
            "model=mlp_ae) does not have; use model=vae or model=ae with this experiment"
        )
    return MLPArchConfig(**options)  # type: ignore[arg-type]


def _norm(name: str, features: int) -> nn.Module:
    return nn.LayerNorm(features) if name == "layer" else nn.Identity()


class MLPBlock(nn.Sequential):
    """`layers` pre-activation layers [B, width] -> [B, width]: (norm -> act -> Linear) x layers."""

    def __init__(self, cfg: MLPArchConfig) -> None:
        parts: list[nn.Module] = []
        for _ in range(cfg.block_layers):
            parts += [_norm(cfg.norm, cfg.width), make_act(cfg.act), nn.Linear(cfg.width, cfg.width)]
        super().__init__(*parts)

    @property
    def last(self) -> nn.Linear:
        return self[-1]


def make_unit(cfg: MLPArchConfig) -> nn.Module:
    """One block of the trunk: Residual(MLPBlock) by `merge`, or the bare MLPBlock (merge none)."""
    block = MLPBlock(cfg)
    if cfg.merge == "none":
        return block
    if cfg.zero_init_last:
        nn.init.zeros_(block.last.weight)
        nn.init.zeros_(block.last.bias)
    if cfg.merge == "gated":
        gate = nn.Linear(cfg.width, cfg.width)
        nn.init.zeros_(gate.weight)
        nn.init.constant_(gate.bias, cfg.gate_bias)
        return Residual(block, merge="gated", gate=gate)
    return Residual(block, merge="sum")


class MLPTrunk(nn.Module):
    """stem -> blocks -> final: the shared shape of the encoder and decoder trunks."""

    def __init__(self, cfg: MLPArchConfig, stem: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*(make_unit(cfg) for _ in range(cfg.blocks)))
        self.final = nn.Sequential(_norm(cfg.norm, cfg.width), make_act(cfg.act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.stem(x)))


class MLPAutoencoder(nn.Module):
    """encode(x) -> [B, code_multiplier * latent_dim]; decode(z) -> [B, out_channels, H, W]."""

    def __init__(self, cfg: MLPArchConfig, out_channels: int, code_multiplier: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        w, d, size = cfg.width, cfg.latent_dim, cfg.image_size
        self.encoder = MLPTrunk(cfg, nn.Sequential(nn.Flatten(), nn.Linear(cfg.pixels, w)))
        self.head = nn.Linear(w, code_multiplier * d)
        self.decoder = MLPTrunk(cfg, nn.Linear(d, w))
        self.out = nn.Sequential(
            nn.Linear(w, out_channels * size * size), nn.Unflatten(1, (out_channels, size, size))
        )
        self.latent_shape: tuple[int, ...] = (d,)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(z))
