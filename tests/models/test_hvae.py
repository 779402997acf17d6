"""The hierarchical VAE (model=hvae): its ELBO and IW bound against independent computations,
sampling, the depth rule, and end-to-end training and resume through resvae-train."""

from __future__ import annotations

import csv
import json
import math
import signal
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Normal

from resvae.cli import evaluate
from resvae.models.hvae import HVAE
from resvae.models.hvae_objective import HVAEObjective, active_groups
from resvae.models.likelihoods import DiscretizedGaussian, make_likelihood
from resvae.nn import count_parameters
from resvae.nn.hvae import HVAEArchConfig, LatentGroup, hvae_arch
from resvae.run.preflight import config_problem
from tests.helpers.config import TINY
from tests.helpers.processes import start_piped, wait_for_first_checkpoint
from tests.helpers.records import epoch_rows, final_weights, only_run_dir
from tests.helpers.wandb_offline import of_type, wandb_records

pytestmark = pytest.mark.usefixtures("one_thread")

# 8 px images: stages at 8, 4, 2, 1 px with one group each (G = 4, 2 * (64 + 16 + 4 + 1) = 170 dims)
TINY_HVAE = dict(depth=28, width=8, latent_dim=2, groups=(1, 1, 1, 1), image_size=8)


def tiny_objective(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> HVAEObjective:
    torch.manual_seed(seed)
    cfg = HVAEArchConfig(**{**TINY_HVAE, **overrides})
    pixels = DiscretizedGaussian()
    objective = HVAEObjective(cfg.build(pixels.param_channels(cfg.in_channels)), pixels)
    return objective.to(dtype).eval()


def images(n: int, seed: int = 1, size: int = 8) -> torch.Tensor:
    """8-bit levels in [-1, 1], smooth enough that the likelihood is not uniform."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 2, 2, generator=g, dtype=torch.float64)
    u8 = (torch.nn.functional.interpolate(low, size=size, mode="bilinear") * 255).round()
    return u8 / 127.5 - 1


# --------------------------------------------------------------------- independent reference
def reference_pass(objective: HVAEObjective, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ELBO and one importance log-weight by hand: walks the network's layers itself, draws
    z_g = mu_q + sigma_q * eps with torch.randn in the objective's order (so the same seed gives
    the same z), KL by its own formula and log p(x | z) from normal CDFs over the 8-bit bins."""
    net = objective.net
    h, acts = net.stem(x), []
    for i, stage in enumerate(net.encoder):
        h = stage(h if i == 0 else torch.nn.functional.avg_pool2d(h, 2))
        acts.append(h)
    h = net.h0.expand(x.shape[0], -1, -1, -1)
    kls, log_ratio = [], torch.zeros(x.shape[0], dtype=x.dtype)
    for i in reversed(range(4)):
        if i < 3:
            h = h.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x
        for unit in net.decoder[i]:
            if not isinstance(unit, LatentGroup):
                h = unit(h)
                continue
            mp, lp = unit.prior(h).chunk(2, dim=1)
            mq, lq = unit.posterior(torch.cat([h, acts[i]], dim=1)).chunk(2, dim=1)
            z = mq + torch.exp(lq / 2) * torch.randn_like(mq)
            kl = 0.5 * (lp - lq + (torch.exp(lq) + (mq - mp) ** 2) / torch.exp(lp) - 1)
            kls.append(kl.flatten(1).sum(1))
            p, q = Normal(mp, torch.exp(lp / 2)), Normal(mq, torch.exp(lq / 2))
            log_ratio = log_ratio + (p.log_prob(z) - q.log_prob(z)).flatten(1).sum(1)
            h = h + unit.proj(z)
    mean, log_scale = net.head(h).chunk(2, dim=1)
    std = Normal(mean, torch.exp(log_scale.clamp(min=-7.0)))
    upper = torch.where(x > 0.999, torch.ones_like(x), std.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), std.cdf(x - 1 / 255))
    recon = -torch.log(upper - lower).flatten(1).sum(1)
    kl_per_group = torch.stack(kls, dim=1)
    return {"recon": recon, "kl_per_group": kl_per_group, "log_w": -recon + log_ratio}


