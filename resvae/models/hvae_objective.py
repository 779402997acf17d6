"""The hierarchical VAE's maths in pure PyTorch (network: resvae/nn/hvae.py).

Groups g = 0 .. G-1 in top-down order, each with a diagonal Gaussian prior p(z_g | z_<g) and
posterior q(z_g | z_<g, x), both read from the decoder's state along one posterior sample:
- loss (the reported negative ELBO, nats/image) = E_q[-log p(x | z)] + sum_g KL_g, one sample of
  the whole hierarchy, KL_g = KL(q(z_g | z_<g, x) || p(z_g | z_<g)) analytic given z_<g.
- objective (what is minimised) = recon + w * sum_g max(free_bits, batch mean of KL_g): `free_bits`
  nats per group, `w` the KL weight (beta after a linear warm-up, a device buffer as VAEObjective's).
- nll_iw: the importance-weighted bound with K samples of the whole hierarchy.

The latent ("z" of Inference and resvae-sample) is the whitened noise of all groups, flat
[B, total dims] (groups concatenated in top-down order, each flattened from [Z, s, s]): eps_g
decodes to z_g = mu_p + sigma_p * eps_g along the prior's top-down pass. So `latent_from_noise`
scales standard-normal noise by a temperature (one, or one per group as VDVAE samples),
temperature 0 decodes the prior means, and `encode_mean(x)` is the eps of the posterior means
((mu_q - mu_p) / sigma_p along the pass with z_g = mu_q): decode(encode_mean(x)) is the posterior
mean's reconstruction and interpolating between two of them is meaningful.

Terms.mu / Terms.logvar are the posterior in the same whitened coordinates, (mu_q - mu_p) / sigma_p
and logvar_q - logvar_p, flat: KL is invariant under that affine map, so gaussian_kl(mu, logvar)
(posterior diagnostics: KL per dimension, active units) is exactly each dimension's KL_g term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from resvae.models.objectives import LOGVAR_MAX, LOGVAR_MIN, KLObjective, Terms, gaussian_kl
from resvae.nn.hvae import HierarchicalVAENet

# A group is active when its mean KL over the data exceeds this many nats per image. Per group
# (not per dimension): a group's size grows with its resolution (16 px: 16x more dimensions than
# 4 px), and a group carrying a few nats is in use however many dimensions share them. 0.1 nats
# is well above a collapsed group's KL (which decays towards 0) and below any group in use.
ACTIVE_GROUP_NATS = 0.1


@dataclass
class HVAETerms(Terms):
    kl_per_group: torch.Tensor | None = None  # KL_g per image [B, G], top-down order


@dataclass
class GroupDraw:
    """One group along a top-down pass: its z [B, Z, s, s] and float32 Gaussian parameters."""

    z: torch.Tensor
    mu_p: torch.Tensor
    logvar_p: torch.Tensor
    mu_q: torch.Tensor | None = None
    logvar_q: torch.Tensor | None = None

    @property
    def white_mu(self) -> torch.Tensor:
        """(mu_q - mu_p) / sigma_p: the posterior mean in the prior's whitened coordinates."""
        return (self.mu_q - self.mu_p) * torch.exp(-0.5 * self.logvar_p)

    @property
    def white_logvar(self) -> torch.Tensor:
        return self.logvar_q - self.logvar_p


