"""One training step in pure PyTorch, with no host synchronisation.

`TrainStep` does everything an update needs: input conversion, forward, loss, backward,
gradient clipping, the non-finite guard, the optimizer step and the metric sums. When the loss
or the gradient norm is not finite, the update becomes a no-op on the device, the way
GradScaler does it: fused Adam/AdamW/SGD read `optimizer.found_inf` and leave parameters,
moments and step counts untouched when it is 1. Optimizers without that support fall back to
one host read of the flag per step. Counters and sums stay on the device and are read once per
epoch (`DeviceMeans`, `TrainStep.skipped`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from resvae.models.objectives import LatentObjective

ForwardFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class DeviceMeans(nn.Module):
    """Weighted running means of a few scalars, kept on the device and read once per epoch.

    An entry of weight 0 (a skipped training step) drops out even when its values are NaN. An
    entry of positive weight with a non-finite value makes that mean non-finite: a diverged
    validation reports NaN, never a finite average of the batches that happened to be finite.
    `nonfinite` counts such entries. (torchmetrics' MeanMetric cannot express the first rule:
    its sync-free nan_strategy="disable" drops the weight argument.)
    """

    def __init__(self, names: Sequence[str], persistent: bool = False) -> None:
        """persistent=True keeps the running sums in checkpoints (a run resumed mid-epoch then
        reports the same epoch means as one that was never stopped)."""
        super().__init__()
        self.names = tuple(names)
        self.register_buffer("sums", torch.zeros(len(self.names)), persistent=persistent)
        self.register_buffer("weight", torch.zeros(()), persistent=persistent)
        self.register_buffer("nonfinite", torch.zeros((), dtype=torch.long), persistent=persistent)

    def add(self, values: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        """values [len(names)] (batch means); weight a scalar, e.g. the batch size or 0 to skip."""
        w = torch.as_tensor(weight, dtype=self.sums.dtype, device=self.sums.device)
        values = values.detach().float()
        counted = w > 0
        self.sums.add_(torch.where(counted, values * w, torch.zeros_like(values)))
        self.weight.add_(w)
        self.nonfinite.add_((counted & ~torch.isfinite(values).all()).long())

    def compute(self) -> dict[str, torch.Tensor]:
        means = self.sums / self.weight.clamp(min=1e-12)
        return dict(zip(self.names, means.unbind(0)))

    def reset(self) -> None:
        self.sums.zero_()
        self.weight.zero_()
        self.nonfinite.zero_()


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
    step: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip, check, and update with `step()` (default `optimizer.step`; Lightning's wrapper of it
    also counts the global step); returns (finite flag, unclipped grad norm) as device tensors."""
    step = step or optimizer.step
    limit = max_grad_norm if max_grad_norm and max_grad_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit)
    finite = torch.isfinite(grad_norm) & torch.isfinite(loss.detach())
    if supports_device_skip(optimizer):
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        step()
    elif bool(finite):  # this syncs: only for optimizers with no on-device skip
        step()
    return finite, grad_norm


class TrainStep(nn.Module):
    """uint8 (or [0, 1] float) images [B, C, H, W] -> one guarded update of `objective`.

    Holds the training counters as buffers (they go into checkpoints with the module that owns
    this step): `means` (batch means of the objective's metrics and the gradient norm, weighted
    by the images of updates that were applied), `skipped` and `consecutive` skips.
    """

    def __init__(self, metric_names: Sequence[str], grad_clip: float | None = None) -> None:
        super().__init__()
        self.grad_clip = grad_clip
        self.means = DeviceMeans((*metric_names, "grad_norm"), persistent=True)
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        objective_and_metrics: ForwardFn,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        channels_last: bool = False,
        step: Callable[[], object] | None = None,
    ) -> None:
        """`objective_and_metrics`: LatentObjective.objective_and_metrics, or a compiled copy;
        `step`: what applies the update (default optimizer.step)."""
        x = LatentObjective.to_input(images, channels_last)
        objective, metrics = objective_and_metrics(x)
        objective.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        finite, grad_norm = guarded_update(optimizer, params, objective, self.grad_clip, step)
        optimizer.zero_grad(set_to_none=True)
        skipped = (~finite).long()
        self.skipped.add_(skipped)
        self.consecutive.add_(skipped).mul_(skipped)
        values = torch.cat([metrics.detach().float(), grad_norm.detach().float().view(1)])
        self.means.add(values, finite.float() * x.shape[0])
