"""Pixel likelihoods checked against brute-force references written independently of the library.

Every reference below recomputes bin probabilities from textbook CDFs in float64 (logistic:
sigmoid; Gaussian: erfc) with the 8-bit binning of docs/design.md: level u sits at u / 127.5 - 1, its
bin is [x - 1/255, x + 1/255], and the first and last bins extend to -inf and +inf.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resvae.models.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    bits_per_dim,
    make_likelihood,
    to_signed_unit,
    to_uint8,
)

HALF = 1.0 / 255.0
LEVELS = torch.arange(256)
GRID = LEVELS.double() / 127.5 - 1.0  # the 256 level values on the [-1, 1] scale


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- references
def mixture_params(logits, means, log_scales, coeff_logits):
    """Pack per-pixel mixture parameters into the class's layout.

    logits [K, H, W]; means, log_scales, coeff_logits [3, K, H, W] (channel, component), where
    coeff_logits[0] couples g to r, [1] b to r and [2] b to g (before tanh). The class's layout:
    K logits, then all means, all log-scales, all coefficients, each as [3 channels x K].
    """
    k, h, w = logits.shape
    rest = torch.stack([means, log_scales, coeff_logits])  # [3 (type), 3 (channel), K, H, W]
    return torch.cat([logits, rest.reshape(9 * k, h, w)]).unsqueeze(0).float()


def _level_values(level):
    return GRID[level] if isinstance(level, int) else level.double() / 127.5 - 1.0


def _bin_prob(level, mean, scale, cdf):
    """P(level) = CDF(x + 1/255) - CDF(x - 1/255), float64, with the first and last bins open.

    Bins above the mean are computed from survival functions (cdf(-z)) so that neither side
    loses precision in its tail."""
    x = _level_values(level)
    mean, scale = torch.as_tensor(mean).double(), torch.as_tensor(scale).double()
    inf = torch.tensor(math.inf, dtype=torch.float64)
    z_up = torch.where(torch.as_tensor(x > 0.999), inf, (x + HALF - mean) / scale)
    z_lo = torch.where(torch.as_tensor(x < -0.999), -inf, (x - HALF - mean) / scale)
    return torch.where(x < mean, cdf(z_up) - cdf(z_lo), cdf(-z_lo) - cdf(-z_up))


def normal_cdf(z):
    return 0.5 * torch.special.erfc(-z / math.sqrt(2.0))


def logistic_bin_prob(level, mean, scale):
    return _bin_prob(level, mean, scale, torch.sigmoid)


def gaussian_bin_prob(level, mean, scale):
    return _bin_prob(level, mean, scale, normal_cdf)


def mixture_pixel_prob(levels, logits, means, log_scales, coeff_logits):
    """P(r, g, b) of one pixel, float64: levels a 3-tuple of ints; parameters for that pixel
    (logits [K]; means, log_scales, coeff_logits [3, K])."""
    xr, xg, _ = (GRID[u] for u in levels)
    weights = torch.softmax(logits.double(), 0)
    c = torch.tanh(coeff_logits.double())
    mu = means.double()
    mu_g = mu[1] + c[0] * xr
    mu_b = mu[2] + c[1] * xr + c[2] * xg
    scales = log_scales.double().exp()
    p = (
        logistic_bin_prob(levels[0], mu[0], scales[0])
        * logistic_bin_prob(levels[1], mu_g, scales[1])
        * logistic_bin_prob(levels[2], mu_b, scales[2])
    )
    return (weights * p).sum()


# ----------------------------------------------------------------------------- normalisation
def _mixture_total_mass(lik, params):
    """Sum of P(r, g, b) over all 256**3 colours of one pixel, chunked over r."""
    gb = torch.cartesian_prod(LEVELS, LEVELS)  # [65536, 2]: (g, b)
    n = gb.shape[0]
    p = params.expand(n, -1, -1, -1)
    total = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for r in range(256):
            levels = torch.cat([torch.full((n, 1), r), gb], 1)  # [65536, 3]
            x = to_signed_unit(levels.to(torch.uint8)).view(n, 3, 1, 1)
            total += torch.exp(-lik.nll(p, x).double()).sum()
    return total.item()


def _random_mixture(k, gen, sharp=False):
    logits = torch.randn(k, 1, 1, generator=gen)
    means = torch.randn(3, k, 1, 1, generator=gen) * 0.5
    log_scales = torch.randn(3, k, 1, 1, generator=gen) * 0.5 - 1.0
    coeffs = torch.randn(3, k, 1, 1, generator=gen)
    if sharp:
        log_scales[:, 0] = -4.0 + 0.1 * torch.randn(3, 1, 1, generator=gen)
    return logits, means, log_scales, coeffs


def test_logistic_mixture_sums_to_one_over_all_colours():
    """All 16.7M colours of one pixel, chunked over red: a mixture of a sharp component
    (log-scale about -4, a bin about 2 scales wide) and a moderate one, channel coupling on.
    About 5-10 s on one core: the library's nll on 16.7M pixels."""
    k = 2
    gen = torch.Generator().manual_seed(11)
    lik = DiscretizedLogisticMixture(n_mix=k)
    logits, means, log_scales, coeffs = _random_mixture(k, gen, sharp=True)
    logits = torch.tensor([0.3, -0.2]).view(k, 1, 1)  # both components carry real weight
    assert torch.tanh(coeffs).abs().max() > 0.3  # the coupling really is in play
    total = _mixture_total_mass(lik, mixture_params(logits, means, log_scales, coeffs))
    assert total == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "mean, log_scale",
    [
        (0.0, 0.0),
        (0.3, -2.0),
        (-0.7, -4.0),
        (-1.0, -1.5),
        (1.0, -3.0),
        (-0.98, -5.0),
        (0.99, -6.5),
        (1.3, -1.0),
        (-1.2, -2.5),
        (0.1, 1.5),
    ],
)
def test_gaussian_sums_to_one_over_levels(mean, log_scale):
    lik = DiscretizedGaussian()
    params = torch.tensor([mean, log_scale]).view(1, 2, 1, 1).expand(256, -1, -1, -1)
    x = to_signed_unit(LEVELS.to(torch.uint8)).view(256, 1, 1, 1)
    probs = torch.exp(-lik.nll(params, x).double())
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-3)
    # and each level's probability is the brute-force one (where it is not negligible)
    ref = gaussian_bin_prob(LEVELS, mean, math.exp(log_scale))
    big = ref > 1e-4
    torch.testing.assert_close(probs[big], ref[big], rtol=2e-3, atol=1e-6)


