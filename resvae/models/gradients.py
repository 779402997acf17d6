"""The blocks of a network and their gradient norms: pure torch, for resvae-analyze and the
gradient-flow training callback (resvae/callbacks/gradient_flow.py) alike.

What "block" means: a `ResidualBlock` of the ResNet (shortcut="none": a plain block), or a
`Residual(MLPBlock)` / bare `MLPBlock` of the MLP network, in the order they run (encoder, then
decoder). `network_units` lists them; `gradient_profile` measures, per block, the gradient of
the training objective on one batch without changing anything about the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resvae.nn.blocks import ResidualBlock
from resvae.nn.mlp import MLPBlock
from resvae.nn.residual import Residual

# the columns of a gradient profile's table: the model's label, then a row of gradient_profile
GRADIENT_FIELDS = (
    "label",
    "index",
    "name",
    "part",
    "stage",
    "kind",
    "param_grad_norm",
    "param_norm",
    "out_grad_norm",
)


@dataclass
class Unit:
    """One block of a network, in the order the blocks run."""

    index: int
    name: str  # its module name, e.g. encoder.layer2.0 or decoder.blocks.3
    module: nn.Module
    part: str  # encoder | decoder
    stage: str  # layer1..layer4 for the ResNet, blocks for the MLP
    kind: str  # residual | plain
    changes_shape: bool

    @property
    def deletable(self) -> bool:
        return not self.changes_shape


def network_units(net: nn.Module) -> list[Unit]:
    """The blocks of `net` (a LatentAutoencoder or MLPAutoencoder) in forward order."""
    units: list[Unit] = []
    inside: set[int] = set()
    for name, module in net.named_modules():
        if id(module) in inside:
            continue
        if isinstance(module, ResidualBlock):
            kind = "plain" if module.shortcut_kind == "none" else "residual"
            changes = module.changes_shape
        elif isinstance(module, Residual):
            kind, changes = "residual", False
        elif isinstance(module, MLPBlock):
            kind, changes = "plain", False
        else:
            continue
        inside.update(id(m) for m in module.modules())
        parts = name.split(".")
        units.append(
            Unit(len(units), name, module, parts[0], parts[1] if len(parts) > 2 else "", kind, changes)
        )
    return units


def network_kind(units: Sequence[Unit]) -> str:
    """plain (no block has a shortcut: shortcut none), residual, or mixed; for titles and legends."""
    kinds = {u.kind for u in units}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "unknown")


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Draw random numbers from `seed` inside, leaving the global generators as they were."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def gradient_profile(model: Any, images: torch.Tensor, seed: int) -> list[dict[str, Any]]:
    """Per block: the norm of the training objective's gradient with respect to the block's
    parameters (`param_grad_norm`), the norm of those parameters, and the mean per-image norm of
    the gradient with respect to the block's output (`out_grad_norm`), on one batch of `images`.

    The model is in training mode (batch statistics, as an update sees it), but nothing changes:
    buffers (BatchNorm statistics, the AE's code fit) are restored, the global random generators
    are left as they were, and parameters' `.grad` are not touched. A network without blocks
    (network_units) is a ValueError.
    """
    objective = model.objective
    units = network_units(objective.net)
    if not units:
        raise ValueError("the network has no blocks that resvae-analyze knows")
    device = next(objective.parameters()).device
    saved = {name: buf.detach().clone() for name, buf in objective.named_buffers()}
    was = objective.training
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        u.module.register_forward_hook(lambda _m, _i, out, i=u.index: outputs.__setitem__(i, out))
        for u in units
    ]
    try:
        objective.train()
        with seeded(seed, device), torch.enable_grad():
            x = objective.to_input(images.to(device), getattr(model, "channels_last", False))
            loss, _ = objective.objective_and_metrics(x)
            params = [[p for p in u.module.parameters() if p.requires_grad] for u in units]
            flat = [p for group in params for p in group]
            outs = [outputs[u.index] for u in units]
            grads = torch.autograd.grad(loss, flat + outs, allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
        objective.train(was)
        with torch.no_grad():
            for name, buf in objective.named_buffers():
                buf.copy_(saved[name])
    param_grads, out_grads = grads[: len(flat)], grads[len(flat) :]
    rows, at = [], 0
    for unit, group, g_out in zip(units, params, out_grads):
        mine = param_grads[at : at + len(group)]
        at += len(group)
        sq = sum(float(g.double().pow(2).sum()) for g in mine if g is not None)
        rows.append(
            {
                "index": unit.index,
                "name": unit.name,
                "part": unit.part,
                "stage": unit.stage,
                "kind": unit.kind,
                "param_grad_norm": math.sqrt(sq),
                "param_norm": math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in group)),
                "out_grad_norm": float(g_out.flatten(1).double().norm(dim=1).mean())
                if g_out is not None
                else 0.0,
            }
        )
    return rows
