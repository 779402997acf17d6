"""The VAE and AE: the pure-torch objectives (loss terms against hand-computed references, the
importance-weighted bound), the Lightning modules around them (overfitting one batch, guarded
(skipped) updates, validation of options, the inference API, validation metrics) and their
checkpoints (safe loading, rebuilding a model from a checkpoint alone). Tiny networks on the CPU."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributions import Normal, kl_divergence
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from resvae.data import SyntheticDataModule
from resvae.models import AE, MODELS, VAE, NonFiniteTrainingError, StepOptions
from resvae.models.base import build_optimizer
from resvae.models.compiled import CompiledOrEager
from resvae.models.evaluation import evaluate_batch
from resvae.models.likelihoods import to_signed_unit
from resvae.models.loading import load_model
from resvae.models.objectives import AEObjective, VAEObjective, gaussian_kl
from resvae.models.step import DeviceMeans, TrainStep, supports_device_skip
from resvae.nn import ArchConfig
from resvae.run.checkpoints import AtomicCheckpointIO, CheckpointError, read_checkpoint
from tests.helpers.models import cpu_trainer

TINY_ARCH = dict(depth=28, width=2, latent_dim=8)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers
def smooth_images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Structured uint8 images: 4x4 random colours upsampled bilinearly to size x size."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 4, 4, generator=g)
    big = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return (big * 255).round().clamp(0, 255).to(torch.uint8)


class Repeat:
    """A train loader that yields the same batch `n` times per epoch."""

    def __init__(self, x: torch.Tensor, n: int = 1) -> None:
        self.x, self.n = x, n

    def __iter__(self):
        return iter([self.x] * self.n)

    def __len__(self) -> int:
        return self.n


def make_trainer(max_epochs: int = 1, **kw) -> L.Trainer:
    return cpu_trainer(enable_checkpointing=False, limit_val_batches=0, max_epochs=max_epochs, **kw)


def tiny_arch(**overrides) -> ArchConfig:
    return ArchConfig(**{**TINY_ARCH, **overrides})


def adam(lr: float = 1e-3, **kw) -> partial:
    return partial(torch.optim.Adam, lr=lr, **kw)


def tiny(cls=VAE, *, seed: int = 0, **overrides):
    """A tiny model (depth 28, width 2, 8 latents, Gaussian likelihood, Adam 1e-3, no scheduler),
    its weights drawn after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    kwargs = dict(arch=tiny_arch(), likelihood="gaussian", optimizer=adam(), scheduler=None)
    return cls(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def x_small() -> torch.Tensor:
    return smooth_images(6, seed=1)


# ----------------------------------------------------------------------------- KL
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 7, generator=g, dtype=torch.float64) * 2
    logvar = torch.empty(5, 7, dtype=torch.float64).uniform_(-12, 6, generator=g)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, logvar), ref)
    assert torch.equal(gaussian_kl(torch.zeros(3), torch.zeros(3)), torch.zeros(3))


# ----------------------------------------------------------------------------- VAE loss terms
def spread_vae(seed: int = 0, **kw) -> VAE:
    """A tiny VAE in eval mode whose posterior is far from the prior: at initialisation mu and
    logvar are about 0.02, where KL and log-density mistakes would hide. Per-dimension means
    of about N(0, 1), log-variances in [-3, 1] and head weights x30 (a spread over images of
    about 0.3) expose them."""
    model = tiny(VAE, seed=seed, **kw).eval()
    head = model.net.head[-1]
    d = model.arch.latent_dim
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.mul_(30)
        head.bias[:d] = torch.randn(d, generator=g)
        head.bias[d:] = torch.empty(d).uniform_(-3, 1, generator=g)
    return model


def _posterior_and_noise(model: VAE, x: torch.Tensor, seed: int):
    """The posterior of x and the noise that the objective draws after torch.manual_seed(seed)."""
    mu, logvar = model.objective.posterior(x)
    torch.manual_seed(seed)
    eps = torch.randn_like(mu)
    return mu, logvar, eps


@torch.no_grad()
def test_vae_terms_against_hand_computation(x_small):
    model = spread_vae()
    assert isinstance(model.objective, VAEObjective)
    x = model.to_input(x_small)
    torch.manual_seed(123)
    t = model.objective(x)
    mu, logvar, eps = _posterior_and_noise(model, x, 123)
    assert mu.shape == logvar.shape == (6, 8)
    z = mu + torch.exp(0.5 * logvar) * eps
    params = model.net.decode(z)
    recon = model.likelihood.nll(params, x)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1)

    for v in (t.loss, t.recon, t.kl):
        assert v.shape == (6,)
    torch.testing.assert_close(t.params, params)
    torch.testing.assert_close(t.recon, recon)
    torch.testing.assert_close(t.kl, kl)
    torch.testing.assert_close(t.loss, t.recon + t.kl)
    assert (t.kl > 0).all()
    # beta = 1, no warm-up, no free bits: the objective is the mean negative ELBO
    torch.testing.assert_close(t.objective, recon.mean() + kl.mean())
    # a different noise gives a different reconstruction term (the noise really is used)
    torch.manual_seed(124)
    assert not torch.allclose(model.objective(x).recon, t.recon)


@torch.no_grad()
def test_vae_free_bits_objective_uses_clamped_per_dimension_batch_mean_kl(x_small):
    model = spread_vae()
    x = model.to_input(x_small)
    mu, logvar, eps = _posterior_and_noise(model, x, 5)
    per_dim = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean(0)  # [8]
    free_bits = per_dim.median().item()
    assert (per_dim < free_bits).any() and (per_dim > free_bits).any()  # the clamp bites, partly
    model.objective.free_bits = free_bits
    torch.manual_seed(5)
    t = model.objective(x)
    expected = t.recon.mean() + per_dim.clamp(min=free_bits).sum()
    torch.testing.assert_close(t.objective, expected)
    assert t.objective > t.recon.mean() + per_dim.sum() + 1e-4  # differs from the plain ELBO
    torch.testing.assert_close(t.loss, t.recon + t.kl)  # the reported loss stays the plain ELBO