# ----------------------------------------------------------------------------- edge bins
@pytest.mark.parametrize(
    "mean, log_scale", [(0.0, -1.0), (-0.95, -3.0), (0.97, -2.0), (-1.0, -4.0), (1.0, -0.5), (0.5, -2.0)]
)
def test_gaussian_edge_bins_are_open_ended(mean, log_scale):
    lik = DiscretizedGaussian()
    scale = math.exp(log_scale)
    params = torch.tensor([mean, log_scale]).view(1, 2, 1, 1).expand(2, -1, -1, -1)
    x = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
    log_p = -lik.nll(params, x).double()
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), scale)
    p0 = normal.cdf(torch.tensor(-1 + HALF, dtype=torch.float64))
    p255 = 1 - normal.cdf(torch.tensor(1 - HALF, dtype=torch.float64))
    # in log space (float64 log_ndtr) the comparison also covers edge bins deep in the tail
    m = torch.tensor(mean, dtype=torch.float64)
    ref0 = torch.special.log_ndtr((-1 + HALF - m) / scale)
    ref255 = torch.special.log_ndtr(-(1 - HALF - m) / scale)
    torch.testing.assert_close(log_p, torch.stack([ref0, ref255]), rtol=1e-4, atol=1e-4)
    if p0 > 1e-6:
        assert math.exp(log_p[0]) == pytest.approx(p0.item(), rel=1e-4)
    if p255 > 1e-6:
        assert math.exp(log_p[1]) == pytest.approx(p255.item(), rel=1e-4)


