"""Norm and activation factories shared by every block, chosen by name in configs."""

from __future__ import annotations

from torch import nn

NORMS: tuple[str, ...] = ("batch", "group", "none")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def make_norm(name: str, channels: int, groups: int = 32) -> nn.Module:
    """A 2-d norm over `channels`; GroupNorm uses the largest group count <= `groups` dividing it."""
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "group":
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return nn.GroupNorm(g, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")


def make_act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


def zero_init_norm(norm: nn.Module) -> bool:
    """Zero the affine scale of a norm so its branch starts as the zero function.

    Returns False when the module has no scale to zero (norm="none").
    """
    weight = getattr(norm, "weight", None)
    if weight is None:
        return False
    nn.init.zeros_(weight)
    return True