def test_kl_warmup_weight_and_objective_during_training():
    """With kl_warmup_steps=10 the step-i objective weighs the KL by beta * min(1, (i + 1) / 10)."""
    beta, warm, steps = 0.5, 10, 12
    model = tiny(VAE, beta=beta, kl_warmup_steps=warm)
    no_warmup = tiny(VAE, beta=2.0).objective
    # no warm-up: beta from the first step
    assert no_warmup.kl_weight_at(0) == 2.0 and float(no_warmup.kl_weight) == 2.0
    assert [model.objective.kl_weight_at(s) for s in (0, 4, 9, 50)] == pytest.approx([0.05, 0.25, 0.5, 0.5])
    objective = model.objective
    original = objective.forward
    rows = []

    def recording_forward(x):
        t = original(x)
        rows.append(
            (
                model.global_step,
                float(objective.kl_weight),  # the buffer VAE.on_train_batch_start fills
                t.objective.detach(),
                t.recon.mean().detach(),
                t.kl.mean().detach(),
            )
        )
        return t

    objective.forward = recording_forward
    make_trainer(max_epochs=1).fit(model, train_dataloaders=Repeat(smooth_images(4, seed=3), n=steps))
    assert [r[0] for r in rows] == list(range(steps))
    for step, weight, objective_value, recon, kl in rows:
        expected_weight = beta * min(1.0, (step + 1) / warm)
        assert weight == pytest.approx(expected_weight)
        assert objective.kl_weight_at(step) == pytest.approx(expected_weight)
        torch.testing.assert_close(objective_value, recon + expected_weight * kl)


