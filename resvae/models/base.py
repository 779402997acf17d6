"""The Lightning shell around a pure-torch objective: optimiser, epoch metrics, checkpoints.

The maths lives in `objectives.py` (losses) and `step.py` (the guarded update); this module
wires them to Lightning's hooks. The training step runs without host synchronisation: sums and
counters stay on the device and are read once per epoch, and once every
`train_step.skip_check_every` steps to stop a run whose updates keep being skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from resvae import metrics as keys
from resvae.models.capture import capture_step
from resvae.models.compiled import AUTO, COMPILE_MODES, CUDA_GRAPH_MODES, CompiledOrEager, resolve_mode
from resvae.models.diagnostics import PosteriorStats
from resvae.models.evaluation import evaluate_batch
from resvae.models.inference import Inference
from resvae.models.likelihoods import bits_per_dim
from resvae.models.objectives import LatentObjective
from resvae.models.step import DeviceMeans, TrainStep
from resvae.nn import count_parameters
from resvae.run.checkpoints import CHECKPOINT_TAG

OptimizerFactory = Callable[..., torch.optim.Optimizer]
CAPTURE_MODES = ("none", "cuda_graph")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16}
# fp16 AMP needs GradScaler, whose own inf check and found_inf handling (Lightning's
# MixedPrecision.optimizer_step) run after our closure: the closure would clip scaled gradients
# and GradScaler deletes the optimizer's found_inf, which our device skip relies on.
UNSUPPORTED_PRECISION = ("16-mixed", "16")
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates were skipped because the loss or gradients were not finite."""


@dataclass(frozen=True)
class StepOptions:
    """`model.train_step`: how updates are made (not what is learned)."""

    grad_clip: float | None = 200.0  # max gradient norm; null or 0 disables clipping
    skip_threshold: float | None = None  # skip an update whose gradient norm is above it (VDVAE)
    max_consecutive_skips: int = 50  # stop the run after this many skipped updates in a row
    skip_check_every: int = 100  # steps between the host reads of the skip counter
    compile: str = "none"  # torch.compile mode of the training forward (see compiled.py)
    compile_eval: str = "none"  # torch.compile mode of validation's forward; auto: see compiled.py
    capture: str = "none"  # cuda_graph: replay the whole step's closure as a CUDA graph (capture.py)
    channels_last: bool | None = None  # null: True on CUDA (tensor-core convolutions)

    def __post_init__(self) -> None:
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"model.train_step.grad_clip must be >= 0 or null, got {self.grad_clip}")
        if self.skip_threshold is not None and not self.skip_threshold > 0:
            raise ValueError(
                f"model.train_step.skip_threshold must be > 0 or null, got {self.skip_threshold}"
            )
        if self.max_consecutive_skips < 1 or self.skip_check_every < 1:
            raise ValueError("model.train_step.max_consecutive_skips and skip_check_every must be >= 1")
        if self.capture not in CAPTURE_MODES:
            raise ValueError(
                f"unknown model.train_step.capture {self.capture!r}; choose one of {', '.join(CAPTURE_MODES)}"
            )
        for name, modes in (("compile", COMPILE_MODES), ("compile_eval", (*COMPILE_MODES, AUTO))):
            if (value := getattr(self, name)) not in modes:
                choices = ", ".join(modes)
                raise ValueError(f"unknown model.train_step.{name} {value!r}; choose one of {choices}")
        if self.capture == "cuda_graph" and self.compile in CUDA_GRAPH_MODES:
            raise ValueError(
                f"model.train_step.compile={self.compile} records its own CUDA graphs, which cannot run "
                "inside model.train_step.capture=cuda_graph: set model.train_step.compile=default "
                "(or max-autotune-no-cudagraphs), or model.train_step.capture=none"
            )


