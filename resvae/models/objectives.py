"""The models' maths in pure PyTorch: a network, a pixel likelihood and the loss of one model kind.

A `LatentObjective` maps images x in [-1, 1] [B, C, H, W] to per-image loss terms in nats:
- `VAEObjective`: negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), one reparameterised
  sample with sigma = exp(0.5 * logvar). The optimised objective may weight the KL by a linear
  warm-up and hold each latent dimension's batch-mean KL at or above `free_bits` nats; the
  reported `loss` is always the plain negative ELBO, in training and validation alike.
- `AEObjective`: reconstruction NLL of a deterministic code. Its bits/dim measures
  reconstruction only. For sampling it keeps a running Gaussian fit of its codes.

Nothing here knows about Lightning: the training step, evaluation tools and benchmarks call
these modules directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from resvae.models.likelihoods import Likelihood, to_signed_unit

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # sigma in [3e-7, 2e4]: keeps exp() finite in float32


@dataclass
class Terms:
    """Loss terms of one batch: per-image tensors [B] and the scalar that is optimised."""

    loss: torch.Tensor  # the reported loss: negative ELBO (VAE) or reconstruction NLL (AE)
    recon: torch.Tensor
    objective: torch.Tensor
    params: torch.Tensor  # likelihood parameters [B, P, H, W]
    kl: torch.Tensor | None = None
    penalty: torch.Tensor | None = None  # a weight penalty inside `loss` (the study's L2), [B]
    mu: torch.Tensor | None = None  # the posterior's mean and log-variance, of the latent shape
    logvar: torch.Tensor | None = None


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mu, exp(logvar)) || N(0, 1)) in nats, the shape of mu."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over all but the batch dimension -> [B]."""
    log_p = -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar))
    return log_p.flatten(1).sum(1)