# ----------------------------------------------------------------------------- importance weighting
def _log_weights(model: VAE, x: torch.Tensor, eps_list):
    """log p(x|z) + log p(z) - log q(z|x) for each noise draw, from torch.distributions."""
    mu, logvar = model.objective.posterior(x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    out = []
    for eps in eps_list:
        z = mu + torch.exp(0.5 * logvar) * eps
        log_px = -model.likelihood.nll(model.net.decode(z), x)
        out.append(log_px + prior.log_prob(z).sum(1) - q.log_prob(z).sum(1))
    return torch.stack(out)  # [K, B]


@torch.no_grad()
def test_nll_iw_single_sample_is_the_monte_carlo_elbo(x_small):
    """With one sample and the noise of the objective's forward, nll_iw = recon + log q(z|x) - log p(z):
    the same reconstruction term as the loss, with the KL estimated from z instead of in closed form."""
    model = spread_vae()
    x = model.to_input(x_small)
    torch.manual_seed(77)
    t = model.objective(x)
    torch.manual_seed(77)
    iw1 = model.objective.nll_iw(x, 1)
    mu, logvar, eps = _posterior_and_noise(model, x, 77)
    log_w = _log_weights(model, x, [eps])[0]
    assert iw1.shape == (6,) and torch.isfinite(iw1).all()
    torch.testing.assert_close(iw1, -log_w)
    z = mu + torch.exp(0.5 * logvar) * eps
    mc_kl = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(iw1, t.recon + mc_kl, rtol=1e-5, atol=1e-2)


@torch.no_grad()
def test_nll_iw_single_sample_is_unbiased_for_the_loss():
    """E[nll_iw(x, 1)] = E[loss]: checked on one image repeated 512 times (independent noises)."""
    model = spread_vae()
    x = model.to_input(smooth_images(1, seed=3).expand(512, -1, -1, -1))
    torch.manual_seed(1)
    diff = model.objective.nll_iw(x, 1) - model.objective(x).loss
    stderr = diff.std() / math.sqrt(diff.numel())
    assert diff.mean().abs() < 4 * stderr + 1e-3, (diff.mean(), stderr)


@torch.no_grad()
def test_nll_iw_k_samples_is_logmeanexp_and_below_the_mean_of_single_sample_bounds(x_small):
    model = spread_vae()
    x = model.to_input(x_small)
    k = 6
    torch.manual_seed(31)
    iw = model.objective.nll_iw(x, k)
    mu, _ = model.objective.posterior(x)
    torch.manual_seed(31)
    eps_list = [torch.randn_like(mu) for _ in range(k)]  # nll_iw draws its K noises in this order
    log_w = _log_weights(model, x, eps_list)  # [K, B]
    assert torch.isfinite(iw).all() and iw.shape == (6,)
    torch.testing.assert_close(iw, -(torch.logsumexp(log_w.double(), 0) - math.log(k)).float())
    single = (-log_w).mean(0)  # the K single-sample bounds, averaged (what nll_iw(x, 1) gives)
    assert (iw <= single + 1e-3).all()  # Jensen: -log mean exp(log w) <= mean(-log w)
    assert (iw < single - 1e-4).any()  # and strictly tighter when the weights differ


# ----------------------------------------------------------------------------- overfitting one batch
def _eval_loss(model, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        return model.objective(model.to_input(x)).loss.mean().item()


# Measured (seed 0, 80 epochs of one 64-image batch, one or two threads): the VAE's eval loss
# falls by about 33% and the AE's by about 30% (the AE's eval curve is the bumpier of the two:
# 14-16% around epoch 50). The margins leave headroom for numerical differences between
# platforms while still failing a model that does not learn.
OVERFIT = [(VAE, 0.15), (AE, 0.20)]


@pytest.mark.slow
@pytest.mark.parametrize("cls, min_drop", OVERFIT, ids=["VAE", "AE"])
def test_overfits_one_batch(cls, min_drop):
    x = smooth_images(64, seed=0)
    torch.manual_seed(0)
    model = cls(
        arch=ArchConfig(depth=28, width=4, latent_dim=16), n_mix=2, optimizer=adam(3e-3), scheduler=None
    )
    before = _eval_loss(model, x)
    model.train()  # Lightning keeps a module's eval mode through fit: batch norm would stay frozen
    make_trainer(max_epochs=80).fit(model, train_dataloaders=Repeat(x))
    after = _eval_loss(model, x)
    assert math.isfinite(after)
    assert int(model.step.skipped) == 0
    drop = 1 - after / before
    assert drop >= min_drop, f"{cls.__name__}: eval loss {before:.0f} -> {after:.0f} ({drop:.1%})"


# ----------------------------------------------------------------------------- guarded steps
class Probe(L.Callback):
    """Records, per training step, whether parameters / optimizer state changed, and counters."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._params = [p.detach().clone() for p in pl_module.parameters()]
        self._state = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params_same = all(torch.equal(a, b) for a, b in zip(self._params, pl_module.parameters()))
        state = trainer.optimizers[0].state_dict()["state"]
        state_same = _states_equal(self._state, state)
        self.rows.append(
            dict(
                params_same=params_same,
                state_same=state_same,
                skipped=int(pl_module.step.skipped),
                consecutive=int(pl_module.step.consecutive),
            )
        )


def _states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        if a[key].keys() != b[key].keys():
            return False
        for name, v in a[key].items():
            w = b[key][name]
            if torch.is_tensor(v) and not torch.equal(v, w):
                return False
            if not torch.is_tensor(v) and v != w:
                return False
    return True


def _poison_nll(model, bad_calls):
    """Make the likelihood's NLL NaN (values and gradients) on the given call indices."""
    original = model.likelihood.nll
    calls = []

    def nll(params, x):
        out = original(params, x)
        i = len(calls)
        calls.append(i)
        return out * float("nan") if i in bad_calls else out

    model.likelihood.nll = nll
    return calls


@pytest.mark.parametrize("fused", [None, False], ids=["fused-device-skip", "host-skip"])
def test_nonfinite_steps_are_skipped(fused):
    optimizer = adam() if fused is None else adam(fused=fused)
    model = tiny(VAE, optimizer=optimizer, train_step=dict(max_consecutive_skips=3, skip_check_every=1))
    _poison_nll(model, bad_calls={1, 2, 4})
    probe = Probe()
    trainer = make_trainer(max_epochs=1, callbacks=[probe])
    trainer.fit(model, train_dataloaders=Repeat(smooth_images(4, seed=2), n=6))
    opt = trainer.optimizers[0]
    assert supports_device_skip(opt) is (fused is None)  # fused Adam is the default on the CPU

    assert [r["params_same"] for r in probe.rows] == [False, True, True, False, True, False]
    assert [r["state_same"] for r in probe.rows][1:] == [True, True, False, True, False]
    assert [r["consecutive"] for r in probe.rows] == [0, 1, 2, 0, 1, 0]
    assert [r["skipped"] for r in probe.rows] == [0, 1, 2, 2, 3, 3]
    assert int(model.step.skipped) == 3 and int(model.step.consecutive) == 0
    # three real updates: Adam's step count says so
    assert all(int(s["step"]) == 3 for s in opt.state_dict()["state"].values())
    # the epoch's training loss ignores the skipped steps
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert float(metrics["train/skipped_steps"]) == 3


@pytest.mark.parametrize(
    "check_every, expected_calls", [(1, 3), (2, 4), (100, 5)], ids=["every-step", "every-2", "epoch-end"]
)
def test_too_many_consecutive_skips_raise(check_every, expected_calls):
    model = tiny(VAE, train_step=dict(max_consecutive_skips=3, skip_check_every=check_every))
    calls = _poison_nll(model, bad_calls=set(range(100)))
    initial = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteTrainingError) as err:
        make_trainer(max_epochs=2).fit(model, train_dataloaders=Repeat(smooth_images(4, seed=2), n=5))
    assert "model.train_step.max_consecutive_skips=3" in str(err.value)
    assert f"{expected_calls} consecutive" in str(err.value)
    assert len(calls) == expected_calls  # it stopped at the first check past the limit
    assert all(torch.equal(a, b) for a, b in zip(initial, model.parameters()))


def _toy_problem(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    return net, x


def _grad_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))


OPTIMIZERS = {
    "adam-fused": lambda p: torch.optim.Adam(p, lr=0.1, fused=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1, fused=True),
    "sgd-fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    "adam-plain": lambda p: torch.optim.Adam(p, lr=0.1, foreach=False, fused=False),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=0.1, foreach=True),
}


def toy_images(x: torch.Tensor) -> torch.Tensor:
    """x [B, 4] -> uint8 images [B, 4, 2, 2] whose to_input() averages back to a function of x."""
    return (x[:, :, None, None].expand(-1, -1, 2, 2).sigmoid() * 255).round().to(torch.uint8)


