"""The residual VAE as a LightningModule: diagonal Gaussian posterior, standard normal prior,
discrete pixel likelihood (the maths: `objectives.VAEObjective`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resvae.models.base import LatentModel, OptimizerFactory, SchedulerFactory
from resvae.models.likelihoods import make_likelihood
from resvae.models.objectives import KLObjective, VAEObjective


class VAE(LatentModel):
    objective_class: type[KLObjective] = VAEObjective  # the maths; model=hvae swaps in its own

    def __init__(
        self,
        *,
        arch: Any,
        likelihood: str = "logistic_mixture",
        n_mix: int = 10,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 16,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        train_step: Mapping[str, Any] | None = None,
    ) -> None:
        """arch: a network config with `build(out_channels, code_multiplier)` (resvae.nn.ArchConfig);
        beta: KL weight after warm-up (1: the ELBO); kl_warmup_steps: linear KL warm-up;
        free_bits: nats per latent dimension (batch mean) below which KL is not pushed down;
        iw_samples: importance samples of test/nll_iw."""
        pixels = make_likelihood(likelihood, n_mix)
        net = arch.build(pixels.param_channels(arch.in_channels), code_multiplier=2)
        super().__init__(
            objective=self.objective_class(net, pixels, beta, kl_warmup_steps, free_bits),
            arch=arch,
            optimizer=optimizer,
            scheduler=scheduler,
            train_step=train_step,
            iw_samples=iw_samples,
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.objective.kl_warmup_steps:
            self.objective.kl_weight.fill_(self.objective.kl_weight_at(self.global_step))
