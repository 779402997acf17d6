"""`Residual`: turn any shape-preserving module f into x -> merge(x, f(x))."""

from __future__ import annotations

import torch
from torch import nn

MERGES = ("sum", "gated")
# He et al. 2016 (identity mappings, exclusive gating): the gate's bias starts at -6, so the shortcut
# carries 1 - sigmoid(-6) = sigmoid(6) = 0.9975 of its input at initialisation; a bias of 0 (a carry
# of 0.5) trained far worse there. The carry gate of this code is that gate's complement: +6.
HE2016_GATE_BIAS = 6.0


class Residual(nn.Module):
    """Wrap `module` with an identity shortcut.

    merge="sum":   x + f(x)
    merge="gated": g * x + (1 - g) * f(x), g = sigmoid(gate(x)) when a `gate` module is given
                   (it must map x to something broadcastable against x), else a learned scalar
                   sigmoid(logit) starting at sigmoid(gate_bias).

    The output of `module` must have the input's shape; a mismatch raises a ValueError that names
    both shapes at the first forward.
    """

    def __init__(
        self,
        module: nn.Module,
        merge: str = "sum",
        gate: nn.Module | None = None,
        gate_bias: float = HE2016_GATE_BIAS,
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r}; choose one of {', '.join(MERGES)}")
        if gate is not None and merge != "gated":
            raise ValueError("a gate module only makes sense with merge='gated'")
        self.module = module
        self.merge = merge
        self.gate = gate
        self.gate_logit = (
            nn.Parameter(torch.tensor(float(gate_bias))) if merge == "gated" and gate is None else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fx = self.module(x)
        if fx.shape != x.shape:
            raise ValueError(
                f"Residual({type(self.module).__name__}) needs a module whose output shape equals "
                f"its input shape, got input {tuple(x.shape)} -> output {tuple(fx.shape)}; "
                "use a ResidualBlock (it projects the shortcut) or make the module shape-preserving"
            )
        if self.merge == "sum":
            return x + fx
        logit = self.gate(x) if self.gate is not None else self.gate_logit
        g = torch.sigmoid(logit)
        return g * x + (1 - g) * fx
