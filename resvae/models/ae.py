"""The residual autoencoder as a LightningModule: the VAE's networks with a deterministic code
(the maths: `objectives.AEObjective`). Its bits/dim measures reconstruction only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resvae.models.base import LatentModel, OptimizerFactory, SchedulerFactory
from resvae.models.likelihoods import make_likelihood
from resvae.models.objectives import AEObjective


class AE(LatentModel):
    def __init__(
        self,
        *,
        arch: Any,
        code_momentum: float = 0.01,
        likelihood: str = "logistic_mixture",
        n_mix: int = 10,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        train_step: Mapping[str, Any] | None = None,
    ) -> None:
        """code_momentum: rate of the running Gaussian fit of the codes that sample() draws from."""
        pixels = make_likelihood(likelihood, n_mix)
        net = arch.build(pixels.param_channels(arch.in_channels), code_multiplier=1)
        objective = AEObjective(net, pixels, code_momentum)
        super().__init__(
            objective=objective, arch=arch, iw_samples=1, optimizer=optimizer, scheduler=scheduler,
            train_step=train_step,
        )  # fmt: skip
