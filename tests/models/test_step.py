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

from resvae.models import VAE
from resvae.run.numerics import set_float32_precision
from tests.helpers.models import cpu_trainer, python_bound_vae, tiny_data


def gpu_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        **{
            "accelerator": "gpu", "devices": 1, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "precision": "32-true", **kwargs,
        }
    )  # fmt: skip


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


CAPTURE = [
    pytest.param("none", id="eager"),
    pytest.param("cuda_graph", id="captured", marks=pytest.mark.gpu),  # skipped without CUDA
]


@pytest.mark.parametrize("kl_warmup_steps", [0, 50], ids=["no-warmup", "kl-warmup"])
@pytest.mark.parametrize("capture", CAPTURE)
def test_at_most_8_ops_per_step_run_outside_the_capturable_closure(
    one_thread, capture: str, kl_warmup_steps: int
) -> None:
    model = python_bound_vae(kl_warmup_steps=kl_warmup_steps, capture=capture)
    mode = OpsOutside()

    def flagged(run):
        def call(images):
            mode.inside = True
            try:
                return run(images)
            finally:
                mode.inside = False

        return call

    model.step.closure = flagged(model.step.closure)
    first, last = 4, 14  # the windows batch_start(k) -> batch_start(k + 1): steady state, no epoch end

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == first and capture == "cuda_graph":  # captured at batch 0: count its replays
                assert pl_module.step.graphed is not None, "the step was not captured"
                pl_module.step.graphed = flagged(pl_module.step.graphed)
            mode.counting = first <= batch_idx < last

    settings = dict(max_epochs=1, limit_train_batches=20, limit_val_batches=0, num_sanity_val_steps=0)
    make = cpu_trainer if capture == "none" else gpu_trainer
    trainer = make(callbacks=[Window()], **settings)
    with mode:
        trainer.fit(model, datamodule=tiny_data())
    per_step = sum(mode.ops.values()) / (last - first)
    print(f"ops outside the closure per step: {per_step:g} {dict(mode.ops)}")  # -s shows it
    assert per_step <= 8, dict(mode.ops)
    # what is left: the batch gather, the fused optimizer's update and its profiler marks (and
    # with a KL warm-up, the one fill_ of the KL weight)
    assert mode.ops["aten._fused_adam_.default"] == last - first
    assert mode.ops["aten.fill_.Scalar"] == (last - first if kl_warmup_steps else 0)
    assert not any("flip" in op or "rand" in op for op in mode.ops), "the flips belong in the closure"
    assert 0 < float(model.objective.kl_weight) <= 1


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


