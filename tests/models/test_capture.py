"""A captured step on a CPU, through a stand-in for the CUDA graph with the graph's one semantic
that eager code lacks: a replay writes the gradient tensors allocated at capture, whatever
`p.grad` holds by then. Training through it must match eager training step for step, across
the validations between epochs (before each of which Lightning sets every `.grad` to None)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import resvae.models.base
from resvae.models.capture import GraphedClosure
from resvae.models.step import TrainStep
from tests.helpers.models import cpu_trainer, python_bound_vae, tiny_data


class ReplayIntoCaptureGrads:
    """`replay()` runs the step's closure with the capture's gradient tensors in `.grad` and then
    puts back whatever `.grad` held before, as a CUDA graph leaves Python's `.grad` alone."""

    def __init__(self, graphed: GraphedClosure) -> None:
        self.graphed = graphed

    def replay(self) -> None:
        step = self.graphed.step
        held = [p.grad for p in step.params]
        for p, grad in zip(step.params, self.graphed.grads):
            grad.zero_()
            p.grad = grad
        self.graphed.static_objective.copy_(step.closure(self.graphed.static_images))
        for p, grad in zip(step.params, held):
            p.grad = grad


def capture_on_cpu(step: TrainStep, example: torch.Tensor, modules, autocast_dtype=None) -> bool:
    """capture_step's stand-in: a GraphedClosure whose graph is ReplayIntoCaptureGrads."""
    graphed = object.__new__(GraphedClosure)  # its __init__ records a real CUDA graph
    graphed.step, graphed.static_images = step, example.clone()
    graphed.grads = [torch.zeros_like(p) for p in step.params]
    graphed.static_objective = torch.zeros(())
    graphed.graph = ReplayIntoCaptureGrads(graphed)
    step.graphed = graphed
    return True


def train(capture: str, monkeypatch) -> dict[str, torch.Tensor]:
    if capture == "cuda_graph":
        monkeypatch.setattr(resvae.models.base, "capture_step", capture_on_cpu)
    model = python_bound_vae(capture=capture, optimizer=partial(torch.optim.SGD, lr=1e-3, momentum=0.9))
    trainer = cpu_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=tiny_data(batch_size=4, train_size=24, val_size=8))
    assert isinstance(model.step.graphed, GraphedClosure) is (capture == "cuda_graph")
    assert trainer.global_step == 12
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_captured_step_keeps_training_after_validation_unsets_the_gradients(
    one_thread, monkeypatch
) -> None:
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in python_bound_vae().state_dict().items()}
    eager = train("none", monkeypatch)
    captured = train("cuda_graph", monkeypatch)
    weights = [k for k in eager if k.startswith("objective.net.") and eager[k].is_floating_point()]
    assert any(not torch.equal(eager[k], start[k]) for k in weights)
    for key in weights:  # the same kernels on the same inputs: equal up to float rounding
        torch.testing.assert_close(
            captured[key], eager[key], rtol=1e-5, atol=1e-7, msg=lambda m, k=key: f"{k}: {m}"
        )


@pytest.mark.parametrize("unset", [True, False])
def test_attach_grads_puts_back_only_what_was_replaced(unset: bool) -> None:
    graphed = object.__new__(GraphedClosure)
    step = TrainStep(("loss",))
    weight = torch.nn.Parameter(torch.ones(3))
    step.bind(lambda x: (x.sum(), x.sum().view(1)), torch.optim.SGD([weight], lr=0.1))
    graphed.step, graphed.grads = step, [torch.full((3,), 2.0)]
    weight.grad = None if unset else graphed.grads[0]
    graphed.attach_grads()
    assert weight.grad is graphed.grads[0]
