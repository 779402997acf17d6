"""Residual blocks with the options of the residual-network literature, as typed arguments.

A block computes  out = merge(shortcut(x), branch(x))  and, when post-activated, act(out).

- block: "bottleneck" (1x1 reduce, 3x3, 1x1 expand; inner width = out / 4) or "basic" (3x3, 3x3).
- preact: True puts norm -> act before each conv (He et al. 2016, identity mappings);
  False is the original conv -> norm -> act with the activation after the merge.
- shortcut: "identity" (a 1x1 projection only where shapes change), "projection" (always 1x1),
  "gated" (highway: s(x) * g + f(x) * (1 - g), g = sigmoid(1x1 conv of s(x)); the gate starts at
  g = sigmoid(gate_bias) = 0.9975, He et al. 2016's working init), "scaled" (shortcut_scale * s(x)
  + f(x); with 0.5 the setting He et al. 2016 report as failing to train well: an ablation, not a
  recommendation) and "none" (out = f(x): a plain network of the same depth).
- shortcut_dropout: p > 0 drops each element of the shortcut's output s(x) with probability p
  while training, without rescaling, and scales it by 1 - p in evaluation: classic (not inverted)
  dropout, so the shortcut carries an expected scale 1 - p, the "dropout shortcut" of He et al.
  2016 (identity mappings, Table 1: p = 0.5). No effect with shortcut="none".
- resample: "down" halves the resolution (stride-2 3x3 conv), "up" doubles it with a transposed
  conv (kernel 4, stride 2: kernel divisible by stride) or, with upsample="resize",
  nearest-neighbour resize then a 3x3 conv.
- zero_init_last: make each residual branch start as the zero function, so each block starts as
  its shortcut (timm's zero_init_last). Post-activation: the scale of the last norm (the last
  conv with norm="none"). Pre-activation: the last conv, as the last norm sits before it and a
  zero norm output would sit where ReLU's gradient is zero and never train. Ignored for
  shortcut="none", where it would cut the only path through the network.

`shortcut_path(x)` is what a block computes with its residual branch deleted (Veit et al. 2016's
lesion): merge(shortcut(x), 0) without the post-activation, i.e. x for an identity shortcut,
the projection for a projection, lambda * x when scaled, g * x when gated; `changes_shape` tells
the blocks that resample or change width (a lesion study skips those).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from resvae.nn.layers import ACTIVATIONS, NORMS, make_act, make_norm, zero_init_norm
from resvae.nn.residual import HE2016_GATE_BIAS

BLOCK_TYPES = ("bottleneck", "basic")
SHORTCUTS = ("identity", "projection", "gated", "scaled", "none")
UPSAMPLES = ("transposed", "resize")
Resample = Literal["none", "down", "up"]
EXPANSION = {"bottleneck": 4, "basic": 1}


@dataclass(frozen=True)
class BlockOptions:
    block: str = "bottleneck"
    preact: bool = True
    shortcut: str = "identity"
    shortcut_scale: float = 0.5
    norm: str = "batch"
    act: str = "silu"
    zero_init_last: bool = True
    upsample: str = "transposed"
    gate_bias: float = HE2016_GATE_BIAS  # initial carry logit of the gated shortcut (residual.py)
    shortcut_dropout: float = 0.0  # classic dropout on the shortcut's output (see the docstring)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("block", self.block, BLOCK_TYPES),
            ("shortcut", self.shortcut, SHORTCUTS),
            ("norm", self.norm, NORMS),
            ("act", self.act, tuple(ACTIVATIONS)),
            ("upsample", self.upsample, UPSAMPLES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if not 0.0 <= self.shortcut_dropout < 1.0:
            raise ValueError(f"shortcut_dropout must be in [0, 1), got {self.shortcut_dropout}")

    @property
    def expansion(self) -> int:
        return EXPANSION[self.block]


def _conv(cin: int, cout: int, kernel: int, resample: Resample, upsample: str) -> nn.Module:
    """A bias-free conv that also resamples: stride 2 down, transposed or resize-conv up."""
    if resample == "down":
        return nn.Conv2d(cin, cout, kernel, stride=2, padding=kernel // 2, bias=False)
    if resample == "up":
        if upsample == "resize":
            conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
            return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)
        # kernel 4 / stride 2 for the 3x3 position, kernel 2 / stride 2 for a 1x1 projection:
        # each output pixel gets the same number of taps (no checkerboard from uneven overlap).
        k = 4 if kernel == 3 else 2
        return nn.ConvTranspose2d(cin, cout, k, stride=2, padding=(k - 2) // 2, bias=False)
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)


class ResidualBlock(nn.Module):
    """One residual block mapping [B, cin, H, W] -> [B, cout, H', W'] (H' = H/2, H or 2H)."""

    def __init__(
        self, cin: int, cout: int, resample: Resample = "none", opts: BlockOptions | None = None
    ) -> None:
        super().__init__()
        opts = opts or BlockOptions()
        self.opts = opts
        self.preact = opts.preact
        self.shortcut_kind = opts.shortcut
        self.shortcut_scale = opts.shortcut_scale
        self.shortcut_dropout = opts.shortcut_dropout
        self.cin, self.cout, self.resample = cin, cout, resample

        self.branch, last_norm, last_conv = self._make_branch(cin, cout, resample, opts)
        self.shortcut = self._make_shortcut(cin, cout, resample, opts)
        self.gate = None
        if opts.shortcut == "gated":
            self.gate = nn.Conv2d(cout, cout, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, opts.gate_bias)
        self.out_act = None if opts.preact else make_act(opts.act)

        if opts.zero_init_last and opts.shortcut != "none":
            zeroed_norm = not opts.preact and zero_init_norm(last_norm)
            if not zeroed_norm:
                nn.init.zeros_(last_conv.weight)

    @staticmethod
    def _make_branch(
        cin: int, cout: int, resample: Resample, opts: BlockOptions
    ) -> tuple[nn.Sequential, nn.Module, nn.Module]:
        if opts.block == "bottleneck":
            mid = cout // opts.expansion
            convs = [
                _conv(cin, mid, 1, "none", opts.upsample),
                _conv(mid, mid, 3, resample, opts.upsample),
                _conv(mid, cout, 1, "none", opts.upsample),
            ]
            widths = [cin, mid, mid] if opts.preact else [mid, mid, cout]
        else:
            convs = [_conv(cin, cout, 3, resample, opts.upsample), _conv(cout, cout, 3, "none", "")]
            widths = [cin, cout] if opts.preact else [cout, cout]
        layers: list[nn.Module] = []
        norms = [make_norm(opts.norm, w) for w in widths]
        for i, (conv, norm) in enumerate(zip(convs, norms)):
            if opts.preact:  # norm -> act -> conv
                layers += [norm, make_act(opts.act), conv]
            else:  # conv -> norm (-> act, except after the last conv: it follows the merge)
                layers += [conv, norm] + ([make_act(opts.act)] if i < len(convs) - 1 else [])
        return nn.Sequential(*layers), norms[-1], convs[-1]

    @staticmethod
    def _make_shortcut(cin: int, cout: int, resample: Resample, opts: BlockOptions) -> nn.Module:
        if opts.shortcut == "none":
            return nn.Identity()  # unused: a plain block has no shortcut path
        if opts.shortcut != "projection" and cin == cout and resample == "none":
            return nn.Identity()
        proj = _conv(cin, cout, 1, resample, opts.upsample)
        if opts.preact:
            return proj
        return nn.Sequential(proj, make_norm(opts.norm, cout))

    @property
    def changes_shape(self) -> bool:
        """Whether the block resamples or changes the channel count (its output shape differs)."""
        return self.resample != "none" or self.cin != self.cout

    def _drop(self, s: torch.Tensor) -> torch.Tensor:
        p = self.shortcut_dropout
        if p <= 0:
            return s
        if self.training:
            return s * torch.bernoulli(torch.full_like(s, 1.0 - p))
        return s * (1.0 - p)

    def _merge(self, s: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
        """merge(s, f) by the shortcut kind; f=None is a deleted branch (zero)."""
        kind = self.shortcut_kind
        if kind == "gated":
            g = torch.sigmoid(self.gate(s))
            return s * g if f is None else s * g + f * (1 - g)
        if kind == "scaled":
            s = self.shortcut_scale * s
        return s if f is None else s + f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.branch(x)
        out = f if self.shortcut_kind == "none" else self._merge(self._drop(self.shortcut(x)), f)
        return out if self.out_act is None else self.out_act(out)

    def shortcut_path(self, x: torch.Tensor) -> torch.Tensor:
        """The block with its residual branch deleted: merge(shortcut(x), 0), no output activation.

        A plain block (shortcut="none") has no shortcut path; deleting it is the identity, which
        only fits where the block keeps the shape."""
        if self.shortcut_kind == "none":
            if self.changes_shape:
                raise ValueError("a plain block that changes the shape has no path to keep when deleted")
            return x
        return self._merge(self._drop(self.shortcut(x)), None)
