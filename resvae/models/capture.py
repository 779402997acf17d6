"""A training step's closure recorded once in a CUDA graph and replayed for every batch.

At batch 25 a depth-28 step is a few milliseconds of GPU work but thousands of kernel launches;
replaying a graph turns them into one launch. What the graph holds is `TrainStep.closure`
(the buffer snapshot, input conversion, forward, loss, backward through the module's
`manual_backward`, clipping, the finite check, the buffers put back after a non-finite step,
the metric sums). Python inside the closure runs once, at capture: Lightning's
on_before_backward / on_after_backward hooks are not called again on replays; the
fused optimizer's update runs after it, eagerly, as a couple of kernels, reading the gradients
the graph wrote and `found_inf`. Learning rates, the KL weight and the skip flag live in device
tensors or outside the graph, so schedulers keep working.

Recording follows PyTorch's whole-network capture recipe: a few warm-up closures on a side
stream (cuDNN autotuning, torch.compile), then capture with the gradients unset, so the graph
allocates them and every replay overwrites them. The warm-up has side effects a real step must
not have (BatchNorm statistics, metric sums, counters, random numbers): they are restored.

The graph writes its gradients into the tensors it allocated, whatever `p.grad` says, so each
call puts those tensors back into `p.grad` first: Lightning sets every `.grad` to None before
each validation (`on_validation_model_zero_grad`), after which the optimizer saw no gradient and
silently updated nothing for the rest of training (the H200 equality test's gap; its cause was
then reproduced on a CPU, tests/models/test_capture.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from resvae.models.step import TrainStep


def _buffers(modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    return [b for m in modules for b in m.buffers()]


class GraphedClosure:
    """`closure(images)` of `step` as a CUDA graph over a static batch of `example`'s shape."""

    def __init__(
        self,
        step: TrainStep,
        example: torch.Tensor,
        modules: Sequence[nn.Module],
        autocast_dtype: torch.dtype | None = None,
        warmup: int = 3,
    ) -> None:
        self.step = step
        self.static_images = example.clone()
        autocast = (
            torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=False)  # capture needs no cache
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        buffers = _buffers([*modules, step])
        saved = [b.clone() for b in buffers]
        rng = torch.cuda.get_rng_state()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), autocast:
                for _ in range(warmup):
                    step.closure(self.static_images)
                    step.optimizer.zero_grad(set_to_none=True)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), autocast:
                self.static_objective = step.closure(self.static_images)
            torch.cuda.synchronize()
            # the graph's gradient tensors (None for a parameter the closure does not use)
            self.grads: list[torch.Tensor | None] = [p.grad for p in step.params]
        finally:  # undo the side effects of the warm-up (a capture itself runs no kernel)
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
            torch.cuda.set_rng_state(rng)

    def attach_grads(self) -> None:
        """Make `p.grad` the graph's gradient tensors again where anything replaced or unset them."""
        for p, grad in zip(self.step.params, self.grads):
            if p.grad is not grad:
                p.grad = grad

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.attach_grads()
        if images.shape != self.static_images.shape:  # e.g. a last, smaller batch: run it eagerly
            self.step.optimizer.zero_grad(set_to_none=False)  # the graph's gradient buffers, zeroed
            return self.step.closure(images)  # its backward adds into them
        self.static_images.copy_(images)
        self.graph.replay()
        return self.static_objective


def capture_step(
    step: TrainStep,
    example: torch.Tensor,
    modules: Sequence[nn.Module],
    autocast_dtype: torch.dtype | None = None,
) -> bool:
    """Make `step` replay a CUDA graph of its closure; on any failure, one warning and eager."""
    reason = None if torch.cuda.is_available() and example.is_cuda else "it needs a CUDA device"
    if reason is None:
        try:
            step.graphed = GraphedClosure(step, example, modules, autocast_dtype)
            return True
        except Exception as err:  # an op that cannot be captured, a driver or memory limit
            reason = f"{type(err).__name__}: {err}"
            step.optimizer.zero_grad(set_to_none=True)
    step.graphed = None
    warnings.warn(
        f"model.train_step.capture=cuda_graph: the training step could not be captured ({reason}); "
        "training continues eagerly (set model.train_step.capture=none to skip capturing)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False