@pytest.mark.parametrize("mu, log_s", [(0.1, -1.0), (-0.9, -3.0), (0.95, -2.5), (-1.0, -4.0), (0.2, 0.3)])
def test_logistic_edge_bins_are_open_ended(mu, log_s):
    """One component: P(r=0, g=255, b=v) = sigmoid-CDF terms, with the coupled means."""
    lik = DiscretizedLogisticMixture(n_mix=1)
    gen = torch.Generator().manual_seed(3)
    means = torch.tensor([mu, -mu / 2, 0.3]).view(3, 1, 1, 1)
    log_scales = torch.tensor([log_s, log_s + 0.5, -2.0]).view(3, 1, 1, 1)
    coeffs = torch.randn(3, 1, 1, 1, generator=gen)
    params = mixture_params(torch.zeros(1, 1, 1), means, log_scales, coeffs)
    b_level = 140
    x = torch.tensor([-1.0, 1.0, GRID[b_level].item()]).view(1, 3, 1, 1)
    log_p = -lik.nll(params, x).double()

    c = torch.tanh(coeffs.double()).flatten()
    s = log_scales.double().exp().flatten()
    m = means.double().flatten()
    log_p_r0 = F.logsigmoid((-1 + HALF - m[0]) / s[0])  # log CDF at the upper edge of level 0
    mu_g = m[1] + c[0] * (-1.0)
    log_p_g255 = F.logsigmoid(-(1 - HALF - mu_g) / s[1])  # log survival at level 255's lower edge
    mu_b = m[2] + c[1] * (-1.0) + c[2] * 1.0
    xb = GRID[b_level]
    p_b = torch.sigmoid((xb + HALF - mu_b) / s[2]) - torch.sigmoid((xb - HALF - mu_b) / s[2])
    assert p_b > 1e-4  # a middle bin of real mass: the edge terms are what is under test
    ref = log_p_r0 + log_p_g255 + torch.log(p_b)
    assert log_p.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-4)
    if log_p_r0 > -12:  # plain probabilities where they are representable
        p_r0 = torch.sigmoid((-1 + HALF - m[0]) / s[0])
        p_g255 = 1 - torch.sigmoid((1 - HALF - mu_g) / s[1])
        assert math.exp(log_p.item()) == pytest.approx((p_r0 * p_g255 * p_b).item(), rel=1e-3)


# ----------------------------------------------------------------------------- nll per image
def test_mixture_nll_is_sum_of_pixel_nlls_per_image():
    k, b, h, w = 3, 3, 2, 2
    gen = torch.Generator().manual_seed(4)
    lik = DiscretizedLogisticMixture(n_mix=k)
    per_image = []
    params = []
    levels = torch.randint(0, 256, (b, 3, h, w), generator=gen)
    levels[0, 0, 0, 0], levels[1, 1, 1, 0], levels[2, 2, 0, 1] = 0, 255, 0  # edge levels too
    levels[0, 1, 1, 1], levels[2, 0, 1, 1] = 255, 255
    for i in range(b):
        logits = torch.randn(k, h, w, generator=gen)
        means = torch.randn(3, k, h, w, generator=gen) * 0.5
        log_scales = torch.randn(3, k, h, w, generator=gen) * 0.5 - 1.0
        coeffs = torch.randn(3, k, h, w, generator=gen)
        params.append(mixture_params(logits, means, log_scales, coeffs))
        nll = 0.0
        for yy in range(h):
            for xx in range(w):
                lv = tuple(int(levels[i, c, yy, xx]) for c in range(3))
                p = mixture_pixel_prob(
                    lv, logits[:, yy, xx], means[..., yy, xx], log_scales[..., yy, xx], coeffs[..., yy, xx]
                )
                nll -= math.log(p.item())
        per_image.append(nll)
    out = lik.nll(torch.cat(params), to_signed_unit(levels.to(torch.uint8)))
    assert out.shape == (b,)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), torch.tensor(per_image, dtype=torch.float64), rtol=1e-4, atol=1e-3
    )


def test_gaussian_nll_is_sum_of_subpixel_nlls_per_image():
    b, h, w = 4, 2, 2
    gen = torch.Generator().manual_seed(5)
    lik = DiscretizedGaussian()
    means = torch.randn(b, 3, h, w, generator=gen) * 0.6
    means[0, 0, 0, 0], means[1, 2, 1, 1], means[3, 1, 0, 1] = -0.97, 1.05, 0.99  # edge bins in play
    log_scales = torch.randn(b, 3, h, w, generator=gen) * 0.5 - 1.5
    # data near the predictions, as in training (far-tail bins are tested separately below)
    noisy = means + log_scales.exp() * torch.randn(b, 3, h, w, generator=gen) * 1.5
    levels = to_uint8(noisy).long()
    levels[0, 0, 0, 0], levels[1, 2, 1, 1], levels[3, 1, 0, 1] = 0, 255, 255
    ref = -torch.log(gaussian_bin_prob(levels, means, log_scales.exp())).flatten(1).sum(1)
    out = lik.nll(torch.cat([means, log_scales], 1), to_signed_unit(levels.to(torch.uint8)))
    assert out.shape == (b,)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["gaussian", "logistic"])