def build_optimizer(factory: OptimizerFactory, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """`factory(params)`, with fused kernels where the optimizer has them and the config does not
    decide: fused Adam/AdamW/SGD skip a non-finite update on the device (see step.py)."""
    given = getattr(factory, "keywords", {})  # a functools.partial from a `_partial_: true` node
    target = getattr(factory, "func", factory)
    fusable = "fused" in inspect.signature(target).parameters
    if fusable and "fused" not in given and all(p.device.type in ("cpu", "cuda") for p in params):
        return factory(params, fused=True)
    return factory(params)


class LatentModel(L.LightningModule):
    def __init__(
        self,
        *,
        objective: LatentObjective,
        arch: Any,
        optimizer: OptimizerFactory | None,
        scheduler: SchedulerFactory | None,
        train_step: Mapping[str, Any] | None,
        iw_samples: int,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the guarded step needs the update in our hands
        # plain values only (they go into checkpoints, which load with weights_only=True);
        # the architecture is kept in the checkpoint's resvae entry instead
        # logger=False: resvae-train logs the whole config to W&B once (no top-level duplicates)
        self.save_hyperparameters(ignore=["objective", "arch", "optimizer", "scheduler"], logger=False)
        if iw_samples < 1:
            raise ValueError(f"model.iw_samples must be >= 1, got {iw_samples}")
        if optimizer is not None:  # a bad optimizer setting fails now, not after data loading
            try:
                optimizer([torch.nn.Parameter(torch.zeros(1))])
            except (TypeError, ValueError) as err:
                raise ValueError(f"model.optimizer: {err}") from err
        if scheduler is not None:
            try:
                scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
            except (TypeError, ValueError) as err:
                raise ValueError(f"model.scheduler: {err}") from err
        self.arch = arch
        self.objective = objective
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.options = StepOptions(**(train_step or {}))
        self.iw_samples = iw_samples
        names = objective.metric_names
        self.step = TrainStep(names, self.options.grad_clip, self.options.skip_threshold)
        self.val_means = DeviceMeans(names)
        self.test_means = DeviceMeans((*names, "nll_iw"))
        self.val_posterior = PosteriorStats()  # active units and KL per latent dimension
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        # the mean of the per-image SSIM that evaluate_batch computes (not a second SSIM per batch);
        # nan_strategy=disable: no host sync per batch, a NaN propagates
        self.val_ssim = MeanMetric(nan_strategy="disable")
        self.image_dims = arch.in_channels * arch.image_size**2
        self.forward_fn = CompiledOrEager(objective.objective_and_metrics, "none")
        self.eval_fn = CompiledOrEager(objective.evaluate, "none")
        self._optimizer: Any = None  # Lightning's wrapper: its step() also counts global_step
        self._capture_tried = False

    # ----------------------------------------------------------------- what the network is
    @property
    def net(self) -> torch.nn.Module:
        return self.objective.net

    @property
    def likelihood(self) -> Any:
        return self.objective.likelihood

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.objective.latent_shape

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    @property
    def bpd_is_likelihood(self) -> bool:
        """Whether bits/dim is a code length of the data (a VAE under a discrete likelihood)."""
        return self.likelihood.valid_bpd and self.objective.has_posterior

    def shape_signature(self) -> dict[str, Any]:
        """What fixes the shapes of the weights: architecture and likelihood."""
        return {**asdict(self.arch), "likelihood": self.likelihood.name, "n_mix": self.hparams.get("n_mix")}

    @property
    def channels_last(self) -> bool:
        setting = self.options.channels_last
        return self.device.type == "cuda" if setting is None else bool(setting)

    # ----------------------------------------------------------------- inference
    @property
    def inference(self) -> Inference:
        """Sampling, reconstructions, the ELBO of images: the model's public inference API."""
        return Inference(self.objective, self.bpd_is_likelihood, self.channels_last)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> float [-1, 1] on the model's device."""
        return self.objective.to_input(images.to(self.device), self.channels_last)

    # ----------------------------------------------------------------- training
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("model.optimizer is not set: this model was built for inference only")
        opt = build_optimizer(self.optimizer_factory, [p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return opt
        # stepped by hand (manual optimisation): ReduceLROnPlateau on val/loss, others per epoch
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt)}}

    def on_fit_start(self) -> None:
        self.check_trainer(str(self.trainer.precision), self.trainer.world_size)
        datamodule = getattr(self.trainer, "datamodule", None)
        self.check_data_shape(datamodule)
        self.step.flip = bool(getattr(datamodule, "flip", False))  # the data's augmentation
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.forward_fn = CompiledOrEager(
            self.objective.objective_and_metrics, self.options.compile, "training forward"
        )
        eval_mode = resolve_mode(self.options.compile_eval, self.device)  # auto: none on a CPU
        self.eval_fn = CompiledOrEager(self.objective.evaluate, eval_mode, "validation forward")

    def check_trainer(self, precision: str, world_size: int) -> None:
        """Refuse, in one line each, the trainer settings the guarded step cannot run correctly."""
        if precision in UNSUPPORTED_PRECISION:
            raise ValueError(
                f"trainer.precision={precision} is not supported: fp16 needs loss scaling, which the "
                "guarded training step does not do; use trainer.precision=bf16-mixed (GPU) or 32-true"
            )
        if world_size > 1 and self.options.capture == "cuda_graph":
            raise ValueError(
                f"model.train_step.capture=cuda_graph cannot run under DDP ({world_size} processes): the "
                "gradient all-reduce happens outside the graph; set model.train_step.capture=none"
            )

    def on_train_start(self) -> None:
        self._optimizer = self.optimizers()
        self.step.bind(
            self.forward_fn,
            self._optimizer.optimizer,
            self.channels_last,
            buffers=list(self.objective.buffers()),  # BatchNorm statistics etc.: kept on a skipped step
            backward=self.manual_backward,  # DDP's reducer and the precision plugin see the backward
        )
        self._capture_tried = False
        sched = self.lr_schedulers()
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = max(1, self.trainer.max_epochs or 1)  # a resumed run may have a new max

    def check_data_shape(self, datamodule: Any) -> None:
        """A clear error when the data's images are not the shape the network was built for."""
        shape = getattr(datamodule, "image_shape", None)
        want = (self.arch.in_channels, self.arch.image_size, self.arch.image_size)
        if shape is not None and tuple(shape) != want:
            raise ValueError(
                f"the data's images are {list(shape)} (channels, height, width) but the model is "
                f"built for {list(want)}: set model.arch.image_size={shape[-1]} and "
                f"model.arch.in_channels={shape[0]} to match the data"
            )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        if self.options.capture == "cuda_graph" and not self._capture_tried:
            self._capture_tried = True
            capture_step(self.step, batch, [self.objective], AUTOCAST.get(str(self.trainer.precision)))
        self.step(batch, update=self._optimizer.step)
        if (batch_idx + 1) % self.options.skip_check_every == 0:
            self._raise_if_diverged()

    def _raise_if_diverged(self) -> None:
        n = int(self.step.consecutive)  # this syncs: once every skip_check_every steps
        if n >= self.options.max_consecutive_skips:
            raise NonFiniteTrainingError(
                f"{n} consecutive updates had a non-finite loss or gradient (or one above "
                "model.train_step.skip_threshold) and were skipped "
                f"(limit model.train_step.max_consecutive_skips={self.options.max_consecutive_skips}); "
                "training stopped. The last good checkpoint is kept. Lower model.optimizer.lr, set "
                "model.train_step.grad_clip, or check the data."
            )

    def on_train_epoch_end(self) -> None:
        # reset after reading, not at epoch start: a run resumed mid-epoch keeps its partial sums
        self._over_ranks(self.step.means)
        applied = float(self.step.means.weight)  # this syncs: once per epoch
        means = self.step.means.compute()
        self.log_dict({keys.of("train", k): v for k, v in means.items()})
        self.log(keys.TRAIN_SKIPPED, self.step.skipped.float())
        self.step.means.reset()
        self._raise_if_diverged()
        if applied == 0 and self.trainer.num_training_batches:
            raise NonFiniteTrainingError(
                f"no update of epoch {self.current_epoch} was applied: every one had a non-finite loss or "
                "gradient and was skipped; training stopped (the last good checkpoint is kept). Lower "
                "model.optimizer.lr, set model.train_step.grad_clip, or check the data."
            )
        sched = self.lr_schedulers()
        if sched is not None and not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step()

    # ----------------------------------------------------------------- validation and test
    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()
        self.val_posterior.reset()
        self.val_psnr.reset()
        self.val_ssim.reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x = self.to_input(batch)
        scored = evaluate_batch(self.objective, x, scores=self.eval_fn)
        self.val_means.add(scored.means(self.objective.metric_names), x.shape[0])
        if scored.mu is not None and scored.logvar is not None:
            self.val_posterior.update(scored.mu, scored.logvar)
        self.val_psnr.update(scored.reconstruction, scored.target)  # one MSE over the whole split
        self.val_ssim.update(scored.per_image["ssim"])

    def _over_ranks(self, means: DeviceMeans) -> None:
        """Under data parallelism each rank saw a shard: sum the ranks' running sums (this syncs),
        so the logged means, the scheduler, checkpointing and summary.json see the whole split."""
        if self.trainer.world_size > 1:
            means.total(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))

    def on_validation_epoch_end(self) -> None:
        self._over_ranks(self.val_means)
        means = self.val_means.compute()
        metrics = {keys.of("val", k): v for k, v in means.items()}
        metrics[keys.VAL_BPD] = bits_per_dim(means["loss"], self.image_dims)
        metrics[keys.VAL_PSNR] = self.val_psnr.compute()
        metrics[keys.VAL_SSIM] = self.val_ssim.compute()
        metrics[keys.VAL_NONFINITE] = self.val_means.nonfinite.float()
        if self.val_posterior.count:  # posterior collapse shows here while a sweep runs
            metrics[keys.VAL_ACTIVE_UNITS] = float(self.val_posterior.compute()["active_units"])
        self.log_dict(metrics)
        sched = self.lr_schedulers()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and not self.trainer.sanity_checking:
            sched.step(means["loss"])  # a non-finite loss counts as no improvement

    def on_test_epoch_start(self) -> None:
        self.test_means.reset()

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x = self.to_input(batch)
        scored = evaluate_batch(self.objective, x, self.iw_samples)
        self.test_means.add(scored.means(self.test_means.names), x.shape[0])

    def on_test_epoch_end(self) -> None:
        self._over_ranks(self.test_means)
        means = self.test_means.compute()
        metrics = {keys.of("test", k): v for k, v in means.items()}
        metrics[keys.TEST_BPD] = bits_per_dim(means["loss"], self.image_dims)
        metrics[keys.TEST_BPD_IW] = bits_per_dim(means["nll_iw"], self.image_dims)
        metrics[keys.TEST_NONFINITE] = self.test_means.nonfinite.float()
        self.log_dict(metrics)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(CHECKPOINT_TAG, {}).update(
            {  # the run's callbacks add to it too
                "model_class": type(self).__name__,
                "arch_class": type(self.arch).__name__,
                "arch": asdict(self.arch),
                "hparams": dict(self.hparams),
                "likelihood": self.likelihood.name,
                "n_mix": self.hparams.get("n_mix"),
                "valid_bpd": self.bpd_is_likelihood,
            }
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_TAG not in checkpoint:
            raise ValueError("not a resvae checkpoint (it has no 'resvae' entry)")