class Recorder:
    """Copies each step's flipped input and reparameterisation noise into tensors a CUDA graph
    replay overwrites, and multiplies the encoder's input by `scale` (1, or NaN to force a
    non-finite step); all of it inside the closure, so a captured step does it on every replay."""

    def __init__(self, model: VAE) -> None:
        self.x: torch.Tensor | None = None
        self.eps: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None  # made on the model's device when training starts
        net, objective = model.objective.net, model.objective
        encode = net.encode

        def recording_encode(x):
            if torch.is_grad_enabled():  # training steps only, not validation
                self.x = self._keep(self.x, x)
            return encode(x * self.scale)

        def reparameterize(mu, logvar):  # VAEObjective.reparameterize, its noise kept
            eps = torch.randn_like(mu)
            if torch.is_grad_enabled():
                self.eps = self._keep(self.eps, eps)
            return mu + torch.exp(0.5 * logvar) * eps

        net.encode, objective.reparameterize = recording_encode, reparameterize

    @staticmethod
    def _keep(store: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        """Allocated once, by the first (eager) warm-up step; copied into afterwards, so that the
        graph writes into the same tensor at every replay (all training batches are full)."""
        return value.detach().clone() if store is None else store.copy_(value.detach())


class Schedule(L.Callback):
    """Forces a NaN step at global batch `bad` and records learning rates and KL weights."""

    def __init__(self, recorder: Recorder, bad: int) -> None:
        self.recorder, self.bad, self.seen = recorder, bad, 0
        self.lrs: list[float] = []
        self.kl_weights: list[float] = []
        self.draw_sums: list[tuple[float, float]] = []  # each step's flipped input and noise, summed
        self.step_means: list[torch.Tensor] = []  # each step's loss terms and gradient norm
        self._sums, self._weight = torch.zeros(0), 0.0  # DeviceMeans' after the previous step

    def on_fit_start(self, trainer, pl_module):
        self.recorder.scale = torch.ones((), device=pl_module.device)
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.recorder.scale.fill_(float("nan") if self.seen == self.bad else 1.0)
        self.seen += 1
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.kl_weights.append(float(pl_module.objective.kl_weight))  # this syncs (test only)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        x, eps = self.recorder.x, self.recorder.eps  # this step's, also when a graph wrote them
        self.draw_sums.append((float(x.double().sum()), float(eps.double().sum())))  # syncs (test only)
        # the step's batch means (DeviceMeans' sums grow by means * batch; reset at epoch ends)
        sums, weight = pl_module.step.means.sums.detach().cpu(), float(pl_module.step.means.weight)
        before, weight_before = (self._sums, self._weight) if batch_idx else (torch.zeros_like(sums), 0.0)
        added = weight - weight_before
        self.step_means.append((sums - before) / added if added else torch.full_like(sums, float("nan")))
        self._sums, self._weight = sums.clone(), weight

    def on_train_end(self, trainer, pl_module):
        """The final state, then (captured runs) two replays of one batch; here, because the
        module leaves the GPU when fit() ends and a graph must not replay after that."""
        self.state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        self.draws = []
        graphed = pl_module.step.graphed
        if graphed is not None:
            images = graphed.static_images.clone()
            for _ in range(2):
                graphed(images)
                self.draws.append((self.recorder.x.clone(), self.recorder.eps.clone()))


def update_mismatch(eager: Schedule, other: Schedule) -> tuple[float, float, str]:
    """How far two runs' updates of the network's weights (final minus initial) differ, relative to
    the eager run's: over all weights together, and the worst tensor (its gap over its own update,
    plus a millionth of the weight for tensors that barely move), with that tensor's name.
    Scale-free: float rounding gives about 1e-6, a wrong update (a stale input, a lost step, other
    noise) about 1, for the whole network or for the one tensor it touches."""
    keys = [
        k for k, v in eager.initial.items()
        if k.startswith("objective.net.") and "running_" not in k and v.is_floating_point()
    ]  # fmt: skip  # the weights only: no counters, sums or BatchNorm statistics
    moved = {k: eager.state[k] - eager.initial[k] for k in keys}
    gaps = {k: other.state[k] - other.initial[k] - moved[k] for k in keys}
    total = (
        torch.cat([g.flatten() for g in gaps.values()]).norm()
        / torch.cat([m.flatten() for m in moved.values()]).norm()
    )
    ratios = {
        k: (gaps[k].norm() / (moved[k].norm() + 1e-6 * eager.initial[k].norm() + 1e-12)).item() for k in keys
    }
    worst = max(ratios, key=ratios.get)
    return total.item(), ratios[worst], worst


def train_recorded(capture: str, scheduler: str, accelerator: str = "gpu") -> tuple[VAE, Schedule]:
    """60 steps (5 epochs of 12) with BatchNorm, flips, a KL warm-up, a learning rate that changes
    every epoch and one forced non-finite step, under SGD with momentum: linear in the gradients,
    so float rounding stays rounding (Adam's normalised first steps turn a rounding difference of
    a near-zero gradient into a whole step of the learning rate)."""
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.conv.fp32_precision
    set_float32_precision("highest")  # IEEE float32: TF32 rounding would differ between algorithms
    try:
        model = python_bound_vae(
            kl_warmup_steps=30, scheduler=SCHEDULERS[scheduler], capture=capture,
            optimizer=partial(torch.optim.SGD, lr=1e-5, momentum=0.9),
        )  # fmt: skip
        schedule = Schedule(Recorder(model), bad=17)
        trainer = gpu_trainer(
            max_epochs=5, limit_train_batches=12, limit_val_batches=1, callbacks=[schedule],
            accelerator=accelerator,
        )  # fmt: skip
        # batches of 16: two replays flip the same images with probability 2**-16
        trainer.fit(model, datamodule=tiny_data(flip=True, batch_size=16, train_size=224, val_size=32))
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.conv.fp32_precision = conv
    return model, schedule


def first_step_apart(eager: Schedule, other: Schedule, names: tuple[str, ...], rtol: float = 1e-4) -> str:
    """Where two runs' per-step loss terms and gradient norms first differ beyond rounding: tells a
    wrong first gradient (step 0) from a drift that grows, when the final updates differ."""
    for i, (a, b) in enumerate(zip(eager.step_means, other.step_means)):
        apart = ~torch.isclose(a, b, rtol=rtol, atol=0.0, equal_nan=True)
        if apart.any():
            values = ", ".join(f"{n} {x:.7g} vs {y:.7g}" for n, x, y, d in zip(names, a, b, apart) if d)
            return f"first apart at step {i} of {len(eager.step_means)}: {values}"
    return "per-step loss terms and gradient norms agree at every step"


SCHEDULERS = {
    # mode="max" on a falling loss: no epoch "improves", so the rate halves after each validation
    "plateau": partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max", patience=0, factor=0.5),
    "cosine": partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=5),
}