class InfiniteGradient(torch.autograd.Function):
    """The identity forward, an infinite gradient backward: a finite loss with inf gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def toy_step(net, opt, poison: dict, grad_clip=None, scale: float = 1.0) -> TrainStep:
    """A TrainStep over the toy net; poison["mode"] makes the next closures non-finite."""

    def objective_and_metrics(inputs):
        assert inputs.dtype == torch.float32 and inputs.min() >= -1 and inputs.max() <= 1  # to_input
        out = net(inputs.mean((2, 3)))
        mode = poison.get("mode")
        if mode == "inf-grad-only":
            out = InfiniteGradient.apply(out)
        loss = scale * out.pow(2).sum()
        if mode == "nan-loss-and-grads":
            loss = loss * float("nan")
        elif mode == "inf-loss-only":
            loss = loss + float("inf")
        return loss, torch.stack([loss.detach(), 2 * loss.detach()])

    step = TrainStep(("loss", "double"), grad_clip=grad_clip)
    step.bind(objective_and_metrics, opt)
    return step


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("poison", ["nan-loss-and-grads", "inf-loss-only", "inf-grad-only"])
def test_train_step_skips_nonfinite_updates(name, poison):
    net, x = _toy_problem()
    params = list(net.parameters())
    opt = OPTIMIZERS[name](params)
    assert supports_device_skip(opt) is name.endswith("fused")
    modes: dict = {}
    step = toy_step(net, opt, modes)
    images = toy_images(x)
    updates = []

    def update(closure=None):
        updates.append(1)
        return opt.step(closure)

    step(images, update)  # one good update first, so that the optimizer has state to protect
    assert int(step.skipped) == 0 and float(step.found_inf) == 0.0
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    modes["mode"] = poison
    step(images, update)
    assert int(step.skipped) == 1 and float(step.found_inf) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert _states_equal(state, opt.state_dict()["state"])
    # the fused path always calls the update (the skip happens inside the kernel); the others don't
    assert len(updates) == (2 if name.endswith("fused") else 1)
    assert all(p.grad is None for p in params)  # cleared after each step, skipped or not

    modes.clear()  # and a finite update afterwards goes through
    step(images, update)
    assert int(step.skipped) == 1 and int(step.consecutive) == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, params))


def test_train_step_clips_and_records_the_unclipped_norm():
    net, x = _toy_problem(1)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.0)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(_grad_norm(params)))
    step = toy_step(net, opt, {}, grad_clip=0.5, scale=100.0)
    step(toy_images(x))
    norm = step.means.compute()["grad_norm"].item()
    assert norm > 1.0 and seen[-1] == pytest.approx(0.5, rel=1e-4)  # clipped before the update
    for limit in (None, 0.0):  # no clipping
        unclipped = toy_step(net, opt, {}, grad_clip=limit, scale=100.0)
        unclipped(toy_images(x))
        assert seen[-1] == pytest.approx(norm, rel=1e-5)


def test_device_means_weighted():
    means = DeviceMeans(["a", "b"])
    means.add(torch.tensor([1.0, 2.0]), 2)
    means.add(torch.tensor([4.0, 8.0]), torch.tensor(1.0))
    out = means.compute()
    assert out["a"].item() == pytest.approx((2 * 1 + 4) / 3)
    assert out["b"].item() == pytest.approx((2 * 2 + 8) / 3)
    # a skipped step weighs zero, even with non-finite values
    means.add(torch.tensor([float("nan"), float("inf")]), 0.0)
    means.add(torch.tensor([1e6, -1e6]), torch.tensor(0.0))
    out = means.compute()
    assert out["a"].item() == pytest.approx(2.0) and out["b"].item() == pytest.approx(4.0)
    assert int(means.nonfinite) == 0  # entries of weight 0 are not counted as non-finite
    means.reset()
    assert math.isnan(means.compute()["a"].item())  # nothing counted: no value, never a perfect 0


def test_device_means_nonfinite_entry_of_positive_weight_makes_the_mean_nonfinite():
    """A NaN validation batch makes the epoch mean NaN (never a finite average of the batches that
    happened to be finite) and is counted; a NaN entry of weight 0 changes nothing."""
    means = DeviceMeans(["loss", "kl"])
    means.add(torch.tensor([1.0, 2.0]), 2)
    means.add(torch.tensor([float("nan"), 5.0]), 3)  # one batch whose loss is NaN
    means.add(torch.tensor([4.0, 8.0]), 1)
    out = means.compute()
    assert math.isnan(out["loss"].item())
    assert out["kl"].item() == pytest.approx((2 * 2 + 3 * 5 + 8) / 6)  # the other mean is unaffected
    assert int(means.nonfinite) == 1
    means.add(torch.tensor([float("nan"), float("inf")]), 0.0)  # weight 0: drops out entirely
    assert int(means.nonfinite) == 1
    assert means.compute()["kl"].item() == pytest.approx((2 * 2 + 3 * 5 + 8) / 6)
    means.add(torch.tensor([1.0, float("inf")]), torch.tensor(2.0))  # inf counts as non-finite too
    assert int(means.nonfinite) == 2 and math.isinf(means.compute()["kl"].item())
    means.reset()
    assert int(means.nonfinite) == 0 and float(means.weight) == 0.0
    means.add(torch.tensor([3.0, 6.0]), 1)
    assert means.compute()["loss"].item() == 3.0 and means.compute()["kl"].item() == 6.0


def test_device_means_weight_zero_nan_entry_does_not_change_the_mean():
    means = DeviceMeans(["loss"])
    means.add(torch.tensor([2.0]), 4)
    before = means.compute()["loss"].clone()
    means.add(torch.tensor([float("nan")]), 0)
    means.add(torch.tensor([float("nan")]), torch.tensor(0.0))
    assert torch.equal(means.compute()["loss"], before)
    assert int(means.nonfinite) == 0 and float(means.weight) == 4.0


def test_device_means_persistence():
    assert DeviceMeans(["a"]).state_dict() == {}
    kept = DeviceMeans(["a"], persistent=True)
    kept.add(torch.tensor([float("nan")]), 1)
    state = kept.state_dict()
    assert set(state) == {"sums", "weight", "nonfinite"} and int(state["nonfinite"]) == 1
    restored = DeviceMeans(["a"], persistent=True)
    restored.load_state_dict(state)
    assert int(restored.nonfinite) == 1 and float(restored.weight) == 1.0


@pytest.mark.parametrize("optimizer", ["sgd-host-skip", "adam-fused"])
def test_train_step_counts_skips_and_averages_applied_updates(optimizer):
    """TrainStep: one guarded update per call; skipped updates weigh zero in `means` and count in
    `skipped` / `consecutive`; the counters and sums are persistent buffers."""
    net, x = _toy_problem(2)
    images = toy_images(x)
    if optimizer == "sgd-host-skip":
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=0.01, fused=True)
    poison: dict = {}
    calls = []
    step = toy_step(net, opt, poison)
    assert step.means.names == ("loss", "double", "grad_norm")
    assert {"skipped", "consecutive", "means.sums", "means.weight", "means.nonfinite"} <= set(
        step.state_dict()
    )
    step(images, update=lambda closure=None: calls.append(1) or opt.step(closure))
    first = {k: v.item() for k, v in step.means.compute().items()}
    poison["mode"] = "nan-loss-and-grads"
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(2):
        step(images)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # no update applied
    assert int(step.skipped) == 2 and int(step.consecutive) == 2
    assert {k: v.item() for k, v in step.means.compute().items()} == first  # skipped steps weigh 0
    assert int(step.means.nonfinite) == 0
    assert first["double"] == pytest.approx(2 * first["loss"]) and first["grad_norm"] > 0
    poison.clear()
    step(images)
    assert int(step.skipped) == 2 and int(step.consecutive) == 0
    assert float(step.means.weight) == 2 * len(images)
    assert calls == [1]  # the `update` callable applied the first update
    assert all(p.grad is None for p in net.parameters())  # gradients are cleared after each step


def test_build_optimizer_adds_fused_kernels_only_where_the_config_does_not_decide():
    params = [torch.nn.Parameter(torch.zeros(3))]
    fused = build_optimizer(adam(), params)
    assert fused.param_groups[0]["fused"] is True and supports_device_skip(fused)
    assert build_optimizer(torch.optim.Adam, params).param_groups[0]["fused"] is True  # a bare class
    assert build_optimizer(partial(torch.optim.SGD, lr=0.1), params).param_groups[0]["fused"] is True
    kept = build_optimizer(adam(fused=False), params)  # the config decided: left alone
    assert not kept.param_groups[0]["fused"] and not supports_device_skip(kept)
    plain = build_optimizer(partial(torch.optim.RMSprop, lr=0.1), params)  # no fused kernels
    assert isinstance(plain, torch.optim.RMSprop) and not supports_device_skip(plain)
    assert plain.param_groups[0]["lr"] == 0.1


def test_configure_optimizers_builds_the_factories():
    model = tiny(VAE, optimizer=partial(torch.optim.AdamW, lr=2e-3, weight_decay=0.1))
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["fused"] is True
    assert opt.param_groups[0]["lr"] == 2e-3 and opt.param_groups[0]["weight_decay"] == 0.1
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.parameters()}
    plateau = partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min", factor=0.5, patience=25)
    config = tiny(VAE, scheduler=plateau).configure_optimizers()
    sched = config["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert sched.optimizer is config["optimizer"] and sched.factor == 0.5 and sched.patience == 25
    with pytest.raises(ValueError, match="model.optimizer is not set"):
        tiny(VAE, optimizer=None).configure_optimizers()


# ----------------------------------------------------------------------------- option validation
@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        # the optimizer factory is tried on a dummy parameter at construction: torch's own checks
        (dict(optimizer=adam(-1)), ValueError, ["model.optimizer", "learning rate", "-1"]),
        (dict(optimizer=adam(betas=(1.0, 0.999))), ValueError, ["model.optimizer", "beta", "1.0"]),
        (dict(optimizer=adam(weight_decay=-1)), ValueError, ["model.optimizer", "weight_decay", "-1"]),
        (dict(optimizer=partial(torch.optim.Adam, lrr=1)), ValueError, ["model.optimizer", "lrr"]),
        (dict(beta=-1), ValueError, ["model.beta", ">= 0"]),
        (dict(free_bits=-0.5), ValueError, ["free_bits", ">= 0"]),
        (dict(kl_warmup_steps=-1), ValueError, ["kl_warmup_steps", ">= 0"]),
        (dict(iw_samples=0), ValueError, ["model.iw_samples", ">= 1", "got 0"]),
        (dict(likelihood="poisson"), ValueError, ["'poisson'", "logistic_mixture", "gaussian"]),
        (dict(train_step=dict(grad_clip=-1)), ValueError, ["model.train_step.grad_clip", ">= 0", "-1"]),
        (
            dict(train_step=dict(max_consecutive_skips=0)),
            ValueError,
            ["model.train_step.max_consecutive_skips"],
        ),
        (
            dict(train_step=dict(skip_check_every=0)),
            ValueError,
            ["model.train_step", "skip_check_every", ">= 1"],
        ),
        (dict(train_step=dict(compile="fastest")), ValueError, ["model.train_step.compile", "'fastest'"]),
        (dict(train_step=dict(grad_clp=1.0)), TypeError, ["grad_clp"]),
        (dict(dpeth=28), TypeError, ["dpeth"]),
    ],
)
def test_invalid_options_raise_clear_errors(kwargs, error, fragments):
    with pytest.raises(error) as err:
        tiny(VAE, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_invalid_depth_names_the_nearest_valid_depths():
    """The architecture is an ArchConfig now (Hydra builds it from model.arch): its errors come
    from its construction."""
    with pytest.raises(ValueError) as err:
        tiny(VAE, arch=ArchConfig(depth=50, width=2, latent_dim=8))
    for fragment in ("depth 50", "46", "52"):
        assert fragment in str(err.value), (fragment, str(err.value))


def test_step_options_defaults_and_validation():
    assert tiny(VAE).options == StepOptions()
    assert StepOptions(grad_clip=None).grad_clip is None and StepOptions(grad_clip=0).grad_clip == 0
    model = tiny(VAE, train_step=dict(grad_clip=5.0, skip_check_every=7, channels_last=False))
    assert model.options.grad_clip == 5.0 and model.step.grad_clip == 5.0
    assert model.options.skip_check_every == 7 and model.channels_last is False
    assert tiny(VAE).channels_last is False  # null: channels_last only on CUDA
    assert tiny(VAE, train_step=dict(channels_last=True)).channels_last is True


def test_bad_optimizer_and_scheduler_options_fail_when_the_model_is_built():
    """Checked at construction (by torch, on a throwaway parameter), not after the data loaded."""
    with pytest.raises(ValueError, match="model.scheduler: Factor should be < 1.0"):
        tiny(VAE, scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=1.5))
    with pytest.raises(ValueError, match="model.optimizer: .*lrr"):
        tiny(VAE, optimizer=partial(torch.optim.Adam, lrr=1e-3))


def test_ae_code_momentum_validated():
    with pytest.raises(ValueError, match="model.code_momentum"):
        tiny(AE, code_momentum=0)
    with pytest.raises(ValueError, match="model.code_momentum"):
        tiny(AE, code_momentum=1.5)
    assert isinstance(tiny(AE, code_momentum=1.0).objective, AEObjective)


def test_sample_temperature_zero_is_the_prior_mean_and_negative_is_refused():
    model = spread_vae()
    with pytest.raises(ValueError, match="temperature"):
        model.inference.sample(4, temperature=-1)
    with pytest.raises(ValueError, match="one temperature per latent group needs a hierarchical VAE"):
        model.inference.sample(4, temperature=[1.0, 0.5])
    with pytest.raises(ValueError, match="number of samples"):
        model.inference.sample(0)
    # T = 0 decodes z = 0, the prior's mean: the same images whatever the noise
    a = model.inference.sample(3, 0.0, generator=torch.Generator().manual_seed(1))
    b = model.inference.sample(3, 0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(a, model.inference.decode(torch.zeros(3, *model.latent_shape)))


# ----------------------------------------------------------------------------- inference API
@pytest.fixture(scope="module")
def vae() -> VAE:
    return tiny(VAE).eval()


def test_sample_shape_range_temperature_and_reproducibility(vae):
    s = vae.inference.sample(5, 0.7)
    assert s.shape == (5, 3, 32, 32)
    assert s.min() >= 0 and s.max() <= 1
    a = vae.inference.sample(4, 0.8, generator=torch.Generator().manual_seed(3))
    b = vae.inference.sample(4, 0.8, generator=torch.Generator().manual_seed(3))
    c = vae.inference.sample(4, 0.8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the temperature multiplies the prior's standard deviation
    eps = torch.randn((4, 8), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, vae.inference.decode(0.8 * eps))


def test_reconstruct_uint8_and_float_agree(vae):
    u8 = smooth_images(3, seed=5)
    r1 = vae.inference.reconstruct(u8)
    r2 = vae.inference.reconstruct(u8.float() / 255)
    assert r1.shape == r2.shape == (3, 3, 32, 32)
    assert r1.min() >= 0 and r1.max() <= 1
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vae.to_input(u8), to_signed_unit(u8))
    torch.testing.assert_close(vae.to_input(u8.float() / 255), to_signed_unit(u8), rtol=0, atol=1e-6)


def test_encode_returns_the_latent_shape(vae):
    u8 = smooth_images(3, seed=5)
    z = vae.inference.encode(u8)
    assert z.shape == (3, 8)
    torch.testing.assert_close(z, vae.objective.posterior(vae.to_input(u8))[0])  # the posterior mean
    assert vae.latent_shape == (8,)
    ae = tiny(AE).eval()
    assert ae.inference.encode(u8).shape == (3, 8)
    spatial = tiny(VAE, arch=tiny_arch(latent="spatial")).eval()
    assert spatial.latent_shape == (8, 4, 4)
    assert spatial.inference.encode(u8).shape == (3, 8, 4, 4)
    assert spatial.inference.sample(2).shape == (2, 3, 32, 32)


def test_inference_on_a_loaded_checkpoint_is_batch_independent_and_stateless(tmp_path):
    model = tiny(VAE)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=Repeat(smooth_images(4, seed=6)))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt")
    state = {k: v.clone() for k, v in loaded.state_dict().items()}
    loaded.inference.sample(4)
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(state[k], v)]
    assert changed == []
    eps = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loaded.inference.decode(eps[:1]), loaded.inference.decode(eps)[:1], rtol=1e-4, atol=1e-4
    )


def test_ae_sampling_uses_running_code_statistics():
    ae = tiny(AE).eval()
    c = torch.linspace(-0.5, 0.5, 8)
    ae.objective.code_mean.copy_(c)
    ae.objective.code_var.zero_()
    eps = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    expected = ae.inference.decode(c.expand(5, -1))
    torch.testing.assert_close(ae.inference.decode(ae.inference.latent_from_noise(eps, 1.0)), expected)
    torch.testing.assert_close(ae.inference.sample(5, 1.3), expected)
    # with a variance, the codes are mean + T * std * eps
    ae.objective.code_var.fill_(4.0)
    torch.testing.assert_close(ae.inference.latent_from_noise(eps, 0.5), c + 0.5 * 2.0 * eps)


@torch.no_grad()
def test_ae_running_code_statistics_track_training_codes():
    ae = tiny(AE, code_momentum=1.0)
    objective = ae.objective
    x = ae.to_input(smooth_images(6, seed=8))
    ae.train()
    objective(x)
    z = ae.net.encode(x)  # the same batch in train mode: the same codes
    torch.testing.assert_close(objective.code_mean, z.mean(0))
    torch.testing.assert_close(objective.code_var, z.var(0, unbiased=False))
    before = objective.code_mean.clone()
    ae.eval()
    objective(ae.to_input(smooth_images(6, seed=9)))
    assert torch.equal(objective.code_mean, before)  # evaluation leaves them alone


def test_validate_and_test_report_consistent_metrics():
    model = tiny(VAE, iw_samples=3)
    x = smooth_images(8, seed=4)
    trainer = cpu_trainer()
    val = trainer.validate(model, dataloaders=Repeat(x, 2), verbose=False)[0]
    for key in ("val/loss", "val/recon", "val/kl", "val/bpd", "val/psnr", "val/ssim"):
        assert math.isfinite(val[key]), key
    assert val["val/nonfinite_batches"] == 0
    assert val["val/loss"] == pytest.approx(val["val/recon"] + val["val/kl"], rel=1e-5)
    assert val["val/bpd"] == pytest.approx(val["val/loss"] / (3 * 32 * 32 * math.log(2)), rel=1e-5)
    # image scores: torchmetrics' own modules over the validation's reconstructions
    model.eval()  # as validation ran it
    scored = evaluate_batch(model.objective, model.to_input(x))
    model.train()
    psnr, ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
    assert val["val/psnr"] == pytest.approx(psnr(scored.reconstruction, scored.target).item(), rel=1e-5)
    assert val["val/ssim"] == pytest.approx(ssim(scored.reconstruction, scored.target).item(), rel=1e-5)
    test = trainer.test(model, dataloaders=Repeat(x, 2), verbose=False)[0]
    assert test["test/bpd"] == pytest.approx(test["test/loss"] / (3072 * math.log(2)), rel=1e-5)
    assert math.isfinite(test["test/nll_iw"])
    assert test["test/nonfinite_batches"] == 0


def test_a_nan_validation_batch_makes_val_loss_nan_and_is_counted():
    """One batch whose loss is NaN: val/loss is NaN (not the mean of the finite batches) and
    val/nonfinite_batches is 1; the next validation starts afresh. The same holds for test."""
    model = tiny(VAE, iw_samples=2)
    calls = _poison_nll(model, bad_calls={1})  # the second validation batch
    data = SyntheticDataModule(train_size=20, test_size=8, val_size=12, batch_size=4, seed=1)
    trainer = cpu_trainer()
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    assert len(calls) == 3  # three validation batches of four images
    assert math.isnan(val["val/loss"]) and math.isnan(val["val/recon"]) and math.isnan(val["val/bpd"])
    assert math.isfinite(val["val/kl"])  # only the poisoned term is non-finite
    assert val["val/nonfinite_batches"] == 1
    again = trainer.validate(model, datamodule=data, verbose=False)[0]  # calls 3..5: all finite
    assert math.isfinite(again["val/loss"]) and again["val/nonfinite_batches"] == 0

    calls.clear()  # test: 1 + iw_samples NLL calls per batch; call 1 is the first batch's nll_iw
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    assert len(calls) == 2 * 3  # two test batches
    assert math.isnan(test["test/nll_iw"]) and math.isnan(test["test/bpd_iw"])
    assert math.isfinite(test["test/loss"])
    assert test["test/nonfinite_batches"] == 1


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = tiny(VAE, beta=0.7)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=Repeat(smooth_images(4, seed=6), n=2))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    ckpt = read_checkpoint(path)  # weights_only=True
    info = ckpt["resvae"]
    assert info["model_class"] == "VAE" and info["arch_class"] == "ArchConfig"
    assert info["likelihood"] == "gaussian" and info["valid_bpd"] is True
    assert info["n_mix"] == 10 and info["hparams"] == dict(model.hparams)
    arch = info["arch"]
    assert arch["depth"] == 28 and arch["width"] == 2 and arch["latent_dim"] == 8
    assert list(arch["blocks"]) == [1, 1, 1, 1]
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])

    for loaded in (
        load_model(path),  # from the checkpoint alone
        VAE.load_from_checkpoint(path, map_location="cpu", arch=model.arch),  # Lightning's loader
    ):
        assert isinstance(loaded, VAE)
        assert dict(loaded.hparams) == dict(model.hparams)
        assert loaded.hparams.beta == 0.7 and loaded.objective.beta == 0.7
        assert asdict(loaded.arch) == asdict(model.arch)
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_ae_checkpoint_loads_with_its_code_statistics(tmp_path):
    model = tiny(AE, n_mix=3, likelihood="logistic_mixture", code_momentum=0.5)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=Repeat(smooth_images(4, seed=6), n=2))
    assert not torch.equal(model.objective.code_mean, torch.zeros(8))  # training moved them
    trainer.save_checkpoint(tmp_path / "ae.ckpt")
    info = read_checkpoint(tmp_path / "ae.ckpt")["resvae"]
    assert info["model_class"] == "AE" and info["valid_bpd"] is False  # reconstruction only
    assert info["likelihood"] == "logistic_mixture" and info["n_mix"] == 3
    loaded = load_model(tmp_path / "ae.ckpt")
    assert isinstance(loaded, AE) and loaded.objective.code_momentum == 0.5
    assert torch.equal(loaded.objective.code_mean, model.objective.code_mean)
    assert torch.equal(loaded.objective.code_var, model.objective.code_var)
    eps = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loaded.inference.decode(loaded.inference.latent_from_noise(eps)),
        model.inference.decode(model.inference.latent_from_noise(eps)),
    )


def test_checkpoint_written_by_fit_loads_safely_and_rebuilds_the_trained_model(tmp_path):
    """A real Lightning checkpoint (optimizer, scheduler, loops, callback states) reads with
    weights_only=True, and load_model rebuilds a model that computes what the trained one does."""
    model = tiny(VAE, scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=2))
    data = SyntheticDataModule(train_size=24, test_size=4, val_size=8, batch_size=8, seed=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_last=True)
    trainer = cpu_trainer(max_epochs=2, callbacks=[checkpoint], plugins=[AtomicCheckpointIO()])
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 4
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = read_checkpoint(tmp_path / name)
        assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "resvae"} <= set(
            ckpt
        )
    loaded = load_model(tmp_path / "last.ckpt")
    assert isinstance(loaded, VAE) and not loaded.training
    assert dict(loaded.hparams) == dict(model.hparams) and loaded.arch == model.arch
    assert loaded.optimizer_factory is None  # rebuilt for inference: no optimizer to resume
    with pytest.raises(ValueError, match="model.optimizer is not set"):
        loaded.configure_optimizers()
    model.eval()
    images = smooth_images(5, seed=11)
    torch.testing.assert_close(
        loaded.inference.encode(images), model.inference.encode(images), rtol=0, atol=0
    )
    torch.testing.assert_close(
        loaded.inference.reconstruct(images), model.inference.reconstruct(images), rtol=0, atol=0
    )
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(
        loaded.inference.sample(3, generator=g), model.inference.sample(3, generator=g.manual_seed(5))
    )
    x = model.to_input(images)
    torch.manual_seed(3)
    expected = model.objective(x).loss
    torch.manual_seed(3)
    torch.testing.assert_close(loaded.objective(x).loss, expected, rtol=0, atol=0)


def test_compiling_keeps_the_checkpoint_keys_of_a_plain_model():
    """torch.compile of a module renames its state (`_orig_mod.`); the suite compiles the
    objective's functions instead, so a checkpoint of a compiled run loads into a plain model."""
    model = tiny(VAE, train_step={"compile": "default", "compile_eval": "default"})
    before = set(model.state_dict())
    model.forward_fn = CompiledOrEager(model.objective.objective_and_metrics, "default")
    model.eval_fn = CompiledOrEager(model.objective.evaluate, "default")
    assert set(model.state_dict()) == before and not any("_orig_mod" in k for k in before)


