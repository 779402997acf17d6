"""The 2018 study's protocol as it ran: Keras 2.1's patience counts, checked against small
re-implementations of Keras 2.1's callbacks (keras/callbacks.py of that release, transcribed
below), the notebook's sampling and an IW bound that scores the density z is drawn from."""

from __future__ import annotations

import math
import random
from functools import partial

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import OmegaConf

from resvae.models import Keras2018VAE
from resvae.models.schedulers import KerasReduceLROnPlateau
from resvae.nn.keras2018 import Keras2018Config
from resvae.run.config import config_dir
from tests.helpers.models import cpu_trainer


def keras21_plateau(losses: list[float], lr: float, factor: float, patience: int, min_lr: float,
                    epsilon: float) -> list[float]:  # fmt: skip
    """Keras 2.1's ReduceLROnPlateau.on_epoch_end (mode min, cooldown 0): the rate after each epoch."""
    best, wait, rates = math.inf, 0, []
    for current in losses:
        if current < best - epsilon:
            best, wait = current, 0
        else:
            if wait >= patience:  # noqa: SIM102 (transcribed as Keras wrote it)
                if lr > min_lr:
                    lr = max(lr * factor, min_lr)
                    wait = 0
            wait += 1
        rates.append(lr)
    return rates


def keras21_stop_epoch(losses: list[float], patience: int, min_delta: float) -> int | None:
    """Keras 2.1's EarlyStopping.on_epoch_end (mode min): the epoch at which training stops."""
    best, wait = math.inf, 0
    min_delta *= -1  # Keras, mode min
    for epoch, current in enumerate(losses):
        if current - min_delta < best:  # monitor_op(current - self.min_delta, self.best)
            best, wait = current, 0
        else:
            if wait >= patience:
                return epoch
            wait += 1
    return None


def loss_curves(seed: int, epochs: int = 200) -> list[float]:
    """A falling, noisy validation loss that plateaus: improvements, then long flat stretches."""
    rng = random.Random(seed)
    level, out = 100.0, []
    for epoch in range(epochs):
        if epoch < 40 or rng.random() < 0.03:
            level -= rng.uniform(0.0, 0.3)
        out.append(level + rng.uniform(0.0, 0.05))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_plateau_schedule_halves_when_keras_2_1_did(seed: int) -> None:
    losses = loss_curves(seed, epochs=400)
    expected = keras21_plateau(losses, 1e-3, 0.5, 25, 1e-6, 1e-4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = KerasReduceLROnPlateau(
        opt, factor=0.5, patience=25, min_lr=1e-6, threshold=1e-4, threshold_mode="abs"
    )
    rates = []
    for loss in losses:
        sched.step(loss)
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx(expected, rel=1e-12)
    assert len(set(rates)) >= 3  # the curve plateaued often enough to halve twice or more


def test_later_halvings_come_patience_epochs_apart_where_torch_waits_one_more() -> None:
    flat = [1.0] * 120
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    keras, torch_sched = KerasReduceLROnPlateau(opt, patience=25), None
    halvings = []
    for epoch, loss in enumerate(flat):
        before = opt.param_groups[0]["lr"]
        keras.step(loss)
        if opt.param_groups[0]["lr"] < before:
            halvings.append(epoch)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, patience=25)
    torch_halvings = []
    for epoch, loss in enumerate(flat):
        before = opt2.param_groups[0]["lr"]
        torch_sched.step(loss)
        if opt2.param_groups[0]["lr"] < before:
            torch_halvings.append(epoch)
    assert halvings[:4] == [26, 51, 76, 101]  # epoch 0 sets the best; 26 epochs, then every 25
    assert torch_halvings[:4] == [26, 52, 78, 104]


class Scripted(L.LightningModule):
    """Logs a given val/loss each epoch; one parameter, one training batch."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = losses
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * 0).sum() + self.w.sum() * 0

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.losses[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return [torch.zeros(1)]

    def val_dataloader(self):
        return [torch.zeros(1)]


@pytest.mark.parametrize("seed", range(3))
def test_early_stopping_with_patience_51_stops_when_keras_2_1_did_with_50(seed: int) -> None:
    """Small patience for speed: Keras 2.1's patience p is Lightning's p + 1."""
    losses = loss_curves(seed, epochs=120)
    keras_patience, min_delta = 6, 0.1
    stop = keras21_stop_epoch(losses, keras_patience, min_delta)
    assert stop is not None
    module = Scripted(losses)
    stopper = EarlyStopping("val/loss", patience=keras_patience + 1, min_delta=min_delta, mode="min")
    trainer = cpu_trainer(max_epochs=len(losses), callbacks=[stopper], num_sanity_val_steps=0)
    trainer.fit(module)
    assert trainer.current_epoch - 1 == stop  # the last epoch that ran


def test_seed_depth_sweep_corrected_changes_only_the_sampling() -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        study = compose("train", overrides=["experiment=seed_depth_sweep"])
        corrected = compose("train", overrides=["experiment=seed_depth_sweep_corrected"])
    assert study.model.keras_sampling is True and corrected.model.keras_sampling is False
    assert corrected.name != study.name  # its runs get their own folders
    assert (study.protocol, corrected.protocol) == ("keras2018", "keras2018_corrected")  # in summary.json
    study.name, study.protocol = corrected.name, corrected.protocol
    assert study == corrected  # the same config but for the sampling the protocol implies
    assert (OmegaConf.select(study, "model.keras_sampling"), corrected.model.keras_sampling) == (False, False)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        plain = compose("train", overrides=["model=keras2018"])
        suite_net = compose("train", overrides=["experiment=seed_depth_sweep", "model=vae"])
    assert plain.model.keras_sampling is False  # outside the study's protocol: the proper sampling
    assert "keras_sampling" not in suite_net.model  # the protocol with the suite's network


def tiny(keras_sampling: bool) -> Keras2018VAE:
    torch.manual_seed(0)
    arch = Keras2018Config(width=4, head_units=32, latent_dim=8)
    return Keras2018VAE(
        arch=arch, keras_sampling=keras_sampling, optimizer=partial(torch.optim.Adam, lr=1e-3)
    ).eval()


@pytest.mark.parametrize("keras_sampling", [False, True])
def test_the_iw_bound_scores_the_density_z_was_drawn_from(keras_sampling: bool) -> None:
    """An independent computation with torch.distributions: z ~ N(mu, s^2) with s = exp(logvar)
    (the notebook) or exp(logvar / 2), weights p(x|z) p(z) / q(z|x) under that same q."""
    model = tiny(keras_sampling)
    x = model.to_input(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    k = 5
    torch.manual_seed(7)
    ours = model.objective.nll_iw(x, k)
    torch.manual_seed(7)
    with torch.no_grad():
        mu, logvar = model.objective.posterior(x)
        std = torch.exp(logvar) if keras_sampling else torch.exp(0.5 * logvar)
        q, prior = torch.distributions.Normal(mu, std), torch.distributions.Normal(0.0, 1.0)
        log_w = []
        for _ in range(k):
            z = mu + std * torch.randn_like(mu)
            log_px = -model.objective.likelihood.nll(model.net.decode(z), x)
            log_w.append(log_px + prior.log_prob(z).sum(1) - q.log_prob(z).sum(1))
        reference = -(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-3)
