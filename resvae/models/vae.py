"""The residual VAE: diagonal Gaussian posterior, standard normal prior, discrete pixel likelihood.

Loss (nats/image) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), one reparameterised sample,
sigma = exp(0.5 * logvar). The optimised objective may weight the KL by a linear warm-up and
hold each latent dimension's batch-mean KL at or above `free_bits` nats; the reported
`loss` is always the plain negative ELBO, in training and validation alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from resvae.models.base import LatentModel, Terms

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # sigma in [3e-7, 2e4]: keeps exp() finite in float32


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1)) in nats, the shape of mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over all but the batch dimension -> [B]."""
    log_p = -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar))
    return log_p.flatten(1).sum(1)


class VAE(LatentModel):
    code_multiplier = 2  # the head predicts mean and log-variance
    metric_names = ("loss", "recon", "kl")

    def __init__(
        self,
        *,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if beta < 0 or kl_warmup_steps < 0 or free_bits < 0:
            raise ValueError("model.beta, model.kl_warmup_steps and model.free_bits must be >= 0")
        # the KL weight of the current step as a device scalar, so that a compiled or
        # graph-captured objective reads it instead of baking in a Python number
        self.register_buffer("kl_weight_now", torch.tensor(self.kl_weight()), persistent=False)

    def kl_weight(self) -> float:
        warm = self.hparams.kl_warmup_steps
        step = self.global_step if self._trainer is not None else 0
        ramp = 1.0 if warm == 0 else min(1.0, (step + 1) / warm)
        return self.hparams.beta * ramp

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.kl_warmup_steps:
            self.kl_weight_now.fill_(self.kl_weight())

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (mu, logvar), float32, of the latent shape."""
        mu, logvar = self.net.encode(x).float().chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def _terms(self, x: torch.Tensor) -> Terms:
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        params = self.net.decode(z)
        recon = self.likelihood.nll(params, x)
        kl_elems = gaussian_kl(mu, logvar).flatten(1)  # [B, latent dims]
        kl = kl_elems.sum(1)
        kl_opt = kl_elems.mean(0)
        if self.hparams.free_bits > 0:
            kl_opt = kl_opt.clamp(min=self.hparams.free_bits)
        objective = recon.mean() + self.kl_weight_now * kl_opt.sum()
        return Terms(loss=recon + kl, recon=recon, kl=kl, objective=objective, params=params)

    @torch.no_grad()
    def nll_iw(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x): a bound tighter than the ELBO."""
        mu, logvar = self.posterior(x)
        zeros = torch.zeros_like(mu)
        log_w = []
        for _ in range(samples):
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            log_px = -self.likelihood.nll(self.net.decode(z), x)
            log_w.append(log_px + gaussian_log_density(z, zeros, zeros) - gaussian_log_density(z, mu, logvar))
        return -(torch.logsumexp(torch.stack(log_w), dim=0) - math.log(samples))

    def latent_from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return eps * temperature

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> posterior mean."""
        with self.inference():
            return self.posterior(self._to_input(images))[0]
