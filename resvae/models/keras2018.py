"""The reference study's VAE as it trained (model=keras2018): its network and its loss.

The loss is what Keras reported: 3072 x the mean binary cross-entropy of the pixels in [0, 1]
against sigmoid(logits), with Keras' clipping of the probabilities to [1e-7, 1 - 1e-7], plus the
KL term, plus the L2 penalties of the latent heads (`Keras2018Net.l2_penalty`, added to every
image's loss as Keras adds it to every batch's). Not a likelihood of 8-bit images, so its bits/dim
is flagged as not comparable. The study's notebook samples z = mu + exp(logvar) * eps while its
KL treats logvar as a log-variance; `keras_sampling=True` reproduces that (its loss is then not
an ELBO: the KL is not that of the density z is drawn from), the default samples with
exp(0.5 * logvar), the posterior the KL describes. The IW bound scores the density z is drawn
from either way (`sampling_logvar`), so it is a valid bound for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from resvae.models.base import LatentModel, OptimizerFactory, SchedulerFactory
from resvae.models.likelihoods import Bernoulli
from resvae.models.objectives import Terms, VAEObjective, gaussian_kl
from resvae.nn.keras2018 import Keras2018Config, Keras2018Net

KERAS_EPSILON = 1e-7  # Keras' K.epsilon(): binary_crossentropy clips probabilities by it


def keras_binary_crossentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise BCE of target in [0, 1] against clip(sigmoid(logits), eps, 1 - eps), as Keras
    computes it (the clip bounds each pixel's loss by -log(1e-7) = 16.1 nats)."""
    p = torch.sigmoid(logits.float()).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p))


class Keras2018Objective(VAEObjective):
    metric_names = ("loss", "recon", "kl", "penalty")

    def __init__(self, net: Keras2018Net, keras_sampling: bool = False) -> None:
        super().__init__(net, Bernoulli())
        self.keras_sampling = keras_sampling

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().posterior((x + 1) / 2)  # the study fed pixels in [0, 1]

    def sampling_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        # the notebook's sampling layer: exp(logvar) as the std, i.e. a log-variance of 2 * logvar
        return 2 * logvar if self.keras_sampling else logvar

    def forward(self, x: torch.Tensor) -> Terms:
        mu, logvar = self.posterior(x)
        logits = self.net.decode(self.reparameterize(mu, logvar))
        recon = keras_binary_crossentropy(logits, (x.float() + 1) / 2).flatten(1).sum(1)
        kl = gaussian_kl(mu, logvar).flatten(1).sum(1)
        penalty = self.net.l2_penalty().expand_as(kl)
        loss = recon + kl + penalty
        return Terms(
            loss=loss,
            recon=recon,
            kl=kl,
            penalty=penalty,
            objective=loss.mean(),
            params=logits,
            mu=mu,
            logvar=logvar,
        )


class Keras2018VAE(LatentModel):
    def __init__(
        self,
        *,
        arch: Keras2018Config,
        keras_sampling: bool = False,
        iw_samples: int = 16,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        train_step: Mapping[str, Any] | None = None,
    ) -> None:
        """arch: the study's network (resvae.nn.Keras2018Config); keras_sampling: sample z with
        exp(logvar) as the notebook did (False: exp(0.5 * logvar))."""
        net = arch.build(arch.in_channels, code_multiplier=2)
        super().__init__(
            objective=Keras2018Objective(net, keras_sampling),
            arch=arch,
            optimizer=optimizer,
            scheduler=scheduler,
            train_step=train_step,
            iw_samples=iw_samples,
        )
