"""One training step in pure PyTorch, with no host synchronisation.

`TrainStep` does everything an update needs: input conversion, forward, loss, backward,
gradient clipping, the non-finite guard, the optimizer step and the metric sums. When the loss
or the gradient norm is not finite, the update becomes a no-op on the device, the way
GradScaler does it: fused Adam/AdamW/SGD read `optimizer.found_inf` and leave parameters,
moments and step counts untouched when it is 1. Optimizers without that support fall back to
one host read of the flag per step. A skipped step also leaves the model's buffers as they were
(BatchNorm's running statistics and `num_batches_tracked` are updated by the forward itself, before
the finite check can know): they are copied before the forward and selected back with
`torch.where` after it, on the device. Counters and sums stay on the device and are read once per
epoch (`DeviceMeans`, `TrainStep.skipped`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from resvae.models.objectives import LatentObjective

ForwardFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x -> (objective, metrics)
BackwardFn = Callable[[torch.Tensor], None]  # objective -> gradients (LightningModule.manual_backward)


def plain_backward(objective: torch.Tensor) -> None:
    objective.backward()


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
        """The means; NaN when nothing was counted (e.g. every update of an epoch was skipped),
        never a 0 that would pass for a perfect loss."""
        means = torch.where(self.weight > 0, self.sums / self.weight.clamp(min=1e-12), torch.nan)
        return dict(zip(self.names, means.unbind(0)))

    def reset(self) -> None:
        self.sums.zero_()
        self.weight.zero_()
        self.nonfinite.zero_()

    def total(self, add_up: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the sums, weight and count by `add_up` of each: with a sum over data-parallel
        ranks, every rank then holds the means of the whole split, not of its shard."""
        for buffer in (self.sums, self.weight, self.nonfinite):
            buffer.copy_(add_up(buffer.clone()))


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """True for the fused optimizers that honour `found_inf` (the GradScaler protocol).

    torch has no public API for "skip this update on the device"; GradScaler's private protocol
    (`_step_supports_amp_scaling`, `found_inf`) is it, used here and in bind() only; tested with
    torch 2.11 to 2.15. Without the flag the step falls back to one host read of the skip."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and any(
        g.get("fused") for g in optimizer.param_groups
    )


class TrainStep(nn.Module):
    """One guarded update of an objective from a batch of uint8 (or [0, 1] float) images.

    `closure(images)` is the region a CUDA graph can hold: input conversion, random flips (when
    `flip`), forward, loss, backward, clipping, the finite check (into `found_inf`, which the
    fused optimizer's update reads) and the metric sums. `forward(images, update)` runs it
    through `update(closure)`: the optimizer's step (or Lightning's wrapper of it, which also
    counts the global step) calls the closure and then updates, unless `found_inf` is 1. The
    training counters are buffers, so they go into checkpoints with the module that owns this
    step: `means` (batch means of the objective's metrics and the gradient norm, weighted by the
    images of applied updates), `skipped` and `consecutive` skips.

    `bind(..., buffers=...)` names the model's buffers a skipped step must leave untouched (the
    objective's: BatchNorm statistics, an AE's code fit); `backward` is how the objective's
    gradients are made (Lightning's `manual_backward`, which lets DDP all-reduce them; plain
    `Tensor.backward` by default), so this module stays free of Lightning.
    """

    def __init__(
        self, metric_names: Sequence[str], grad_clip: float | None = None, skip_threshold: float | None = None
    ) -> None:
        super().__init__()
        self.grad_clip = grad_clip
        self.skip_threshold = math.inf if skip_threshold is None else skip_threshold
        self.means = DeviceMeans((*metric_names, "grad_norm"), persistent=True)
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive", torch.zeros((), dtype=torch.long))
        self.register_buffer("found_inf", torch.zeros(()), persistent=False)
        self._forward_fn: ForwardFn | None = None
        self._backward_fn: BackwardFn = plain_backward
        self._guarded: list[torch.Tensor] = []  # the model's buffers, restored after a skipped step
        self._snapshot: list[torch.Tensor] = []  # their values before the forward (preallocated)
        self._optimizer: torch.optim.Optimizer | None = None
        self._params: list[torch.Tensor] = []
        self._channels_last = False
        self.flip = False  # set from the data module's `flip` when training starts
        self.device_skip = False
        self.graphed: Callable[[torch.Tensor], torch.Tensor] | None = None  # see capture.py

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        assert self._optimizer is not None, "call bind() first"
        return self._optimizer

    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters the optimizer updates (bound by bind())."""
        return self._params

    def bind(
        self,
        forward_fn: ForwardFn,
        optimizer: torch.optim.Optimizer,
        channels_last: bool = False,
        buffers: Iterable[torch.Tensor] = (),
        backward: BackwardFn | None = None,
    ) -> None:
        """`forward_fn`: LatentObjective.objective_and_metrics or a compiled copy of it;
        `buffers`: those of the model that the forward may change (objective.buffers());
        `backward`: objective -> gradients, e.g. LightningModule.manual_backward."""
        self._forward_fn, self._optimizer, self._channels_last = forward_fn, optimizer, channels_last
        self._backward_fn = backward or plain_backward
        seen = {id(b) for b in self.buffers()}  # the step's own counters change on purpose
        self._guarded = []
        for b in buffers:
            if id(b) not in seen:
                seen.add(id(b))
                self._guarded.append(b)
        # allocated once: a CUDA graph records their addresses; memory: one copy of the buffers
        self._snapshot = [torch.empty_like(b) for b in self._guarded]
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self.device_skip = supports_device_skip(optimizer)
        if self.device_skip:
            optimizer.found_inf = self.found_inf  # type: ignore[attr-defined]
        self.graphed = None

    def closure(self, images: torch.Tensor) -> torch.Tensor:
        """Everything of a step but the parameter update; no host synchronisation."""
        assert self._forward_fn is not None, "call bind() first"
        # cost: two small kernels per buffer (3 buffers per BatchNorm), launched once per replay
        # when the step is a CUDA graph
        for saved, buffer in zip(self._snapshot, self._guarded):
            saved.copy_(buffer)
        x = LatentObjective.to_input(images, self._channels_last)
        if self.flip:  # random horizontal flips, the data's augmentation
            mirror = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(mirror, x.flip(3), x)
        objective, metrics = self._forward_fn(x)
        self._backward_fn(objective)
        limit = self.grad_clip if self.grad_clip and self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, limit)
        # an update counts only with a finite loss and a gradient norm (before clipping) at most
        # skip_threshold: VDVAE's guard against the rare huge gradients of a deep hierarchy
        finite = torch.isfinite(grad_norm) & torch.isfinite(objective.detach())
        finite &= grad_norm <= self.skip_threshold
        for saved, buffer in zip(self._snapshot, self._guarded):  # a skipped step changes no buffer
            torch.where(finite, buffer, saved, out=buffer)  # in place, on the device: no sync
        skipped = (~finite).long()
        self.found_inf.copy_(skipped)
        self.skipped.add_(skipped)
        self.consecutive.add_(skipped).mul_(skipped)
        values = torch.cat([metrics.detach().float(), grad_norm.detach().float().view(1)])
        self.means.add(values, finite.float() * x.shape[0])
        return objective.detach()

    def forward(self, images: torch.Tensor, update: Callable[..., object] | None = None) -> None:
        optimizer = self.optimizer
        update = update or optimizer.step
        run = self.graphed or self.closure
        if self.device_skip:
            update(lambda: run(images))
        else:
            run(images)
            if not bool(self.found_inf):  # this syncs: only for optimizers with no on-device skip
                update()
        if self.graphed is None:  # a graph owns its gradient buffers and overwrites them
            for p in self._params:  # zero_grad(set_to_none=True) without its profiler ops
                p.grad = None
