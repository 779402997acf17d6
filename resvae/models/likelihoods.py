"""Pixel likelihoods p(x | decoder output) for 8-bit images, in nats per image.

Images enter as floats in [-1, 1]: x = u8 / 127.5 - 1, so each of the 256 levels is a bin of
width 2/255 centred on its value. A *discrete* likelihood gives each bin a probability, the 256
of them summing to one, and then nats/image and bits/dim are real code lengths. Bernoulli
cross-entropy on intensities (the reference study's binary_crossentropy) is not such a
likelihood: its numbers are flagged `valid_bpd = False` and must not be compared to the others.
All maths runs in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HALF_BIN = 1.0 / 255.0  # half the width of one 8-bit level on the [-1, 1] scale
EDGE = 0.999  # |x| above this is the first or last level, whose bin extends to -inf / +inf


def to_signed_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_u8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 levels (round to the nearest bin)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Likelihood:
    name: str = ""
    valid_bpd: bool = True

    def param_channels(self, channels: int) -> int:
        raise NotImplementedError

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in nats per image: params [B, P, H, W], x [B, C, H, W] -> [B]."""
        raise NotImplementedError

    def point(self, params: torch.Tensor) -> torch.Tensor:
        """A point estimate in [-1, 1] for image grids: [B, P, H, W] -> [B, C, H, W]."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """A draw from p(x | params), quantised to the 8-bit levels, in [-1, 1]."""
        raise NotImplementedError


def _log_bin_probability(
    log_cdf_upper: torch.Tensor,
    log_sf_lower: torch.Tensor,
    cdf_delta: torch.Tensor,
    log_density_mid: torch.Tensor,
    x: torch.Tensor,
) -> torch.Tensor:
    """log P(bin of x), with open-ended edge bins and a density fallback for tiny bins.

    The fallback (density at the centre times the bin width) only applies where the bin holds
    less than 1e-5 of the mass, i.e. where the exact difference of CDFs loses its precision.
    """
    mid = torch.where(
        cdf_delta > 1e-5,
        torch.log(cdf_delta.clamp(min=1e-12)),
        log_density_mid + math.log(2 * HALF_BIN),
    )
    return torch.where(x < -EDGE, log_cdf_upper, torch.where(x > EDGE, log_sf_lower, mid))


class DiscretizedLogisticMixture(Likelihood):
    """PixelCNN++'s mixture of discretized logistics with linear channel coupling (3 channels).

    params [B, K * (1 + 3 * C), H, W]: K mixture logits, then three blocks of C * K channels:
    means, log-scales and coupling coefficients (tanh), each ordered channel-major ([C, K]).
    The mean of green depends on red and blue on red and green: mu_g += c0 * x_r,
    mu_b += c1 * x_r + c2 * x_g.
    """

    name = "logistic_mixture"

    def __init__(self, n_mix: int = 10, min_log_scale: float = -7.0) -> None:
        if n_mix < 1:
            raise ValueError(f"likelihood n_mix must be >= 1, got {n_mix}")
        self.n_mix = n_mix
        self.min_log_scale = min_log_scale

    def param_channels(self, channels: int) -> int:
        if channels != 3:
            raise ValueError("the logistic mixture couples exactly 3 colour channels")
        return self.n_mix * (1 + 3 * channels)

    def _split(self, params: torch.Tensor):
        b, _, h, w = params.shape
        k = self.n_mix
        params = params.float()
        logits = params[:, :k]  # [B, K, H, W]
        rest = params[:, k:].reshape(b, 3, 3, k, h, w)  # (mean, log_scale, coeff), channel, K
        means = rest[:, 0]
        log_scales = rest[:, 1].clamp(min=self.min_log_scale)
        coeffs = torch.tanh(rest[:, 2])
        return logits, means, log_scales, coeffs

    @staticmethod
    def _coupled_means(means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """means, coeffs [B, 3, K, H, W]; x [B, 3, 1, H, W] (the conditioning channel values)."""
        r = means[:, 0]
        g = means[:, 1] + coeffs[:, 0] * x[:, 0]
        b = means[:, 2] + coeffs[:, 1] * x[:, 0] + coeffs[:, 2] * x[:, 1]
        return torch.stack([r, g, b], dim=1)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits, means, log_scales, coeffs = self._split(params)
        x = x.float().unsqueeze(2)  # [B, 3, 1, H, W]
        centred = x - self._coupled_means(means, coeffs, x)
        inv_scale = torch.exp(-log_scales)
        upper = inv_scale * (centred + HALF_BIN)
        lower = inv_scale * (centred - HALF_BIN)
        mid = inv_scale * centred
        log_probs = _log_bin_probability(
            log_cdf_upper=upper - F.softplus(upper),
            log_sf_lower=-F.softplus(lower),
            cdf_delta=torch.sigmoid(upper) - torch.sigmoid(lower),
            log_density_mid=mid - log_scales - 2 * F.softplus(mid),
            x=x,
        )  # [B, 3, K, H, W]
        per_component = log_probs.sum(1) + F.log_softmax(logits, dim=1)  # [B, K, H, W]
        return -torch.logsumexp(per_component, dim=1).flatten(1).sum(1)

    def _component(self, logits: torch.Tensor, draw: bool) -> torch.Tensor:
        if draw:  # Gumbel-max: one component per pixel
            u = torch.rand_like(logits).clamp(1e-5, 1 - 1e-5)
            logits = logits - torch.log(-torch.log(u))
        return F.one_hot(logits.argmax(1), self.n_mix).permute(0, 3, 1, 2).float()  # [B, K, H, W]

    def _decode_pixels(self, params: torch.Tensor, draw: bool) -> torch.Tensor:
        logits, means, log_scales, coeffs = self._split(params)
        sel = self._component(logits, draw).unsqueeze(1)  # [B, 1, K, H, W]
        m = (means * sel).sum(2)  # [B, 3, H, W]
        s = (log_scales * sel).sum(2).exp()
        c = (coeffs * sel).sum(2)
        if draw:
            u = torch.rand_like(m).clamp(1e-5, 1 - 1e-5)
            m = m + s * (torch.log(u) - torch.log1p(-u))
        r = m[:, 0].clamp(-1, 1)
        g = (m[:, 1] + c[:, 0] * r).clamp(-1, 1)
        b = (m[:, 2] + c[:, 1] * r + c[:, 2] * g).clamp(-1, 1)
        return torch.stack([r, g, b], dim=1)

    def point(self, params: torch.Tensor) -> torch.Tensor:
        return self._decode_pixels(params, draw=False)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return to_signed_unit(to_uint8(self._decode_pixels(params, draw=True)))


class DiscretizedGaussian(Likelihood):
    """Independent discretized Gaussians per sub-pixel: params [B, 2C, H, W] (means, log-scales)."""

    name = "gaussian"

    def __init__(self, min_log_scale: float = -7.0) -> None:
        self.min_log_scale = min_log_scale

    def param_channels(self, channels: int) -> int:
        return 2 * channels

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = params.float().chunk(2, dim=1)
        return mean, log_scale.clamp(min=self.min_log_scale)

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._split(params)
        x = x.float()
        inv_scale = torch.exp(-log_scale)
        upper = inv_scale * (x - mean + HALF_BIN)
        lower = inv_scale * (x - mean - HALF_BIN)
        mid = inv_scale * (x - mean)
        std_normal = torch.distributions.Normal(0.0, 1.0)
        log_probs = _log_bin_probability(
            log_cdf_upper=torch.special.log_ndtr(upper),
            log_sf_lower=torch.special.log_ndtr(-lower),
            cdf_delta=std_normal.cdf(upper) - std_normal.cdf(lower),
            log_density_mid=-0.5 * mid**2 - log_scale - 0.5 * math.log(2 * math.pi),
            x=x,
        )
        return -log_probs.flatten(1).sum(1)

    def point(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0].clamp(-1, 1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._split(params)
        return to_signed_unit(to_uint8(mean + log_scale.exp() * torch.randn_like(mean)))


class Bernoulli(Likelihood):
    """Cross-entropy of intensities in [0, 1] against sigmoid(params): the reference study's loss.

    Not a normalised distribution over the 256 levels (the target is not binary), so its
    bits/dim is not a likelihood: `valid_bpd = False`.
    """

    name = "bernoulli"
    valid_bpd = False

    def param_channels(self, channels: int) -> int:
        return channels

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        target = (x.float() + 1) / 2
        bce = F.binary_cross_entropy_with_logits(params.float(), target, reduction="none")
        return bce.flatten(1).sum(1)

    def point(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params.float()) * 2 - 1

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        # the mean, quantised: a binary draw of a grey-level image is not an image
        return to_signed_unit(to_uint8(self.point(params)))


LIKELIHOODS = ("logistic_mixture", "gaussian", "bernoulli")


def make_likelihood(name: str, n_mix: int = 10) -> Likelihood:
    if name == "logistic_mixture":
        return DiscretizedLogisticMixture(n_mix)
    if name == "gaussian":
        return DiscretizedGaussian()
    if name == "bernoulli":
        return Bernoulli()
    raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")


def bits_per_dim(nats_per_image: torch.Tensor, dims: int) -> torch.Tensor:
    return nats_per_image / (dims * math.log(2))