@pytest.mark.parametrize("mean, log_scale", [(0.0, -1.5), (-0.9, -3.0), (0.6, -2.2), (-1.1, -2.5)])
def test_tail_bins_keep_their_log_probability(name, mean, log_scale):
    """Bins with under 1e-5 of the mass: float32 CDF differences fail there, and the fallback
    (density x bin width) must stay within 1% of the exact log-probability."""
    if name == "gaussian":
        lik = DiscretizedGaussian()
        params = torch.tensor([mean, log_scale]).view(1, 2, 1, 1)
        ref = gaussian_bin_prob(LEVELS, mean, math.exp(log_scale))
    else:
        lik = DiscretizedLogisticMixture(n_mix=1)
        one = torch.full((3, 1, 1, 1), 1.0)
        params = mixture_params(torch.zeros(1, 1, 1), mean * one, log_scale * one, 0 * one)
        ref = logistic_bin_prob(LEVELS, mean, math.exp(log_scale)) ** 3  # r = g = b, no coupling
    x = to_signed_unit(LEVELS.to(torch.uint8)).view(256, 1, 1, 1)
    if name == "logistic":
        x = x.expand(-1, 3, -1, -1)
    log_p = -lik.nll(params.expand(256, -1, -1, -1), x).double()
    tail = (ref < 1e-5) & (ref > 1e-300)
    assert tail.sum() > 10
    err = (log_p[tail] - ref[tail].log()).abs()
    assert (err <= 0.01 * ref[tail].log().abs() + 1e-3).all(), err.max()


def test_bernoulli_nll_is_per_image_cross_entropy():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 2, 2, generator=gen).double()
    levels = torch.randint(0, 256, (2, 3, 2, 2), generator=gen)
    t = levels.double() / 255.0
    p = torch.sigmoid(logits)
    ref = -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).flatten(1).sum(1)
    out = Bernoulli().nll(logits.float(), to_signed_unit(levels.to(torch.uint8)))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)


def test_nll_runs_in_float32_for_low_precision_params():
    lik = DiscretizedLogisticMixture(n_mix=2)
    params = torch.randn(2, lik.param_channels(3), 4, 4) * 0.5
    x = to_signed_unit(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8))
    out = lik.nll(params.bfloat16(), x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, lik.nll(params.bfloat16().float(), x), rtol=1e-3, atol=1e-2)


# ----------------------------------------------------------------------------- flags and factory
def test_valid_bpd_flags():
    assert Bernoulli.valid_bpd is False
    assert make_likelihood("bernoulli").valid_bpd is False
    assert make_likelihood("logistic_mixture").valid_bpd is True
    assert make_likelihood("gaussian").valid_bpd is True


def test_make_likelihood_unknown_name_lists_choices():
    with pytest.raises(ValueError) as err:
        make_likelihood("poisson")
    msg = str(err.value)
    assert "poisson" in msg
    for name in ("logistic_mixture", "gaussian", "bernoulli"):
        assert name in msg
    assert set(LIKELIHOODS) == {"logistic_mixture", "gaussian", "bernoulli"}


def test_make_likelihood_types_and_param_channels():
    mix = make_likelihood("logistic_mixture", n_mix=4)
    assert isinstance(mix, DiscretizedLogisticMixture) and mix.n_mix == 4
    assert mix.param_channels(3) == 4 * (1 + 3 * 3) == 40
    assert make_likelihood("logistic_mixture").param_channels(3) == 100  # default n_mix=10
    assert make_likelihood("gaussian").param_channels(3) == 6
    assert make_likelihood("bernoulli").param_channels(3) == 3
    with pytest.raises(ValueError, match="3 colour channels"):
        mix.param_channels(1)
    with pytest.raises(ValueError, match="n_mix"):
        DiscretizedLogisticMixture(n_mix=0)


