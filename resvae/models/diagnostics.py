"""Posterior diagnostics of a VAE in pure PyTorch: active units and KL per latent dimension.

- Active units (Burda, Grosse and Salakhutdinov 2016, "Importance Weighted Autoencoders"):
  latent dimension d is active when A_d = Cov_x(E_q[z_d | x]) > 0.01, i.e. when the posterior
  mean of z_d varies across images. An inactive dimension carries no information about x (its
  posterior is the same for every image, usually the prior: "posterior collapse").
- KL per dimension: the mean over images of KL(q(z_d | x) || N(0, 1)) in nats. The sum over d is
  the KL term of the ELBO; dimensions with a KL near 0 are unused.

`active_units` and `kl_per_dimension` take whole splits at once; `PosteriorStats` accumulates
the same numbers batch by batch (for an evaluation loop or a validation epoch) in float64.
Variances are population variances (divided by N, not N - 1).
"""

from __future__ import annotations

import torch

from resvae.models.objectives import gaussian_kl

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016


def active_units(mu_per_image: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Posterior means [N, ...] (one row per image) -> (number of active dimensions, the
    variance over images of each dimension's posterior mean [D])."""
    if mu_per_image.dim() < 2 or mu_per_image.shape[0] < 1:
        raise ValueError(
            f"active_units needs posterior means [N, ...] with N >= 1, got {list(mu_per_image.shape)}"
        )
    variance = mu_per_image.detach().flatten(1).double().var(0, correction=0)
    return int((variance > threshold).sum()), variance


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Posterior parameters [N, ...] -> mean over the N images of the elementwise
    KL(N(mu, exp(logvar)) || N(0, 1)) in nats, per latent dimension [D]."""
    if mu.shape != logvar.shape or mu.dim() < 2:
        raise ValueError(
            f"mu and logvar must be [N, ...] of one shape, got {list(mu.shape)} and {list(logvar.shape)}"
        )
    return gaussian_kl(mu.detach().double(), logvar.detach().double()).flatten(1).mean(0)


class PosteriorStats:
    """Streaming `active_units` and `kl_per_dimension` over batches of posterior parameters.

    Per dimension it keeps the count, the mean and the sum of squared deviations of the
    posterior means (merged batch by batch with Chan et al.'s parallel update, exact up to
    rounding) and the sum of the KL, in float64 on the device of the first batch. No host
    synchronisation until `compute()`.
    """

    def __init__(self, threshold: float = ACTIVE_THRESHOLD) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.kl_sum: torch.Tensor | None = None

    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Add a batch: mu, logvar [B, ...] (the posterior of B images)."""
        if mu.shape != logvar.shape or mu.dim() < 2:
            raise ValueError(
                f"mu and logvar must be [B, ...] of one shape, got {list(mu.shape)} and {list(logvar.shape)}"
            )
        n = mu.shape[0]
        if n == 0:
            return
        mu = mu.detach().flatten(1).double()
        kl = gaussian_kl(mu, logvar.detach().flatten(1).double()).sum(0)
        batch_mean = mu.mean(0)
        batch_m2 = (mu - batch_mean).pow(2).sum(0)
        if self.mean is None or self.m2 is None or self.kl_sum is None:
            self.mean, self.m2, self.kl_sum, self.count = batch_mean, batch_m2, kl, n
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta.pow(2) * (self.count * n / total)
        self.kl_sum = self.kl_sum + kl
        self.count = total

    def compute(self) -> dict[str, torch.Tensor | int]:
        """{"active_units": int, "mu_variance": [D], "kl_per_dim": [D]} (float64 tensors)."""
        if self.mean is None or self.m2 is None or self.kl_sum is None:
            raise ValueError("PosteriorStats.compute() before any update()")
        variance = self.m2 / self.count
        return {
            "active_units": int((variance > self.threshold).sum()),
            "mu_variance": variance,
            "kl_per_dim": self.kl_sum / self.count,
        }
