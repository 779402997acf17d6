"""The training step as one capturable region: what runs outside it per step, flips inside it,
and the capture switch's fallback on a machine without CUDA."""

from __future__ import annotations

import collections
import warnings
from functools import partial

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resvae.data import SyntheticDataModule
from resvae.models import VAE
from resvae.nn import ArchConfig
from tests.conftest import cpu_trainer


def python_bound_vae(**train_step) -> VAE:
    """The size the host-overhead targets are measured at: image 8x8, width 2."""
    torch.manual_seed(0)
    return VAE(
        arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8),
        likelihood="gaussian",
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        train_step=train_step or None,
    )


def tiny_data(**kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(
        **{"train_size": 64, "test_size": 8, "image_size": 8, "batch_size": 2, "val_size": 8, **kwargs}
    )


class OpsOutside(TorchDispatchMode):
    """Counts the ops dispatched outside the step's closure, between two training batches."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.counting = False
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.counting and not self.inside:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_at_most_8_ops_per_step_run_outside_the_capturable_closure(one_thread) -> None:
    model = python_bound_vae()
    mode = OpsOutside()
    closure = model.step.closure

    def flagged(images):
        mode.inside = True
        try:
            return closure(images)
        finally:
            mode.inside = False

    model.step.closure = flagged
    first, last = 4, 14  # the windows batch_start(k) -> batch_start(k + 1): steady state, no epoch end

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            mode.counting = first <= batch_idx < last

    trainer = cpu_trainer(
        max_epochs=1,
        limit_train_batches=20,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Window()],
    )
    with mode:
        trainer.fit(model, datamodule=tiny_data())
    per_step = sum(mode.ops.values()) / (last - first)
    print(f"ops outside the closure per step: {per_step:g} {dict(mode.ops)}")  # -s shows it
    assert per_step <= 8, dict(mode.ops)
    # what is left: the batch gather, the fused optimizer's update and its profiler marks
    assert mode.ops["aten._fused_adam_.default"] == last - first
    assert not any("flip" in op or "rand" in op for op in mode.ops), "the flips belong in the closure"


def test_the_step_flips_training_images_and_the_loader_does_not() -> None:
    data = tiny_data(train_size=32, batch_size=32, val_size=0.25)
    data.setup()
    (batch,) = list(data.train_dataloader())
    originals = {tuple(image.flatten().tolist()) for image in data.splits["train"]}
    assert all(tuple(image.flatten().tolist()) in originals for image in batch)  # none mirrored
    model = python_bound_vae()
    seen = []
    weight = torch.zeros(1, requires_grad=True)

    def forward(x):
        seen.append(x)
        return x.sum() * 0 + weight.sum(), torch.zeros(3)

    model.step.bind(forward, torch.optim.SGD([weight], lr=0.1))
    model.step.flip = True
    torch.manual_seed(0)
    model.step.closure(batch)
    x = model.objective.to_input(batch)
    flipped = [not torch.equal(seen[0][i], x[i]) for i in range(len(x))]
    assert 0 < sum(flipped) < len(x)
    assert all(torch.equal(seen[0][i], x[i].flip(-1)) for i in range(len(x)) if flipped[i])


def test_cuda_graph_capture_on_a_cpu_warns_once_and_trains_eagerly(one_thread) -> None:
    model = python_bound_vae(capture="cuda_graph")
    trainer = cpu_trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=tiny_data())
    messages = [str(w.message) for w in caught if "capture" in str(w.message)]
    assert len(messages) == 1 and "needs a CUDA device" in messages[0] and "eagerly" in messages[0]
    assert trainer.global_step == 4 and int(model.step.skipped) == 0


def test_an_unknown_capture_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="model.train_step.capture"):
        python_bound_vae(capture="always")


@pytest.mark.gpu
def test_a_captured_step_trains_like_the_eager_one() -> None:
    """On a GPU: the same weights after a few steps, captured or not (same seed, same batches)."""
    results = []
    for capture in ("none", "cuda_graph"):
        torch.manual_seed(0)
        model = python_bound_vae(capture=capture)
        trainer = L.Trainer(
            accelerator="gpu", devices=1, max_epochs=1, limit_train_batches=8, limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, precision="32-true",
        )  # fmt: skip
        trainer.fit(model, datamodule=tiny_data())
        results.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=1e-4, atol=1e-5, msg=key)