# ----------------------------------------------------------------------------- point and sample
def _params_for(name, b=3, h=5, w=6, scale=2.0, seed=7):
    lik = make_likelihood(name, n_mix=3)
    gen = torch.Generator().manual_seed(seed)
    return lik, torch.randn(b, lik.param_channels(3), h, w, generator=gen) * scale


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_point_in_range_and_shape(name):
    lik, params = _params_for(name)
    out = lik.point(params)
    assert out.shape == (3, 3, 5, 6)
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize(
    "name",
    [
        "logistic_mixture",
        "gaussian",
        "bernoulli",
    ],
)
def test_sample_in_range_shape_and_on_8bit_grid(name):
    lik, params = _params_for(name)
    torch.manual_seed(0)
    out = lik.sample(params)
    assert out.shape == (3, 3, 5, 6)
    assert out.min() >= -1 and out.max() <= 1
    v = out.double() * 127.5 + 127.5
    assert (v - v.round()).abs().max() < 1e-4
    grid32 = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # the levels as float32 inputs
    assert torch.isin(out, grid32).all()


def test_mixture_point_follows_the_coupling():
    """One component: point = (mu_r, mu_g + c0 r, mu_b + c1 r + c2 g), clamped to [-1, 1]."""
    lik = DiscretizedLogisticMixture(n_mix=1)
    gen = torch.Generator().manual_seed(8)
    means = torch.randn(3, 1, 3, 3, generator=gen) * 0.6
    coeffs = torch.randn(3, 1, 3, 3, generator=gen)
    params = mixture_params(torch.zeros(1, 3, 3), means, torch.full((3, 1, 3, 3), -2.0), coeffs)
    out = lik.point(params)[0]
    m, c = means[:, 0], torch.tanh(coeffs[:, 0])
    r = m[0].clamp(-1, 1)
    g = (m[1] + c[0] * r).clamp(-1, 1)
    b = (m[2] + c[1] * r + c[2] * g).clamp(-1, 1)
    torch.testing.assert_close(out, torch.stack([r, g, b]))


def test_mixture_samples_follow_the_pmf():
    """Empirical CDF of red (a marginal) and of blue given (r, g) match the brute-force pmf."""
    k, n = 2, 20000
    lik = DiscretizedLogisticMixture(n_mix=k)
    gen = torch.Generator().manual_seed(9)
    logits, means, log_scales, coeffs = _random_mixture(k, gen)
    log_scales[0] = torch.tensor([-2.5, -1.5]).view(2, 1, 1)  # two well-separated red components
    means[0] = torch.tensor([-0.5, 0.4]).view(2, 1, 1)
    params = mixture_params(logits, means, log_scales, coeffs)
    torch.manual_seed(1)
    draws = to_uint8(lik.sample(params.expand(n, -1, -1, -1))).view(n, 3).long()
    weights = torch.softmax(logits.double().flatten(), 0)
    pmf_r = sum(
        weights[j] * logistic_bin_prob(LEVELS, means[0, j].item(), math.exp(log_scales[0, j].item()))
        for j in range(k)
    )
    emp_r = torch.bincount(draws[:, 0], minlength=256).double() / n
    ks = (emp_r.cumsum(0) - pmf_r.cumsum(0)).abs().max().item()
    assert ks < 2.0 / math.sqrt(n), ks  # Kolmogorov-Smirnov bound, far beyond 99.9%


# ----------------------------------------------------------------------------- conversions
def test_uint8_round_trip_is_exact_for_every_level():
    u = torch.arange(256, dtype=torch.uint8)
    x = to_signed_unit(u)
    assert x.dtype == torch.float32
    assert x[0] == -1.0 and x[255] == 1.0
    torch.testing.assert_close(x.double(), GRID, rtol=0, atol=1e-6)
    assert torch.equal(to_uint8(x), u)
    # nearest bin: anything within (almost) half a bin maps back to its level
    assert torch.equal(to_uint8(x + 0.99 * HALF), u)
    assert torch.equal(to_uint8(x - 0.99 * HALF), u)
    assert to_uint8(torch.tensor([-5.0, 5.0])).tolist() == [0, 255]


@pytest.mark.parametrize("n, dims", [(1.0, 3072), (3.5, 3072), (0.25, 12)])
def test_bits_per_dim(n, dims):
    nats = torch.tensor([n * dims * math.log(2)])
    assert bits_per_dim(nats, dims).item() == pytest.approx(n, rel=1e-6)