def test_elbo_matches_an_independent_computation() -> None:
    objective, x = tiny_objective(), images(5)
    torch.manual_seed(7)
    terms = objective(x)
    torch.manual_seed(7)
    with torch.no_grad():
        ref = reference_pass(objective, x)
    assert terms.kl_per_group.shape == (5, 4) and (ref["kl_per_group"] > 0).all()
    torch.testing.assert_close(terms.kl_per_group, ref["kl_per_group"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(terms.recon.double(), ref["recon"], rtol=1e-5, atol=1e-3)  # float32 likelihood
    torch.testing.assert_close(
        terms.loss.double(), ref["recon"] + ref["kl_per_group"].sum(1), rtol=1e-5, atol=1e-3
    )
    # the whitened posterior (Terms.mu, Terms.logvar) carries each group's KL exactly
    from resvae.models.objectives import gaussian_kl

    torch.testing.assert_close(objective.group_kl(gaussian_kl(terms.mu, terms.logvar)), terms.kl_per_group)
    assert float(terms.objective.detach()) == pytest.approx(float(terms.loss.detach().mean()), rel=1e-6)


def test_free_bits_per_group_and_kl_weight() -> None:
    objective, x = tiny_objective(), images(6)
    torch.manual_seed(3)
    with torch.no_grad():
        terms = objective(x)
    floor = float(terms.kl_per_group.mean(0).median())  # some groups below it, some above
    objective.free_bits = floor
    objective.kl_weight.fill_(0.5)
    torch.manual_seed(3)
    with torch.no_grad():
        clamped = objective(x)
    want = terms.recon.mean() + 0.5 * terms.kl_per_group.mean(0).clamp(min=floor).sum()
    assert float(clamped.objective) == pytest.approx(float(want), rel=1e-9)
    torch.testing.assert_close(clamped.loss, terms.loss)  # the reported loss stays the plain ELBO


def test_single_sample_iw_weight_and_logmeanexp_match_by_hand() -> None:
    objective, x = tiny_objective(), images(4)
    torch.manual_seed(11)
    with torch.no_grad():
        ref = reference_pass(objective, x)
    torch.manual_seed(11)
    torch.testing.assert_close(-objective.nll_iw(x, 1).double(), ref["log_w"], rtol=1e-5, atol=1e-3)
    # K samples: -logmeanexp of the K single-sample weights drawn from the same noise stream
    torch.manual_seed(5)
    singles = torch.stack([-objective.nll_iw(x, 1) for _ in range(6)])
    torch.manual_seed(5)
    want = -(torch.logsumexp(singles, 0) - math.log(6))
    torch.testing.assert_close(objective.nll_iw(x, 6), want)


def test_iw_bound_is_below_the_elbo_and_tightens_with_k() -> None:
    objective, x = tiny_objective(seed=2), images(32, seed=4)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([objective(x).loss for _ in range(8)]).mean()
        iw = {k: torch.stack([objective.nll_iw(x, k) for _ in range(4)]).mean() for k in (1, 4, 32)}
    gap = float(elbo - iw[32])
    assert gap > 0.05, (float(elbo), {k: float(v) for k, v in iw.items()})
    # E[nll_iw(1)] is the ELBO's expectation; the bound tightens with K by more than the noise
    assert abs(float(iw[1] - elbo)) < 0.25 * gap
    assert iw[1] > iw[4] > iw[32]


def test_sampling_temperatures_and_posterior_mean_latent() -> None:
    model = HVAE(arch=HVAEArchConfig(**TINY_HVAE), likelihood="gaussian")
    inf = model.inference
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(inf.sample(5, 0.7, generator=g()), inf.sample(5, 0.7, generator=g()))
    assert not torch.equal(inf.sample(5, 1.0, generator=g()), inf.sample(5, 1.0))
    # temperature 0: the prior means, whatever the noise
    noise = torch.randn(2, 5, *inf.latent_shape)
    cold = [inf.decode(inf.latent_from_noise(n, 0.0)) for n in noise]
    torch.testing.assert_close(cold[0], cold[1])
    torch.testing.assert_close(cold[0], inf.decode(torch.zeros(5, *inf.latent_shape)))
    # per-group temperatures (top-down order): all equal is the scalar; each group's slice scaled
    eps = noise[0]
    torch.testing.assert_close(inf.latent_from_noise(eps, [0.6] * 4), inf.latent_from_noise(eps, 0.6))
    sizes = model.objective.group_sizes
    assert sizes == [2 * 1, 2 * 4, 2 * 16, 2 * 64] and sum(sizes) == inf.latent_shape[0]
    scaled = inf.latent_from_noise(eps, (1.0, 0.0, 0.5, 0.0))
    parts = scaled.split(sizes, dim=1)
    torch.testing.assert_close(parts[0], eps[:, :2])
    assert not parts[1].any() and not parts[3].any()
    torch.testing.assert_close(parts[2], 0.5 * eps[:, 10:42])
    assert inf.decode(scaled).shape == (5, 3, 8, 8)
    with pytest.raises(ValueError, match="3 temperatures given for 4 latent groups"):
        inf.latent_from_noise(eps, [1.0, 1.0, 1.0])
    # decode(encode(x)) is the posterior mean's reconstruction
    x = (images(3).float() + 1) / 2
    obj = model.objective.eval()
    with torch.no_grad():
        params, _ = obj.posterior_pass(obj.net.encode(x * 2 - 1), 3, sample=False)
    torch.testing.assert_close(inf.reconstruct(x), (obj.likelihood.point(params) + 1) / 2)


def test_active_groups_counts_groups_over_the_threshold() -> None:
    kl = torch.tensor([[0.0, 0.3, 5.0], [0.001, 0.0, 4.0]])  # [N, G]: means 0.0005, 0.15, 4.5
    assert active_groups(kl) == 2 and active_groups(kl.mean(0), threshold=1.0) == 1


# --------------------------------------------------------------------- configuration
@pytest.mark.parametrize(("depth", "blocks"), [(28, (1, 1, 1, 1)), (40, (1, 2, 2, 1)), (70, (2, 3, 4, 2)),
                                                (100, (3, 4, 6, 3))])  # fmt: skip
def test_reference_depths_build(depth: int, blocks: tuple[int, ...]) -> None:
    cfg = HVAEArchConfig(depth=depth, width=8)
    net = cfg.build(make_likelihood("logistic_mixture").param_channels(3))
    assert cfg.blocks == blocks and cfg.layers == depth
    # every conv: 3 per residual block in the encoder and in the decoder, the stem and the head,
    # and 3 per latent group (prior, posterior, z projection; 2 of them counted once in depth)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 * sum(blocks) + 2 + 3 * sum(cfg.groups)
    objective = HVAEObjective(net, make_likelihood("logistic_mixture"))
    with torch.no_grad():
        assert objective.decode_images(torch.zeros(1, *objective.latent_shape)).shape == (1, 3, 32, 32)
    assert count_parameters(net) > 0


def test_impossible_depth_and_foreign_options_are_one_line() -> None:
    with pytest.raises(ValueError) as err:
        HVAEArchConfig(depth=41)
    assert "\n" not in str(err.value) and "model.arch.depth=40 or 46" in str(err.value)
    problem = config_problem(["model=hvae", "model.arch.depth=50"])
    assert problem and "\n" not in problem and "model.arch.depth=46 or 52" in problem
    with pytest.raises(ValueError, match="of the ResNet \\(network=resnet\\)"):
        hvae_arch(depth=28, preact=False)
    with pytest.raises(ValueError, match="model.arch.groups"):
        HVAEArchConfig(groups=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="model.arch.blocks=\\[1, 1, 1, 1\\] has depth 28"):
        HVAEArchConfig(depth=40, blocks=(1, 1, 1, 1))


# --------------------------------------------------------------------- end to end
ARGS = [*TINY, "model=hvae", "trainer.max_epochs=2", "logger=csv", "callbacks.early_stopping.patience=100"]


@pytest.mark.slow
def test_hvae_trains_tests_and_writes_its_run_folder(run_train, tmp_path: Path) -> None:
    run_train(*[a for a in ARGS if a != "logger=csv"], "logger=wandb")  # offline (run_train's env)
    folder = only_run_dir(tmp_path / "outputs")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["network"] == "hvae" and summary["model"] == "HVAE"
    assert (
        summary["depth"] == summary["layers"] == 28 and summary["test_bpd_iw"] <= summary["test_bpd"] + 0.01
    )
    header = (folder / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/kl_group_0", "val/active_groups", "test/nll_iw"} <= set(header)
    assert (folder / "samples" / "epoch_002.png").is_file()

    # W&B: the KL of each group as a histogram with one bin per group, at each validation
    records = wandb_records(folder)
    groups = sum(OmegaConf.load(folder / ".hydra" / "config.yaml").model.arch.groups)
    logged = [
        {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
        for record in of_type(records, "history")
    ]
    histograms = [row for row in logged if row.get("val/kl_per_group/_type") == "histogram"]
    assert len(histograms) == 2  # one per epoch (the sanity check logs none)
    with open(folder / "metrics.csv", newline="") as f:  # the same validations' per-group scalars
        scalars = [row for row in csv.DictReader(f) if row.get("val/kl_group_0")]
    assert [int(row["epoch"]) for row in scalars] == [1, 2]
    for row, csv_row in zip(histograms, scalars):
        assert row["val/kl_per_group/bins"] == list(range(groups + 1))
        heights = [float(csv_row[f"val/kl_group_{g}"]) for g in range(groups)]
        assert row["val/kl_per_group/values"] == pytest.approx(heights, rel=1e-5)

    # resvae-eval: the KL of each group and the count of active ones in eval.json
    assert evaluate.main([str(folder), "--device", "cpu", "--iw-samples", "2", "--split", "test"]) == 0
    result = json.loads((folder / "eval.json").read_text())
    assert len(result["kl_per_group"]) == groups
    assert sum(result["kl_per_group"]) == pytest.approx(result["kl_nats"], rel=1e-4)
    threshold = result["active_group_threshold"]
    assert result["active_groups"] == sum(kl > threshold for kl in result["kl_per_group"])


RESUME_ARGS = [*TINY, "model=hvae", "trainer.max_epochs=4", "logger=csv", "test=false",
               "callbacks.early_stopping.patience=100", "model.optimizer.lr=5e-3"]  # fmt: skip


@pytest.mark.slow
def test_hvae_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    uninterrupted = start_piped(straight, *RESUME_ARGS)
    out, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, out
    proc = start_piped(killed, *RESUME_ARGS)
    wait_for_first_checkpoint(killed, proc)
    time.sleep(0.3)  # into the next epoch: a mid-epoch stop
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, out  # the kernel's -9: no handler runs
    resumed = start_piped(killed, *RESUME_ARGS)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming from" in out, out

    (want, want_ckpt), (got, got_ckpt) = final_weights(straight), final_weights(killed)
    assert got_ckpt["global_step"] == want_ckpt["global_step"] and got_ckpt["epoch"] == want_ckpt["epoch"]
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
    have, expected = epoch_rows(killed), epoch_rows(straight)
    for key in ("train/loss", "val/loss"):
        assert sorted(have[key]) == [1, 2, 3, 4]
        for epoch, value in expected[key].items():
            assert have[key][epoch] == pytest.approx(value, rel=1e-4), (key, epoch)
