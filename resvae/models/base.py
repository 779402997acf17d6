"""Shared machinery of the VAE and the AE: network, guarded manual optimisation, metrics.

The training step runs without host synchronisation: losses and skip counters accumulate on the
device (DeviceMeans, buffers) and are read at epoch end; a non-finite update is skipped on the
device (see guards.py). Subclasses define `_terms`, the per-image loss terms of a batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from resvae.checkpointing import CHECKPOINT_TAG
from resvae.models.compiled import COMPILE_MODES, CompiledOrEager
from resvae.models.guards import DeviceMeans, guarded_update
from resvae.models.likelihoods import bits_per_dim, make_likelihood, to_signed_unit
from resvae.nn import ArchConfig, LatentAutoencoder, count_parameters

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "none")


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates were skipped because the loss or gradients were not finite."""


@dataclass
class Terms:
    """Loss terms of one batch: per-image tensors [B] and the scalar that is optimised."""

    loss: torch.Tensor  # the reported loss: negative ELBO (VAE) or reconstruction NLL (AE)
    recon: torch.Tensor
    objective: torch.Tensor
    params: torch.Tensor  # likelihood parameters [B, P, H, W]
    kl: torch.Tensor | None = None


def channels_last(setting: bool | None, device: torch.device) -> bool:
    """model.channels_last, or when it is null (the default), True on CUDA (tensor-core convs)."""
    return device.type == "cuda" if setting is None else bool(setting)


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"model.{name} must be {bound}, got {value}")