class LatentObjective(nn.Module):
    """A network with `encode(x) -> code` / `decode(z) -> likelihood params` and `latent_shape`,
    and the likelihood that reads its output."""

    metric_names: tuple[str, ...] = ("loss", "recon")
    has_posterior = False  # whether `loss` is a bound on -log p(x) (a VAE's negative ELBO)

    def __init__(self, net: nn.Module, likelihood: Likelihood) -> None:
        super().__init__()
        self.net = net
        self.likelihood = likelihood

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.net.latent_shape)

    @staticmethod
    def to_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> float [-1, 1] (channels_last if asked)."""
        x = to_signed_unit(images) if images.dtype == torch.uint8 else images.float() * 2 - 1
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def forward(self, x: torch.Tensor) -> Terms:
        raise NotImplementedError

    def metric_values(self, terms: Terms) -> torch.Tensor:
        """Batch means of `metric_names` as one tensor [len(metric_names)]."""
        return torch.stack([getattr(terms, name).float().mean() for name in self.metric_names])

    def objective_and_metrics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the scalar to minimise, metric_values): the forward half of a training step."""
        terms = self(x)
        return terms.objective, self.metric_values(terms)

    def evaluate(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The compilable half of evaluating a batch (models/evaluation.py), plain tensors:
        (per-image `metric_names` values [B, M], the posterior mean's reconstruction in [0, 1],
        posterior mean, posterior log-variance)."""
        terms = self(x)
        values = torch.stack([getattr(terms, name).float() for name in self.metric_names], dim=1)
        return values, self.decode_images(self.reconstruction_latent(x, terms)), terms.mu, terms.logvar

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """x -> the latent that represents it (posterior mean, or the code)."""
        raise NotImplementedError

    def reconstruction_latent(self, x: torch.Tensor, terms: Terms) -> torch.Tensor:
        """`encode_mean(x)`, or the same latent taken from `terms` (the forward of x) where the
        forward already computed it: evaluation then skips a second encoder pass."""
        return self.encode_mean(x)

    def latent_from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Standard-normal noise of the latent shape -> a latent to decode."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> likelihood parameters (the network's decoder; a hierarchy decodes otherwise)."""
        return self.net.decode(z)

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] (the likelihood's point estimate)."""
        return (self.likelihood.point(self.decode(z)) + 1) / 2

    def nll_iw(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Importance-weighted NLL bound in nats/image; for models without a posterior, the loss."""
        return self(x).loss


class KLObjective(LatentObjective):
    """A latent-variable model whose loss is reconstruction + KL: the KL's weight (beta after a
    linear warm-up) and free-bits floor, shared by the VAE and the hierarchical VAE."""

    metric_names = ("loss", "recon", "kl")
    has_posterior = True

    def __init__(
        self,
        net: nn.Module,
        likelihood: Likelihood,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
    ) -> None:
        super().__init__(net, likelihood)
        if beta < 0 or kl_warmup_steps < 0 or free_bits < 0:
            raise ValueError("model.beta, model.kl_warmup_steps and model.free_bits must be >= 0")
        self.beta, self.kl_warmup_steps, self.free_bits = beta, kl_warmup_steps, free_bits
        # the KL weight of the current step as a device scalar, so that a compiled or
        # graph-captured step reads it instead of baking in a Python number
        self.register_buffer("kl_weight", torch.tensor(self.kl_weight_at(0)), persistent=False)

    def kl_weight_at(self, step: int) -> float:
        ramp = 1.0 if self.kl_warmup_steps == 0 else min(1.0, (step + 1) / self.kl_warmup_steps)
        return self.beta * ramp


class VAEObjective(KLObjective):
    """One diagonal Gaussian latent under a standard normal prior."""

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [-1, 1] -> (mu, logvar), float32, of the latent shape."""
        mu, logvar = self.net.encode(x).float().chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def sampling_logvar(self, logvar: torch.Tensor) -> torch.Tensor:
        """The log-variance z is drawn with: the posterior's own (a subclass may sample otherwise,
        and the IW bound must then score the density it sampled from)."""
        return logvar

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.exp(0.5 * self.sampling_logvar(logvar)) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor) -> Terms:
        mu, logvar = self.posterior(x)
        params = self.net.decode(self.reparameterize(mu, logvar))
        recon = self.likelihood.nll(params, x)
        kl_elems = gaussian_kl(mu, logvar).flatten(1)  # [B, latent dims]
        kl = kl_elems.sum(1)
        kl_opt = kl_elems.mean(0)
        if self.free_bits > 0:
            kl_opt = kl_opt.clamp(min=self.free_bits)
        objective = recon.mean() + self.kl_weight * kl_opt.sum()
        return Terms(
            loss=recon + kl, recon=recon, kl=kl, objective=objective, params=params, mu=mu, logvar=logvar
        )

    @torch.no_grad()
    def nll_iw(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x): a bound tighter than the ELBO.
        q is the density z is drawn from (`sampling_logvar`), so the bound holds for any sampler."""
        mu, logvar = self.posterior(x)
        logvar = self.sampling_logvar(logvar)
        zeros = torch.zeros_like(mu)
        log_w = []
        for _ in range(samples):
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            log_px = -self.likelihood.nll(self.net.decode(z), x)
            log_w.append(log_px + gaussian_log_density(z, zeros, zeros) - gaussian_log_density(z, mu, logvar))
        return -(torch.logsumexp(torch.stack(log_w), dim=0) - math.log(samples))

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def reconstruction_latent(self, x: torch.Tensor, terms: Terms) -> torch.Tensor:
        assert terms.mu is not None  # set by every forward of a VAE
        return terms.mu  # the posterior mean of x, as forward computed it (a hierarchy's is not)

    def latent_from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return eps * temperature


class AEObjective(LatentObjective):
    def __init__(self, net: nn.Module, likelihood: Likelihood, code_momentum: float = 0.01) -> None:
        super().__init__(net, likelihood)
        if not 0 < code_momentum <= 1:
            raise ValueError(f"model.code_momentum must be in (0, 1], got {code_momentum}")
        self.code_momentum = code_momentum
        self.register_buffer("code_mean", torch.zeros(self.latent_shape))
        self.register_buffer("code_var", torch.ones(self.latent_shape))

    def forward(self, x: torch.Tensor) -> Terms:
        z = self.net.encode(x).float()
        if self.training:
            with torch.no_grad():  # running Gaussian fit of the codes, for sampling
                ok = torch.isfinite(z).all()  # a non-finite batch must not poison the fit
                self.code_mean.lerp_(torch.where(ok, z.mean(0), self.code_mean), self.code_momentum)
                self.code_var.lerp_(
                    torch.where(ok, z.var(0, unbiased=False), self.code_var), self.code_momentum
                )
        params = self.net.decode(z)
        recon = self.likelihood.nll(params, x)
        return Terms(loss=recon, recon=recon, objective=recon.mean(), params=params)

    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x).float()

    def latent_from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.code_mean + temperature * self.code_var.sqrt() * eps
