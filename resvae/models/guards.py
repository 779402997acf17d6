"""On-device stability measures for one optimizer update: no host synchronisation per step.

`guarded_update` clips the gradient norm and, when the loss or the gradient norm is not finite,
turns the update into a no-op on the device, the way GradScaler does: fused Adam/AdamW/SGD read
`optimizer.found_inf` and leave parameters, moments and step counts untouched when it is 1.
Optimizers without that support fall back to one host read of the flag per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


class DeviceMeans(nn.Module):
    """Weighted running means of a few scalars, kept on the device and read once per epoch.

    (torchmetrics' MeanMetric drops its `weight` when its sync-free nan_strategy="disable" is
    set, and a skipped step must weigh zero, hence this small accumulator.)
    """

    def __init__(self, names: Sequence[str], persistent: bool = False) -> None:
        """persistent=True keeps the running sums in checkpoints (a run resumed mid-epoch then
        reports the same epoch means as one that was never stopped)."""
        super().__init__()
        self.names = tuple(names)
        self.register_buffer("sums", torch.zeros(len(self.names)), persistent=persistent)
        self.register_buffer("weight", torch.zeros(()), persistent=persistent)

    def add(self, values: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        """values [len(names)] (batch means); weight a scalar, e.g. the batch size or 0 to skip."""
        w = torch.as_tensor(weight, dtype=self.sums.dtype, device=self.sums.device)
        self.sums.add_(torch.nan_to_num(values.detach().float(), 0.0, 0.0, 0.0) * w)
        self.weight.add_(w)

    def compute(self) -> dict[str, torch.Tensor]:
        means = self.sums / self.weight.clamp(min=1e-12)
        return dict(zip(self.names, means.unbind(0)))

    def reset(self) -> None:
        self.sums.zero_()
        self.weight.zero_()


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """True for the fused optimizers that honour `found_inf` (the GradScaler protocol)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and any(
        g.get("fused") for g in optimizer.param_groups
    )


def guarded_update(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    loss: torch.Tensor,
    max_grad_norm: float | None,
    step: Callable[[], object],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip, check, and update with `step()`; returns (finite flag, grad norm) as device tensors."""
    limit = max_grad_norm if max_grad_norm and max_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit)
    finite = torch.isfinite(grad_norm) & torch.isfinite(loss.detach())
    if supports_device_skip(optimizer):
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        step()
    elif bool(finite):  # host sync: only for optimizers with no on-device skip
        step()
    return finite, grad_norm
