"""The residual autoencoder: the VAE's networks with a deterministic code.

Loss = reconstruction NLL (nats/image) under the same pixel likelihood. Its bits/dim measures
reconstruction only, not a likelihood of the data. To sample, the AE keeps a running Gaussian
fit of its codes (per latent element, on the device) and decodes draws from it.
"""

from __future__ import annotations

from typing import Any

import torch

from resvae.models.base import LatentModel, Terms


class AE(LatentModel):
    code_multiplier = 1
    metric_names = ("loss", "recon")

    def __init__(self, *, code_momentum: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < code_momentum <= 1:
            raise ValueError(f"model.code_momentum must be in (0, 1], got {code_momentum}")
        self.register_buffer("code_mean", torch.zeros(self.net.latent_shape))
        self.register_buffer("code_var", torch.ones(self.net.latent_shape))

    def _terms(self, x: torch.Tensor) -> Terms:
        z = self.net.encode(x).float()
        if self.training:
            with torch.no_grad():  # running Gaussian fit of the codes, for sampling
                m = self.hparams.code_momentum
                ok = torch.isfinite(z).all()  # a non-finite batch must not poison the fit
                mean = torch.where(ok, z.mean(0), self.code_mean)
                var = torch.where(ok, z.var(0, unbiased=False), self.code_var)
                self.code_mean.lerp_(mean, m)
                self.code_var.lerp_(var, m)
        params = self.net.decode(z)
        recon = self.likelihood.nll(params, x)
        return Terms(loss=recon, recon=recon, objective=recon.mean(), params=params)

    def latent_from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.code_mean + temperature * self.code_var.sqrt() * eps

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with self.inference():
            return self.net.encode(self._to_input(images)).float()