@pytest.mark.gpu
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_a_captured_step_trains_like_the_eager_one(scheduler) -> None:
    """On a GPU: the step is really captured, draws the eager run's flips and noise at every
    step, follows the learning rate and the KL weight, skips the same step, and makes the eager
    run's updates (same seed, same batches) up to float rounding."""
    from resvae.models.capture import GraphedClosure

    runs = []
    for capture in ("none", "none", "cuda_graph"):
        model, schedule = train_recorded(capture, scheduler)
        assert model.step.flip and len(schedule.lrs) == 60
        assert isinstance(model.step.graphed, GraphedClosure) is (capture == "cuda_graph"), "not captured"
        assert int(model.step.skipped) == 1 and int(model.step.consecutive) == 0
        assert len(set(schedule.lrs)) >= 3, schedule.lrs  # the rate changed, and the graph followed
        assert schedule.kl_weights[0] < schedule.kl_weights[20] < schedule.kl_weights[-1] == 1.0
        assert all(torch.isfinite(v).all() for k, v in schedule.state.items() if "running_" in k)
        runs.append(schedule)
    eager, again, captured = runs
    differ = [i for i, (a, b) in enumerate(zip(eager.draw_sums, captured.draw_sums)) if a != b]
    assert not differ, (
        f"steps {differ[:5]} (of 60): the captured step flipped other images or drew other noise "
        f"than the eager one (sums {eager.draw_sums[differ[0]]} vs {captured.draw_sums[differ[0]]})"
    )
    floor, gap = update_mismatch(eager, again), update_mismatch(eager, captured)
    first = first_step_apart(eager, captured, names=model.step.means.names)
    assert floor[0] < 1e-3 and floor[1] < 1e-2, f"two eager runs' updates differ: {floor}"
    assert gap[0] <= max(10 * floor[0], 1e-3) and gap[1] <= max(10 * floor[1], 1e-2), (
        f"captured vs eager updates (all weights, worst tensor): {gap}; eager vs eager: {floor}; {first}"
    )
    for key, value in eager.state.items():
        if "running_" in key:  # BatchNorm's statistics: averages, not chaotic
            torch.testing.assert_close(
                captured.state[key], value, rtol=1e-3, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
            )
    schedule = captured
    (x1, eps1), (x2, eps2) = schedule.draws  # the captured run's two replays of one batch
    assert not torch.equal(x1, x2), "the replays flipped the same images"
    assert not torch.equal(eps1, eps2), "the replays drew the same noise"