def gaussian_params(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A head's output [B, 2Z, s, s] -> (mean, log-variance) [B, Z, s, s], clamped, in float32
    (or float64 for a float64 network: autocast's half precision is lifted, nothing is lowered)."""
    mu, logvar = raw.to(torch.promote_types(raw.dtype, torch.float32)).chunk(2, dim=1)
    return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


def log_density_ratio(z: torch.Tensor, draw: GroupDraw) -> torch.Tensor:
    """log p(z_g | z_<g) - log q(z_g | z_<g, x) per image [B], summed elementwise before the sum
    over dimensions (the log(2 pi) terms cancel; no large sums subtracted)."""
    log_p = -0.5 * (draw.logvar_p + (z - draw.mu_p).pow(2) * torch.exp(-draw.logvar_p))
    log_q = -0.5 * (draw.logvar_q + (z - draw.mu_q).pow(2) * torch.exp(-draw.logvar_q))
    return (log_p - log_q).flatten(1).sum(1)


def active_groups(kl_per_group: torch.Tensor, threshold: float = ACTIVE_GROUP_NATS) -> int:
    """The number of groups whose KL, averaged over images, exceeds `threshold` nats: from per-image
    KLs [N, G] (HVAETerms.kl_per_group of a dataset) or from the means already taken [G]."""
    mean = kl_per_group.double().mean(0) if kl_per_group.dim() == 2 else kl_per_group.double()
    return int((mean > threshold).sum())


class HVAEObjective(KLObjective):
    """Latent groups with learned priors; free bits apply per group (KLObjective holds beta, the
    warm-up and the floor)."""

    net: HierarchicalVAENet

    # ------------------------------------------------------------------ the latent's layout
    @property
    def num_groups(self) -> int:
        return self.net.num_groups

    @property
    def group_sizes(self) -> list[int]:
        """Dimensions of each group in the flat latent (top-down order)."""
        return [math.prod(s) for s in self.net.group_shapes]

    def group_kl(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        """Per-dimension KLs of the flat latent [..., D] (PosteriorStats' kl_per_dim) -> per group
        [..., G]."""
        return torch.stack([part.sum(-1) for part in kl_per_dim.split(self.group_sizes, dim=-1)], dim=-1)

    # ------------------------------------------------------------------ top-down passes
    def posterior_pass(
        self, acts: list[torch.Tensor], batch: int, sample: bool = True
    ) -> tuple[torch.Tensor, list[GroupDraw]]:
        """The decoder along z_g ~ q(z_g | z_<g, x) (`sample`) or z_g = its mean -> (likelihood
        parameters [B, P, H, W], each group's draw)."""
        draws: list[GroupDraw] = []

        def choose(g: int, prior: torch.Tensor, post: torch.Tensor | None) -> torch.Tensor:
            mu_p, logvar_p = gaussian_params(prior)
            mu_q, logvar_q = gaussian_params(post)
            z = mu_q + torch.exp(0.5 * logvar_q) * torch.randn_like(mu_q) if sample else mu_q
            draws.append(GroupDraw(z, mu_p, logvar_p, mu_q, logvar_q))
            return z

        return self.net.top_down(acts, choose, batch), draws

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Flat whitened noise [B, D] -> likelihood parameters, z_g = mu_p + sigma_p * eps_g."""
        eps = self.net.split_latent(latent)

        def choose(g: int, prior: torch.Tensor, post: torch.Tensor | None) -> torch.Tensor:
            mu_p, logvar_p = gaussian_params(prior)
            return mu_p + torch.exp(0.5 * logvar_p) * eps[g]

        return self.net.top_down(None, choose, latent.shape[0])

    # ------------------------------------------------------------------ the ELBO
    def forward(self, x: torch.Tensor) -> HVAETerms:
        params, draws = self.posterior_pass(self.net.encode(x), x.shape[0])
        recon = self.likelihood.nll(params, x)
        white_mu = self.net.join_latent([d.white_mu for d in draws])  # [B, D]
        white_logvar = self.net.join_latent([d.white_logvar for d in draws])
        kl_per_group = self.group_kl(gaussian_kl(white_mu, white_logvar))  # [B, G]
        kl = kl_per_group.sum(1)
        kl_opt = kl_per_group.mean(0)  # [G]
        if self.free_bits > 0:
            kl_opt = kl_opt.clamp(min=self.free_bits)
        objective = recon.mean() + self.kl_weight * kl_opt.sum()
        return HVAETerms(
            loss=recon + kl,
            recon=recon,
            objective=objective,
            params=params,
            kl=kl,
            mu=white_mu,
            logvar=white_logvar,
            kl_per_group=kl_per_group,
        )

    @torch.no_grad()
    def nll_iw(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """-log (1/K) sum_k p(x | z^k) prod_g p(z^k_g | z^k_<g) / q(z^k_g | z^k_<g, x) in nats/image,
        each z^k a sample of the whole hierarchy from q (the bottom-up pass is shared)."""
        if samples < 1:
            raise ValueError(f"importance samples must be >= 1, got {samples}")
        acts = self.net.encode(x)
        log_w = []
        for _ in range(samples):
            params, draws = self.posterior_pass(acts, x.shape[0])
            log_ratio = sum(log_density_ratio(d.z, d) for d in draws)
            log_w.append(-self.likelihood.nll(params, x) + log_ratio)
        return -(torch.logsumexp(torch.stack(log_w), dim=0) - math.log(samples))

    # ------------------------------------------------------------------ the generic latent API
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """x -> the whitened noise of the posterior means [B, D] (module docstring)."""
        _, draws = self.posterior_pass(self.net.encode(x), x.shape[0], sample=False)
        return self.net.join_latent([d.white_mu for d in draws])

    def latent_from_noise(
        self, eps: torch.Tensor, temperature: float | Sequence[float] | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """Standard-normal noise [B, D] -> the latent at `temperature`: one number, or one per group
        (top-down order, VDVAE's per-layer temperatures). 0 decodes the prior means."""
        if isinstance(temperature, (int, float)):
            temperature = [float(temperature)]
        scales = torch.as_tensor(temperature, dtype=eps.dtype, device=eps.device).flatten()
        if not bool((scales >= 0).all()):
            raise ValueError(f"temperatures must be >= 0, got {scales.tolist()}")
        if scales.numel() == 1:
            return eps * scales
        if scales.numel() != self.num_groups:
            raise ValueError(
                f"{scales.numel()} temperatures given for {self.num_groups} latent groups: give one, "
                "or one per group in top-down order"
            )
        per_dim = torch.repeat_interleave(scales, torch.tensor(self.group_sizes, device=eps.device))
        return eps * per_dim