def test_foreign_checkpoints_are_refused(tmp_path):
    model = tiny(VAE)
    with pytest.raises(ValueError, match="not a resvae checkpoint"):
        model.on_load_checkpoint({"state_dict": model.state_dict()})
    model.on_load_checkpoint({"state_dict": {}, "resvae": {"model_class": "VAE"}})  # accepted

    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=Repeat(smooth_images(4, seed=6)))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    ckpt = read_checkpoint(path)
    del ckpt["resvae"]
    foreign = tmp_path / "foreign.ckpt"
    torch.save(ckpt, foreign)
    with pytest.raises(ValueError, match="not a resvae checkpoint"):
        VAE.load_from_checkpoint(foreign, map_location="cpu", arch=model.arch)
    for load in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="not a resvae checkpoint"):
            load(foreign)


def test_unreadable_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    model = tiny(VAE)
    good = tmp_path / "good.ckpt"
    torch.save({"resvae": {"model_class": "VAE"}, "state_dict": model.state_dict()}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for load in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="truncated"):
            load(truncated)
    unknown = tmp_path / "unknown.ckpt"
    torch.save({"resvae": {"model_class": "GAN", "arch": asdict(model.arch)}, "state_dict": {}}, unknown)
    with pytest.raises(CheckpointError, match="GAN") as err:
        load_model(unknown)
    assert all(name in str(err.value) for name in MODELS)
    edited = tmp_path / "edited.ckpt"  # weights that do not fit the model the checkpoint describes
    info = {"model_class": "VAE", "arch": asdict(model.arch), "hparams": dict(model.hparams)}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("objective.net.head.")}
    torch.save({"resvae": info, "state_dict": {**state, "stray.weight": torch.zeros(1)}}, edited)
    with pytest.raises(CheckpointError, match="does not fit its own model description") as err:
        load_model(edited)
    assert "objective.net.head" in str(err.value) and "stray.weight" in str(err.value)


def _leave_marker(path: str) -> None:
    Path(path).write_text("code from a checkpoint ran")


class _Payload:
    """Unpickles by calling _leave_marker(marker): a checkpoint that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_a_checkpoint_whose_pickle_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    model = tiny(VAE)
    crafted = tmp_path / "crafted.ckpt"
    info = {"model_class": "VAE", "arch_class": "ArchConfig", "arch": asdict(model.arch)}
    torch.save({"resvae": info, "state_dict": model.state_dict(), "extra": _Payload(marker)}, crafted)
    for load in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="refused") as err:
            load(crafted)
        assert str(crafted) in str(err.value)
        assert not marker.exists()
    # the payload is real: an unsafe load runs it
    torch.load(crafted, map_location="cpu", weights_only=False)
    assert marker.read_text() == "code from a checkpoint ran"
