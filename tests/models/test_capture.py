"""A captured step on a CPU, through a stand-in for the CUDA graph with the graph's one semantic
that eager code lacks: a replay writes the gradient tensors allocated at capture, whatever
`p.grad` holds by then. Training through it must match eager training step for step, across
the validations between epochs (before each of which Lightning sets every `.grad` to None)."""

from __future__ import annotations

from functools import partial

import lightning as L
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
    """capture_step's stand-in: a GraphedClosure whose graph is ReplayIntoCaptureGrads, leaving
    `.grad` as a real capture does (the graph's gradient tensors)."""
    graphed = object.__new__(GraphedClosure)  # its __init__ records a real CUDA graph
    graphed.step, graphed.static_images = step, example.clone()
    graphed.grads = [torch.zeros_like(p) for p in step.params]
    graphed.static_objective = torch.zeros(())
    graphed.graph = ReplayIntoCaptureGrads(graphed)
    for p, grad in zip(step.params, graphed.grads):
        p.grad = grad
    step.graphed = graphed
    return True


class WeightsAtFirstValidation(L.Callback):
    def on_validation_start(self, trainer, pl_module) -> None:
        if not hasattr(self, "weights"):
            self.weights = net_weights(pl_module)


def net_weights(model: L.LightningModule) -> dict[str, torch.Tensor]:
    """The network's trained tensors (no BatchNorm statistics, which every forward moves)."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if k.startswith("objective.net.")}


def train(capture: str, fused: bool, monkeypatch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights at the first validation, after 3 steps; final weights, after 6 steps)."""
    if capture == "cuda_graph":
        monkeypatch.setattr(resvae.models.base, "capture_step", capture_on_cpu)
    optimizer = partial(torch.optim.SGD, lr=1e-3, momentum=0.9, fused=fused)
    model = python_bound_vae(capture=capture, optimizer=optimizer)
    first = WeightsAtFirstValidation()
    trainer = cpu_trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[first]
    )
    trainer.fit(model, datamodule=tiny_data(batch_size=4, train_size=20, val_size=8))
    assert isinstance(model.step.graphed, GraphedClosure) is (capture == "cuda_graph")
    assert model.step.device_skip is fused and trainer.global_step == 6
    return first.weights, net_weights(model)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key in a:  # the same kernels on the same inputs: equal up to float rounding
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("fused", [True, False], ids=["fused-optimizer", "host-read-skip"])
def test_a_captured_step_keeps_training_after_validation_unsets_the_gradients(
    one_thread, monkeypatch, fused: bool
) -> None:
    eager_first, eager = train("none", fused, monkeypatch)
    first, captured = train("cuda_graph", fused, monkeypatch)
    assert any(not torch.equal(eager[k], eager_first[k]) for k in eager), "the second epoch trained nothing"
    assert_same(first, eager_first)
    assert_same(captured, eager)


def test_without_reattaching_the_gradients_training_stops_at_the_first_validation(
    one_thread, monkeypatch
) -> None:
    """The failure the H200 equality test showed, through the stand-in: the first epoch trains
    like the eager one, then Lightning unsets `.grad` and no later update moves a weight."""
    monkeypatch.setattr(GraphedClosure, "attach_grads", lambda self: None)
    eager_first, _ = train("none", True, monkeypatch)
    first, final = train("cuda_graph", True, monkeypatch)
    assert_same(first, eager_first)
    assert all(torch.equal(final[k], first[k]) for k in first)


@pytest.mark.parametrize("held", ["unset", "replaced", "attached"])
def test_attach_grads_puts_back_the_graphs_gradient_tensors(held: str) -> None:
    graphed = object.__new__(GraphedClosure)
    step = TrainStep(("loss",))
    weight = torch.nn.Parameter(torch.ones(3))
    step.bind(lambda x: (x.sum(), x.sum().view(1)), torch.optim.SGD([weight], lr=0.1))
    graphed.step, graphed.grads = step, [torch.full((3,), 2.0)]
    weight.grad = {"unset": None, "replaced": torch.zeros(3), "attached": graphed.grads[0]}[held]
    graphed.attach_grads()
    assert weight.grad is graphed.grads[0]
