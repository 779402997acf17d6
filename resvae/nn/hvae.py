"""A hierarchical residual VAE network (VDVAE style, Child 2021): a bottom-up residual encoder and
a top-down decoder whose latent groups sit at several resolutions (model=hvae, network=hvae).

Shapes at the defaults (image 32, width 256, 16 channels per group, groups (0, 1, 2, 2)):
  bottom-up  x [B, 3, 32, 32] -> stem 3x3 conv [B, 256, 32, 32] -> stage i (i = 0..3, at 32, 16,
             8, 4 px; 2x average pooling before stages 1-3) of `blocks[i]` residual blocks ->
             activations a_i [B, 256, 32 / 2**i, 32 / 2**i]
  top-down   h = a learned constant [B, 256, 4, 4] (VDVAE's bias_xs); stages 3 -> 0 (4 -> 32 px,
             2x nearest upsampling between them), each running its `groups[i]` latent groups
             interleaved with its `blocks[i]` residual blocks (group, block, group, block, ...)
             -> head: act, 3x3 conv -> likelihood parameters [B, out_channels, 32, 32]
  group g    at stage i: prior head     act(h) -> 3x3 conv -> [B, 2 * 16, s, s] (mean, log-variance)
                         posterior head act(cat(h, a_i)) -> 3x3 conv -> [B, 2 * 16, s, s]
                         z_g [B, 16, s, s] -> 1x1 conv (z projection) -> added to h
  residual   pre-activation bottleneck on the stream: h + 1x1(act(3x3(act(1x1(act(h)))))) with
  block      inner width max(1, width // 4); no normalisation (a VAE's batch statistics would couple
             the images of a batch); the last conv of each branch and each z projection are scaled
             at initialisation by 1 / sqrt(total residual blocks), as VDVAE does.

Depth counts weighted layers on the main path with the ResNet's rule (resvae/nn/plan.py):

    depth = 6 * (total blocks) + 4      (28, 34, 40, ..., 70, ..., 100, ...)

three convolutions per residual block in the encoder and three in the mirrored decoder (stage i
has `blocks[i]` of each), plus four stem/head layers: the encoder's stem, the latent head (a
group's posterior conv), the decoder input (a group's z projection) and the output head. The
latent groups run in parallel bridges between the two streams, each with the same two layers, so
`groups` does not change the depth (as the ResNet's latent width does not). The plan of a depth
is the ResNet's: 28 -> blocks (1, 1, 1, 1), 40 -> (1, 2, 2, 1), 70 -> (2, 3, 4, 2), 100 -> (3, 4,
6, 3); an impossible depth is one line naming the nearest valid ones.

Pure PyTorch: the ELBO, sampling and the latent's layout are in resvae/models/hvae_objective.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from resvae.nn.plan import STAGES, DepthError, check_blocks_match, depth_of, depth_plan, nearest_valid_depths

# keys of the other networks' configs (an experiment about shortcuts or pre-activation)
FOREIGN_KEYS = ("preact", "shortcut", "shortcut_scale", "shortcut_dropout", "block", "upsample", "latent",
                "norm", "act", "zero_init_last", "gate_bias", "block_layers", "merge")  # fmt: skip


def _hvae_blocks(depth: int | None, blocks: Sequence[int] | None) -> tuple[int, ...]:
    """Residual blocks per stage for `depth` (or the given `blocks`, checked against `depth`)."""
    if blocks is not None:
        plan = tuple(blocks)
        if len(plan) != STAGES or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in plan):
            raise DepthError(
                f"model.arch.blocks must list {STAGES} positive block counts (one per stage, 32 px first "
                f"at image 32), got {list(blocks)}"
            )
        check_blocks_match(depth, depth_of(plan), f"{list(plan)}", "the hierarchical VAE's bottleneck blocks")
        return plan
    if depth is None:
        raise DepthError("set model.arch.depth (e.g. 28, 40, 70, 100) or model.arch.blocks=[b1,b2,b3,b4]")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise DepthError(f"model.arch.depth must be an integer, got {depth!r}")
    try:
        return depth_plan(depth)
    except DepthError:
        near = " or ".join(map(str, nearest_valid_depths(depth)))
        raise DepthError(
            f"model.arch.depth={depth} is impossible for the hierarchical VAE: depth = 6 * blocks + 4 "
            f"with at least one residual block in each of {STAGES} stages (28, 34, 40, ...); set "
            f"model.arch.depth={near} (or model.arch.blocks=[b1,b2,b3,b4] with model.arch.depth=null)"
        ) from None


@dataclass(frozen=True)
class HVAEArchConfig:
    """The hierarchical VAE network's shape; validated on construction. The same interface as
    `ArchConfig` (`network`, `depth`, `blocks`, `layers`, `width`, `image_size`, `in_channels`,
    `build`)."""

    network: ClassVar[str] = "hvae"  # summary.json's `network`

    depth: int | None = 28
    blocks: tuple[int, ...] | None = None  # residual blocks per stage (encoder; decoder mirrors), 32 px first
    groups: tuple[int, ...] = (0, 1, 2, 2)  # latent groups per stage, in the order of `blocks`
    width: int = 256  # channels of both residual streams at every resolution
    latent_dim: int = 16  # channels of each latent group (VDVAE's zdim), at its stage's resolution
    image_size: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        for name in ("width", "latent_dim", "in_channels", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.arch.{name} must be a positive integer, got {value!r}")
        down = 2 ** (STAGES - 1)
        if self.image_size % down:
            raise ValueError(f"model.arch.image_size must be a multiple of {down}, got {self.image_size}")
        groups = tuple(self.groups) if isinstance(self.groups, Sequence) else ()
        if (
            len(groups) != STAGES
            or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in groups)
            or not sum(groups)
        ):
            raise ValueError(
                f"model.arch.groups must list {STAGES} latent group counts >= 0 (one per stage, 32 px "
                f"first at image 32), at least one group in all, e.g. [0,1,2,2]; got {self.groups!r}"
            )
        object.__setattr__(self, "groups", groups)
        plan = _hvae_blocks(self.depth, None if self.blocks is None else tuple(self.blocks))
        object.__setattr__(self, "blocks", plan)
        object.__setattr__(self, "depth", depth_of(plan))

    @property
    def z_channels(self) -> int:
        """VDVAE's name for `latent_dim`: channels of each latent group."""
        return self.latent_dim

    @property
    def layers(self) -> int:
        """Weighted layers on the main path (module docstring): equal to `depth`."""
        return depth_of(self.blocks)

    def resolution(self, stage: int) -> int:
        return self.image_size // 2**stage

    def group_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each latent group, in top-down (sampling) order."""
        return [
            (self.latent_dim, self.resolution(i), self.resolution(i))
            for i in reversed(range(STAGES))
            for _ in range(self.groups[i])
        ]

    def build(self, out_channels: int, code_multiplier: int = 2) -> HierarchicalVAENet:
        """The network: `out_channels` likelihood parameters per pixel. `code_multiplier` is the
        ResNet's interface; a hierarchical posterior is always a mean and a log-variance (2)."""
        if code_multiplier != 2:
            raise ValueError("the hierarchical network (network=hvae) builds VAEs only: use model=hvae")
        return HierarchicalVAENet(self, out_channels)


