"""A skipped (non-finite) update leaves the whole model as it was: parameters, optimizer state and
every buffer (BatchNorm's running statistics and num_batches_tracked), eagerly and through
Lightning, with a fused optimizer (the skip on the device) and a plain one (one host read).

How the runs are compared: a run that meets one non-finite batch mid-epoch against a run that
never sees it. Both draw their random numbers (flips, the VAE's reparameterisation noise) from a
seed fixed per batch, set before each step, so the bad step's draws do not shift what later
steps draw; everything else (data order, weights at the start) is the same. The final states
must then be equal exactly, not approximately.
"""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch

from resvae.models import VAE
from resvae.models.base import build_optimizer
from resvae.models.step import supports_device_skip
from resvae.nn import ArchConfig
from tests.helpers.batches import BAD, Batches, batches
from tests.helpers.models import cpu_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

FUSED = {"fused-device-skip": None, "host-skip": False}  # None: build_optimizer picks fused Adam


def bn_vae(fused: bool | None) -> VAE:
    """A VAE with BatchNorm (the default norm) on 8x8 images; its weights seeded."""
    torch.manual_seed(0)
    kwargs = {} if fused is None else {"fused": fused}
    return VAE(
        arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8),
        likelihood="logistic_mixture",  # (the Gaussian's Normal.cdf raises on NaN instead of skipping)
        n_mix=2,
        optimizer=partial(torch.optim.Adam, lr=1e-2, **kwargs),
    )


def seed_of(batch: torch.Tensor) -> int:
    """A seed fixed by the batch's content (NaN counts as 0): the same batch draws the same numbers."""
    return int(torch.nan_to_num(batch, nan=0.0).sum().item() * 1000) % 2**31


def model_state(model: VAE, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Parameters, all buffers (but the skip counter, which differs by design) and optimizer state."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "step.skipped"}
    for i, s in optimizer.state_dict()["state"].items():
        state.update({f"opt.{i}.{name}": torch.as_tensor(v).clone() for name, v in s.items()})
    return state


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def bn_counts(model: VAE) -> set[int]:
    """The BatchNorm layers' num_batches_tracked values, after checking their statistics are finite."""
    stats = {k: v for k, v in model.objective.state_dict().items() if "running_" in k}
    assert stats and all(torch.isfinite(v).all() for v in stats.values())
    counts = {int(v) for k, v in model.objective.state_dict().items() if k.endswith("num_batches_tracked")}
    return counts


@pytest.mark.parametrize("fused", list(FUSED.values()), ids=list(FUSED))
def test_a_skipped_train_step_changes_no_parameter_state_or_buffer(fused) -> None:
    """TrainStep alone, flips on: the bad step is a no-op for the whole model."""
    states, counts = [], []
    for skip_bad in (False, True):  # with the bad batch, and without it
        model = bn_vae(fused)
        opt = build_optimizer(model.optimizer_factory, list(model.parameters()))
        assert supports_device_skip(opt) is (fused is None)
        model.step.bind(model.objective.objective_and_metrics, opt, buffers=model.objective.buffers())
        model.step.flip = True
        for i, batch in enumerate(batches()):
            if skip_bad and i == BAD:
                continue
            torch.manual_seed(seed_of(batch))
            model.step(batch)
        assert int(model.step.skipped) == (0 if skip_bad else 1)
        counts.append(bn_counts(model))
        states.append(model_state(model, opt))
    assert counts == [{4}, {4}]  # the bad batch was not counted by BatchNorm either
    assert_same_state(*states)


class SeedPerBatch(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(seed_of(batch))  # this syncs (test only)


@pytest.mark.parametrize("fused", list(FUSED.values()), ids=list(FUSED))
def test_a_run_with_one_nonfinite_batch_ends_as_if_it_never_saw_it(fused) -> None:
    """Through Lightning (manual_backward, its optimizer wrapper): the run goes on after the bad
    batch, its BatchNorm statistics stay finite, and its final state is that of the clean run."""
    states = []
    for skip_bad in (False, True):
        model = bn_vae(fused)
        data = [b for i, b in enumerate(batches()) if not (skip_bad and i == BAD)]
        trainer = cpu_trainer(
            max_epochs=1, limit_val_batches=0, enable_checkpointing=False, callbacks=[SeedPerBatch()]
        )
        trainer.fit(model, train_dataloaders=Batches(data))
        assert int(model.step.skipped) == (0 if skip_bad else 1)
        assert bn_counts(model) == {4}
        states.append(model_state(model, trainer.optimizers[0]))
        with torch.no_grad():  # eval mode (set below) reads the running statistics: finite
            model.eval()
            assert math.isfinite(float(model.objective(model.to_input(batches()[0])).loss.mean()))
    assert_same_state(*states)


@pytest.mark.parametrize("fused", list(FUSED.values()), ids=list(FUSED))
def test_an_update_above_the_skip_threshold_is_skipped_like_a_nonfinite_one(fused) -> None:
    """train_step.skip_threshold (VDVAE's): a finite step whose gradient norm (before clipping) is
    above it changes nothing; below it the step applies as without a threshold."""
    good = [b for i, b in enumerate(batches()) if i != BAD]
    skipped, changed = {}, {}
    for threshold in (1e-9, 1e9, None):
        model = bn_vae(fused)
        model.step.skip_threshold = math.inf if threshold is None else threshold
        opt = build_optimizer(model.optimizer_factory, list(model.parameters()))
        model.step.bind(model.objective.objective_and_metrics, opt, buffers=model.objective.buffers())
        before = model_state(model, opt)
        for batch in good:
            torch.manual_seed(seed_of(batch))
            model.step(batch)
        skipped[threshold] = int(model.step.skipped)
        after = model_state(model, opt)
        # the step's own counters (skips, means of applied updates) change by design
        own = [k for k in before if not k.startswith("step.")]
        changed[threshold] = [k for k in own if not torch.equal(after[k], before[k])]
        if threshold == 1e-9:
            assert bn_counts(model) == {0}  # BatchNorm counted no skipped batch either
    assert skipped == {1e-9: len(good), 1e9: 0, None: 0}
    assert changed[1e-9] == [] and changed[1e9] and changed[None] == changed[1e9]


def test_a_bad_skip_threshold_is_one_line() -> None:
    with pytest.raises(ValueError, match="skip_threshold must be > 0 or null"):
        VAE(arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8), train_step={"skip_threshold": 0})