class LatentModel(L.LightningModule):
    code_multiplier = 1
    metric_names: tuple[str, ...] = ("loss", "recon")

    def __init__(
        self,
        *,
        likelihood: str = "logistic_mixture",
        n_mix: int = 10,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        fused: bool | None = None,
        scheduler: str = "plateau",
        plateau_factor: float = 0.5,
        plateau_patience: int = 25,
        min_lr: float = 0.0,
        grad_clip: float | None = 200.0,
        max_consecutive_skips: int = 50,
        skip_check_every: int = 100,
        channels_last: bool | None = None,
        compile: str = "none",
        iw_samples: int = 16,
        **arch: Any,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # the guarded step needs the update in our hands
        self.save_hyperparameters()  # collects the subclass's arguments too (Lightning walks super())
        _check_positive("lr", lr)
        _check_positive("weight_decay", weight_decay, allow_zero=True)
        _check_positive("grad_clip", grad_clip or 0.0, allow_zero=True)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not 0 < plateau_factor < 1:
            raise ValueError(f"model.plateau_factor must be in (0, 1), got {plateau_factor}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"model.betas must be two numbers in [0, 1), got {list(betas)}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"unknown model.compile {compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        if max_consecutive_skips < 1 or skip_check_every < 1 or iw_samples < 1:
            raise ValueError("model.max_consecutive_skips, skip_check_every and iw_samples must be >= 1")

        self.arch = ArchConfig.from_kwargs(**arch)
        self.likelihood = make_likelihood(likelihood, n_mix)
        out_channels = self.likelihood.param_channels(self.arch.in_channels)
        self.net = LatentAutoencoder(self.arch, out_channels, self.code_multiplier)
        self.image_dims = self.arch.in_channels * self.arch.image_size**2

        self.train_means = DeviceMeans((*self.metric_names, "grad_norm"), persistent=True)
        self.val_means = DeviceMeans(self.metric_names)
        self.test_means = DeviceMeans((*self.metric_names, "nll_iw"))
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("consecutive_skips", torch.zeros((), dtype=torch.long))
        self._trainable: list[torch.nn.Parameter] = []
        self.train_forward = CompiledOrEager(self._train_forward, "none")

    # ----------------------------------------------------------------- subclass interface
    def _terms(self, x: torch.Tensor) -> Terms:
        raise NotImplementedError

    def latent_from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Map standard-normal noise of the latent shape to a latent to decode."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- public inference API
    def shape_signature(self) -> dict[str, Any]:
        """What fixes the shapes of the weights: architecture and likelihood."""
        return {**asdict(self.arch), "likelihood": self.likelihood.name, "n_mix": self.hparams.n_mix}

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def _to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> float [-1, 1] on the model's device."""
        images = images.to(self.device)
        x = to_signed_unit(images) if images.dtype == torch.uint8 else images.float() * 2 - 1
        if self.uses_channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def uses_channels_last(self) -> bool:
        return channels_last(self.hparams.get("channels_last"), self.device)

    @contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode and no grad for the public inference methods, the caller's mode restored:
        BatchNorm must use its running statistics, not those of the batch being decoded."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] (the likelihood's point estimate)."""
        with self.inference():
            return (self.likelihood.point(self.net.decode(z.to(self.device))) + 1) / 2

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` images in [0, 1] decoded from the prior at `temperature` (its std multiplier)."""
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        eps = torch.randn((n, *self.net.latent_shape), generator=generator)
        return self.decode(self.latent_from_noise(eps.to(self.device), temperature))

    # ----------------------------------------------------------------- training
    def configure_optimizers(self) -> Any:
        h = self.hparams
        fused = h.fused
        if fused is None:  # fused kernels exist for these on CPU and CUDA, and skip on the device
            fused = all(p.device.type in ("cpu", "cuda") for p in self.parameters())
        params = list(self.parameters())
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=h.lr, momentum=h.betas[0], weight_decay=h.weight_decay, fused=fused
            )
        else:
            cls = torch.optim.Adam if h.optimizer == "adam" else torch.optim.AdamW
            opt = cls(params, lr=h.lr, betas=tuple(h.betas), weight_decay=h.weight_decay, fused=fused)
        if h.scheduler == "none":
            return opt
        if h.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=h.plateau_factor, patience=h.plateau_patience, min_lr=h.min_lr
            )
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, self.trainer.max_epochs or 1), eta_min=h.min_lr
            )
        # stepped by hand (manual optimisation): plateau on val/loss, cosine once per epoch
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched}}

    def on_train_start(self) -> None:
        sched = self.lr_schedulers()
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = max(1, self.trainer.max_epochs or 1)  # a resumed run may have a new max

    def on_fit_start(self) -> None:
        self.check_data_shape(getattr(self.trainer, "datamodule", None))
        if self.uses_channels_last():
            self.net.to(memory_format=torch.channels_last)
        self._trainable = [p for p in self.parameters() if p.requires_grad]
        self.train_forward = CompiledOrEager(self._train_forward, self.hparams.get("compile", "none"))

    def check_data_shape(self, datamodule: Any) -> None:
        """A clear error when the data's images are not the shape the network was built for."""
        shape = getattr(datamodule, "image_shape", None)
        want = (self.arch.in_channels, self.arch.image_size, self.arch.image_size)
        if shape is not None and tuple(shape) != want:
            raise ValueError(
                f"the data's images are {list(shape)} (channels, height, width) but the model is "
                f"built for {list(want)}: set model.image_size={shape[-1]} and "
                f"model.in_channels={shape[0]} to match the data"
            )

    def _train_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The region that torch.compile captures: (objective, batch means of metric_names)."""
        terms = self._terms(x)
        return terms.objective, torch.stack([getattr(terms, n).mean() for n in self.metric_names])

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x = self._to_input(batch)
        opt = self.optimizers()
        objective, means = self.train_forward(x)
        self.manual_backward(objective)
        finite, grad_norm = guarded_update(
            opt.optimizer, self._trainable, objective, self.hparams.grad_clip, opt.step
        )
        opt.zero_grad(set_to_none=True)
        skipped = (~finite).long()
        self.skipped_steps.add_(skipped)
        self.consecutive_skips.add_(skipped).mul_(skipped)
        values = torch.cat([means.detach().float(), grad_norm.detach().float().view(1)])
        self.train_means.add(values, finite.float() * x.shape[0])
        if (batch_idx + 1) % self.hparams.skip_check_every == 0:
            self._raise_if_diverged()

    def _raise_if_diverged(self) -> None:
        n = int(self.consecutive_skips)  # the one host read, every skip_check_every steps
        if n >= self.hparams.max_consecutive_skips:
            raise NonFiniteTrainingError(
                f"{n} consecutive updates had a non-finite loss or gradient and were skipped "
                f"(limit model.max_consecutive_skips={self.hparams.max_consecutive_skips}); "
                "training stopped. The last good checkpoint is kept. Lower model.lr, set "
                "model.grad_clip, or check the data."
            )

    def on_train_epoch_end(self) -> None:
        # reset after reading, not at epoch start: a run resumed mid-epoch keeps its partial sums
        self.log_dict({f"train/{k}": v for k, v in self.train_means.compute().items()})
        self.train_means.reset()
        self.log("train/skipped_steps", self.skipped_steps.float())
        self._raise_if_diverged()
        sched = self.lr_schedulers()
        if sched is not None and not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step()

    # ----------------------------------------------------------------- validation and test
    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()
        self.val_psnr.reset()
        self.val_ssim.reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x = self._to_input(batch)
        terms = self._terms(x)
        self.val_means.add(torch.stack([getattr(terms, n).mean() for n in self.metric_names]), x.shape[0])
        recon = (self.likelihood.point(terms.params) + 1) / 2
        target = (x.float() + 1) / 2
        self.val_psnr.update(recon, target)
        self.val_ssim.update(recon, target)

    def on_validation_epoch_end(self) -> None:
        means = self.val_means.compute()
        metrics = {f"val/{k}": v for k, v in means.items()}
        metrics["val/bpd"] = bits_per_dim(means["loss"], self.image_dims)
        metrics["val/psnr"] = self.val_psnr.compute()
        metrics["val/ssim"] = self.val_ssim.compute()
        self.log_dict(metrics)
        sched = self.lr_schedulers()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and not self.trainer.sanity_checking:
            sched.step(means["loss"])

    def on_test_epoch_start(self) -> None:
        self.test_means.reset()

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x = self._to_input(batch)
        terms = self._terms(x)
        iw = self.nll_iw(x, self.hparams.iw_samples)
        values = [getattr(terms, n).mean() for n in self.metric_names] + [iw.mean()]
        self.test_means.add(torch.stack(values), x.shape[0])

    def nll_iw(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Importance-weighted NLL bound in nats/image; for an AE, its reconstruction NLL."""
        return self._terms(x).loss

    def on_test_epoch_end(self) -> None:
        means = self.test_means.compute()
        metrics = {f"test/{k}": v for k, v in means.items()}
        metrics["test/bpd"] = bits_per_dim(means["loss"], self.image_dims)
        metrics["test/bpd_iw"] = bits_per_dim(means["nll_iw"], self.image_dims)
        self.log_dict(metrics)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_TAG] = {
            "model_class": type(self).__name__,
            "arch": asdict(self.arch),
            "likelihood": self.likelihood.name,
            "n_mix": self.hparams.n_mix,
            "valid_bpd": self.likelihood.valid_bpd,
        }
        # torch.compile wraps modules as `_orig_mod`: save the plain names so an uncompiled
        # model loads the checkpoint.
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {k.replace("._orig_mod", ""): v for k, v in state.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_TAG not in checkpoint:
            raise ValueError("not a resvae checkpoint (it has no 'resvae' entry)")