def hvae_arch(**options: object) -> HVAEArchConfig:
    """`HVAEArchConfig(**options)` for Hydra (conf/network/hvae.yaml), refusing the other networks'
    options (an experiment about shortcuts or pre-activation) with one clear message."""
    known = {f.name for f in fields(HVAEArchConfig)}
    foreign = [k for k in options if k not in known]
    if foreign:
        keys = ", ".join(f"model.arch.{k}" for k in foreign)
        resnet = set(foreign) & set(FOREIGN_KEYS)
        whose = "; they are options of the ResNet (network=resnet)" if resnet else ""
        raise ValueError(
            f"{keys} {'is no option' if len(foreign) == 1 else 'are no options'} of the hierarchical VAE "
            f"(network=hvae, model=hvae){whose}: use model=vae or model=ae with this experiment, "
            "or remove them"
        )
    return HVAEArchConfig(**options)  # type: ignore[arg-type]


class Bottleneck(nn.Module):
    """Pre-activation residual block on a stream [B, W, s, s] -> [B, W, s, s]:
    h + 1x1(act(3x3(act(1x1(act(h)))))), the last conv scaled by `scale` at initialisation."""

    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        mid = max(1, width // 4)
        self.branch = nn.Sequential(
            nn.GELU(), nn.Conv2d(width, mid, 1),
            nn.GELU(), nn.Conv2d(mid, mid, 3, padding=1),
            nn.GELU(), nn.Conv2d(mid, width, 1),
        )  # fmt: skip
        with torch.no_grad():
            self.branch[-1].weight.mul_(scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.branch(h)


class LatentGroup(nn.Module):
    """One latent group's layers: prior and posterior heads, and the z projection into the stream."""

    def __init__(self, width: int, z_channels: int, scale: float) -> None:
        super().__init__()
        self.prior = nn.Sequential(nn.GELU(), nn.Conv2d(width, 2 * z_channels, 3, padding=1))
        self.posterior = nn.Sequential(nn.GELU(), nn.Conv2d(2 * width, 2 * z_channels, 3, padding=1))
        self.proj = nn.Conv2d(z_channels, width, 1)
        with torch.no_grad():
            self.proj.weight.mul_(scale)


# choose(group index, prior head output [B, 2Z, s, s], posterior head output or None) -> z [B, Z, s, s]
Chooser = Callable[[int, torch.Tensor, torch.Tensor | None], torch.Tensor]


class HierarchicalVAENet(nn.Module):
    """Bottom-up encoder + top-down decoder (module docstring). `encode(x)` returns the bottom-up
    activations; `top_down(acts, choose, batch)` runs the decoder, asking `choose` for each group's
    z given its prior (and, with `acts`, posterior) head outputs, and returns the likelihood
    parameters [B, out_channels, H, W]. `latent_shape` is the flat noise of all groups."""

    def __init__(self, cfg: HVAEArchConfig, out_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        w, blocks = cfg.width, cfg.blocks
        scale = 1.0 / math.sqrt(2 * sum(blocks))  # VDVAE: 1 / sqrt(residual blocks in the network)
        self.stem = nn.Conv2d(cfg.in_channels, w, 3, padding=1)
        self.encoder = nn.ModuleList(
            nn.Sequential(*(Bottleneck(w, scale) for _ in range(blocks[i]))) for i in range(STAGES)
        )
        top = cfg.resolution(STAGES - 1)
        self.h0 = nn.Parameter(torch.zeros(1, w, top, top))  # the top-down state before any latent
        self.decoder = nn.ModuleList()  # stage i's units, run from stage 3 (4 px) to stage 0
        for i in range(STAGES):
            units: list[nn.Module] = []
            for j in range(max(blocks[i], cfg.groups[i])):
                if j < cfg.groups[i]:
                    units.append(LatentGroup(w, cfg.latent_dim, scale))
                if j < blocks[i]:
                    units.append(Bottleneck(w, scale))
            self.decoder.append(nn.ModuleList(units))
        self.head = nn.Sequential(nn.GELU(), nn.Conv2d(w, out_channels, 3, padding=1))
        self.group_shapes = cfg.group_shapes()
        self.latent_shape = (sum(math.prod(s) for s in self.group_shapes),)

    @property
    def num_groups(self) -> int:
        return len(self.group_shapes)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B, C, H, W] -> activations of stages 0..3, [B, W, H / 2**i, W / 2**i]."""
        h, acts = self.stem(x), []
        for i, stage in enumerate(self.encoder):
            if i:
                h = F.avg_pool2d(h, 2)
            h = stage(h)
            acts.append(h)
        return acts

    def top_down(self, acts: list[torch.Tensor] | None, choose: Chooser, batch: int) -> torch.Tensor:
        """The decoder: groups in top-down order g = 0, 1, ...; -> [B, out_channels, H, W]."""
        h = self.h0.expand(batch, -1, -1, -1)
        g = 0
        for i in reversed(range(STAGES)):
            if i < STAGES - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            for unit in self.decoder[i]:
                if isinstance(unit, LatentGroup):
                    post = None if acts is None else unit.posterior(torch.cat([h, acts[i]], dim=1))
                    z = choose(g, unit.prior(h), post)
                    h = h + unit.proj(z.to(h.dtype))
                    g += 1
                else:
                    h = unit(h)
        return self.head(h)

    def split_latent(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """[B, total] -> each group's [B, Z, s, s] (top-down order); the inverse of `join_latent`."""
        sizes = [math.prod(s) for s in self.group_shapes]
        return [part.reshape(-1, *s) for part, s in zip(flat.split(sizes, dim=1), self.group_shapes)]

    @staticmethod
    def join_latent(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each group's [B, Z, s, s] -> the flat latent [B, total]."""
        return torch.cat([p.flatten(1) for p in parts], dim=1)
