"""resvae-eval on checkpoints of real (tiny) training runs, and the posterior diagnostics.

The trained runs are shared by the whole module: one VAE trained for 2 epochs and one
Bernoulli-loss VAE for 1 epoch, trained at once in two processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from resvae.cli import evaluate
from resvae.models.diagnostics import PosteriorStats, active_units, kl_per_dimension
from resvae.models.objectives import gaussian_kl
from tests.helpers.models import SmallFeatures
from tests.helpers.processes import one_error_line, run_cli, train_runs

pytestmark = pytest.mark.usefixtures("one_thread")

REQUIRED = (
    "checkpoint", "checkpoint_sha256", "split", "held_out", "n_images", "iw_samples", "seed", "device",
    "elbo_nats", "elbo_nats_se", "bpd", "bpd_se", "nll_iw_nats", "nll_iw_se", "bpd_iw", "bpd_iw_se",
    "recon_nats", "kl_nats", "psnr", "ssim", "active_units", "latent_dim", "kl_per_dim", "bpd_refused",
    "fid", "fid_samples", "fid_real_images", "fid_feature",
)  # fmt: skip
VARYING = ("seconds", "evaluated_at", "eval_json")  # what may differ between two evaluations


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder, without the files evaluations write."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval.json", "samples_eval", "wandb"))
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-runs")
    return train_runs(
        root,
        {
            "vae": ["trainer.max_epochs=2"],
            "bernoulli": ["trainer.max_epochs=1", "model.likelihood=bernoulli"],
        },
    )


@pytest.fixture(scope="module")
def vae_eval(runs: dict[str, Path]) -> tuple[dict, str]:
    """The VAE's best.ckpt evaluated on the test split with K=50 (written to RUN/eval.json)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.main([str(runs["vae"]), "--iw-samples", "50", "--device", "cpu"])
    assert code == 0
    return json.loads((runs["vae"] / "eval.json").read_text()), out.getvalue()


# ---------------------------------------------------------------------------------- numbers
def test_elbo_bits_per_dim_matches_the_runs_test_bpd(runs: dict[str, Path], vae_eval) -> None:
    """Same best.ckpt, same 32 test images, same per-image negative ELBO averaged: the two
    differ only by the one reparameterisation sample per image. Training's test draws it from
    the global RNG as training left it, the evaluation from its seed, so exact equality cannot
    hold; the difference is Monte Carlo noise, far below the standard error over images (which
    also holds the spread between images) and, for these models, below 1e-3 relative."""
    result, _ = vae_eval
    summary = json.loads((runs["vae"] / "summary.json").read_text())
    assert summary["test_bpd"] is not None
    assert result["bpd"] == pytest.approx(summary["test_bpd"], rel=1e-3)
    assert abs(result["bpd"] - summary["test_bpd"]) <= 3 * result["bpd_se"]
    assert result["bpd"] == pytest.approx(result["elbo_nats"] / (3072 * math.log(2)), rel=1e-12)


def test_importance_weighted_bound_is_below_the_elbo(vae_eval) -> None:
    result, _ = vae_eval
    assert result["iw_samples"] == 50
    assert result["nll_iw_nats"] <= result["elbo_nats"]
    assert result["bpd_iw"] <= result["bpd"]
    assert result["iw_gap_nats"] == pytest.approx(result["elbo_nats"] - result["nll_iw_nats"], rel=1e-6)


def test_eval_json_has_every_field(runs: dict[str, Path], vae_eval) -> None:
    result, printed = vae_eval
    assert set(REQUIRED) <= set(result)
    ckpt = runs["vae"] / "checkpoints" / "best.ckpt"
    assert Path(result["checkpoint"]) == ckpt.resolve()
    assert result["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (result["split"], result["held_out"], result["n_images"], result["seed"]) == ("test", True, 32, 0)
    assert result["device"] == "cpu" and result["bpd_refused"] is None
    assert result["latent_dim"] == 16 == len(result["kl_per_dim"]) == len(result["mu_variance_per_dim"])
    assert 0 <= result["active_units"] <= 16
    assert result["active_units"] == sum(v > 0.01 for v in result["mu_variance_per_dim"])
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl_nats"], rel=1e-5, abs=1e-9)
    assert result["elbo_nats"] == pytest.approx(result["recon_nats"] + result["kl_nats"], rel=1e-6)
    for key in ("elbo_nats_se", "bpd_se", "nll_iw_se", "bpd_iw_se", "psnr", "ssim"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert 0 < result["bpd_se"] < 0.1 and -1 <= result["ssim"] <= 1
    assert all(result[key] is None for key in evaluate.FID_FIELDS)  # no --fid
    # the one printed line
    lines = printed.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{runs['vae']}: test bpd {result['bpd']:.3f} ± ")
    assert "(ELBO)" in lines[0] and "(IW, K=50)" in lines[0] and "active units" in lines[0]
    assert f"{result['active_units']}/16" in lines[0] and "not held out" not in lines[0]
    assert "FID" not in lines[0]


def test_fid_of_prior_samples_against_the_split(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """--fid N: N samples against the split's images (all 32 of them here), with a small feature
    module in place of the Inception network (whose weights these tests never download)."""
    from resvae.cli import fid

    monkeypatch.setattr(fid, "inception_weights", lambda: pytest.fail("asked for the Inception weights"))
    monkeypatch.setattr(fid, "inception_metric", lambda shape, dims: fid.fid_metric(SmallFeatures(), shape))
    with pytest.raises(pytest.fail.Exception, match="asked for the Inception weights"):
        evaluate.main([str(runs["vae"]), "--fid", "40", "--device", "cpu", "--out", str(tmp_path / "x.json")])
    monkeypatch.setattr(fid, "inception_weights", lambda: tmp_path / "weights.pth")
    args = [str(runs["vae"]), "--iw-samples", "0", "--device", "cpu", "--fid", "40", "--batch-size", "16"]
    assert evaluate.main([*args, "--out", str(tmp_path / "fid.json")]) == 0
    result = json.loads((tmp_path / "fid.json").read_text())
    assert set(REQUIRED) <= set(result)
    assert (result["fid_samples"], result["fid_real_images"], result["fid_feature"]) == (
        40,
        32,
        "SmallFeatures/8",
    )
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(f", FID {result['fid']:.2f} (40 samples vs 32 test images)")
    # the seed draws the samples: the same seed the same FID, another seed another
    assert evaluate.main([*args, "--out", str(tmp_path / "again.json"), "--fid", "20", "--seed", "0"]) == 0
    assert evaluate.main([*args, "--out", str(tmp_path / "other.json"), "--fid", "20", "--seed", "1"]) == 0
    again, other = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("again", "other"))
    assert (again["fid_samples"], again["fid_real_images"]) == (20, 20)
    assert again["fid"] != other["fid"]
    assert evaluate.main([*args, "--out", str(tmp_path / "same.json"), "--fid", "20", "--seed", "0"]) == 0
    assert json.loads((tmp_path / "same.json").read_text())["fid"] == again["fid"]


def test_same_seed_same_numbers_in_two_processes(runs: dict[str, Path], tmp_path: Path) -> None:
    """A fresh process and this one (which trained nothing but has run other evaluations and
    drawn from the global RNG before) give the same eval.json and the same printed line."""
    args = [str(runs["vae"]), "--iw-samples", "10", "--seed", "3", "--device", "cpu", "--batch-size", "20"]
    proc = run_cli("resvae.cli.evaluate", *args, "--out", str(tmp_path / "fresh.json"), cwd=tmp_path)
    torch.randn(100)  # whatever this process drew before does not matter
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # while the other process runs
        assert evaluate.main([*args, "--out", str(tmp_path / "here.json")]) == 0
        assert evaluate.main([*args[:4], "4", *args[5:], "--out", str(tmp_path / "other.json")]) == 0
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    fresh, here, other = (
        json.loads((tmp_path / f"{name}.json").read_text()) for name in ("fresh", "here", "other")
    )
    for key in VARYING:
        fresh.pop(key, None)
        here.pop(key, None)
    assert fresh == here
    assert out == printed.getvalue().splitlines(keepends=True)[0]  # the printed line too
    assert (fresh["batches"], fresh["iw_samples"], fresh["seed"]) == (2, 10, 3)
    # the seed matters: another one draws other samples
    assert other["nll_iw_nats"] != fresh["nll_iw_nats"] and other["elbo_nats"] != fresh["elbo_nats"]
    assert other["psnr"] == fresh["psnr"]  # the posterior-mean reconstruction draws nothing


# ---------------------------------------------------------------------------------- failures
def poisoned_copy(run: Path, dest: Path, poison) -> Path:  # noqa: ANN001
    """A copy of `run` whose best.ckpt went through `poison(state_dict)`, saved with torch.save
    keeping the `resvae` entry."""
    copy = copy_run(run, dest)
    ckpt_path = copy / "checkpoints" / "best.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    poison(ckpt["state_dict"])
    torch.save(ckpt, ckpt_path)
    return copy


def test_nan_weights_fail_with_one_line(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    def all_nan(state: dict) -> None:
        for tensor in state.values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))

    copy = poisoned_copy(runs["vae"], tmp_path / "nan", all_nan)
    assert evaluate.main([str(copy), "--iw-samples", "2", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert "weights are not finite" in line and "best.ckpt" in line
    assert captured.out == "" and not (copy / "eval.json").exists()


def test_non_finite_values_in_a_batch_fail_naming_batch_and_quantity(
    runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """Finite weights whose outputs overflow: the first batch with a non-finite value stops the
    evaluation, never a finite average of the other batches."""

    def overflow(state: dict) -> None:
        name = next(k for k, v in state.items() if "decoder" in k and k.endswith("weight") and v.dim() == 4)
        state[name].mul_(1e38)

    copy = poisoned_copy(runs["vae"], tmp_path / "overflow", overflow)
    code = evaluate.main([str(copy), "--iw-samples", "2", "--device", "cpu", "--batch-size", "16"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert "batch 0 (images 0..15 of the test split)" in line and "is not finite" in line
    assert not (copy / "eval.json").exists()


def test_not_a_likelihood_reports_loss_but_no_bits_per_dim(runs: dict[str, Path], capsys) -> None:
    assert evaluate.main([str(runs["bernoulli"]), "--iw-samples", "5", "--device", "cpu"]) == 0
    result = json.loads((runs["bernoulli"] / "eval.json").read_text())
    assert set(REQUIRED) <= set(result)
    assert all(result[k] is None for k in ("bpd", "bpd_se", "bpd_iw", "bpd_iw_se"))
    assert "bernoulli" in result["bpd_refused"] and "not a normalised likelihood" in result["bpd_refused"]
    assert math.isfinite(result["elbo_nats"]) and math.isfinite(result["nll_iw_nats"])
    assert result["likelihood"] == "bernoulli"
    line = capsys.readouterr().out.strip()
    assert f"test loss {result['elbo_nats']:.1f} ± " in line and "nats/image" in line
    assert "bits/dim not reported: the bernoulli loss" in line and "bpd " not in line


def test_sweep_evaluates_the_good_runs_and_exits_1(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "multirun"
    good = copy_run(runs["vae"], sweep / "seed=0")
    broken = copy_run(runs["vae"], sweep / "seed=1")
    (broken / "checkpoints" / "best.ckpt").write_bytes(b"half a checkpoint")
    empty = sweep / "seed=2"
    (empty / "checkpoints").mkdir(parents=True)
    assert evaluate.main([str(sweep), "--iw-samples", "2", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert json.loads((good / "eval.json").read_text())["iw_samples"] == 2
    assert not (broken / "eval.json").exists()
    out = captured.out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{good}: test bpd ")
    lines = captured.err.strip().splitlines()
    assert (
        f"{good}: data: generated images (SyntheticDataModule, from the run's config: it reads no files)"
        in lines
    )
    # less the data lines and the progress lines (one per quarter of the batches, off a terminal)
    errors = [line for line in lines if ": data: " not in line and not line.startswith(f"{good}: batch ")]
    assert "Traceback" not in captured.err and len(errors) == 3, captured.err
    assert (
        errors[0].startswith(f"resvae-eval: error: {broken}: checkpoint ") and "cannot be read" in errors[0]
    )
    assert errors[1].startswith(f"resvae-eval: error: {empty}: no checkpoint in ")
    assert errors[2] == "resvae-eval: 2 of 3 runs failed"


def test_input_errors_are_one_line_and_exit_2(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    from fractions import Fraction

    def check(args: list[str], *expected: str) -> None:
        assert evaluate.main([*args, "--iw-samples", "1", "--device", "cpu"]) == 2
        line = one_error_line(capsys.readouterr().err)
        for text in expected:
            assert text in line, line

    check([str(tmp_path / "nowhere")], "does not exist")
    (tmp_path / "empty").mkdir()
    check([str(tmp_path / "empty")], "neither a run folder", "nor a sweep folder")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    check([str(tmp_path / "run")], "no checkpoint in", "neither best.ckpt nor last.ckpt")
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"resvae": {}, "payload": Fraction(1, 3)}, unsafe)
    check([str(unsafe)], "refused to load", "could run code")
    # a checkpoint without its run's config
    lone = tmp_path / "lone" / "x.ckpt"
    lone.parent.mkdir()
    shutil.copy(runs["vae"] / "checkpoints" / "best.ckpt", lone)
    check([str(lone)], "no run config", "--config")
    # missing data: never downloaded, the fix named
    cifar = copy_run(runs["vae"], tmp_path / "cifar")
    cfg = OmegaConf.load(cifar / ".hydra" / "config.yaml")
    cfg.data = {"_target_": "resvae.data.CIFAR10DataModule", "root": str(tmp_path / "no-data"),
                "download": True, "batch_size": 32, "val_size": 32, "seed": 0}  # fmt: skip
    OmegaConf.save(cfg, cifar / ".hydra" / "config.yaml")
    check([str(cifar)], "CIFAR-10 not found", "--data-root")
    check([str(cifar), "--data-root", str(tmp_path / "elsewhere")], "CIFAR-10 not found", "elsewhere")
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "elsewhere").exists()
    # a data config that names code outside resvae.data is not imported
    cfg.data = {"_target_": "os.system", "command": "echo hi"}
    OmegaConf.save(cfg, cifar / ".hydra" / "config.yaml")
    check([str(cifar)], "refusing to import", "os.system")


def test_validating_on_the_test_split_is_reported_as_not_held_out(
    runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    copy = copy_run(runs["vae"], tmp_path / "val-on-test")
    cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
    cfg.data.val_source = "test"
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    assert evaluate.main([str(copy), "--iw-samples", "0", "--device", "cpu"]) == 0
    result = json.loads((copy / "eval.json").read_text())
    assert result["held_out"] is False and "data.val_source=test" in result["held_out_note"]
    assert result["iw_samples"] is None and result["bpd_iw"] is None and result["bpd"] is not None
    line = capsys.readouterr().out
    assert "not held out: data.val_source=test" in line and "(IW" not in line


# ---------------------------------------------------------------------------------- diagnostics
def test_active_units_and_kl_per_dimension() -> None:
    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.0, 0.05, 0.2, 1.0, 0.001])  # std of the posterior means per dim
    mu = torch.randn(4000, 5, generator=g) * spread
    logvar = torch.randn(4000, 5, generator=g) * 0.1 - 1
    count, variance = active_units(mu)
    assert count == 2  # var 0.04 and 1.0 pass 0.01; 0.0025, 1e-6 and 0 do not
    assert variance.shape == (5,) and variance[3] == pytest.approx(1.0, rel=0.1)
    assert active_units(mu, threshold=0.001)[0] == 3
    kl = kl_per_dimension(mu, logvar)
    assert kl.shape == (5,)
    assert torch.allclose(kl, gaussian_kl(mu, logvar).mean(0).double(), rtol=1e-5)
    # batch by batch: the same numbers
    stats = PosteriorStats()
    for start in range(0, 4000, 700):  # uneven batches
        stats.update(mu[start : start + 700], logvar[start : start + 700])
    streamed = stats.compute()
    assert streamed["active_units"] == count
    assert torch.allclose(streamed["mu_variance"], variance, rtol=1e-9, atol=1e-15)
    assert torch.allclose(streamed["kl_per_dim"], kl, rtol=1e-9)
    # spatial latents count each element as a dimension
    assert active_units(mu.view(4000, 5, 1, 1))[0] == 2
    with pytest.raises(ValueError):
        PosteriorStats().compute()


def test_validation_split_matches_the_runs_best_val_loss(runs: dict[str, Path], tmp_path: Path) -> None:
    """best.ckpt holds the weights of the epoch with the lowest val/loss: on the same
    validation images the evaluation finds that loss again (up to the one-sample noise)."""
    out = tmp_path / "val.json"
    assert evaluate.main([str(runs["vae"]), "--split", "val", "--iw-samples", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    summary = json.loads((runs["vae"] / "summary.json").read_text())
    assert (result["split"], result["n_images"], result["held_out"]) == ("val", 32, False)
    assert "chose best.ckpt" in result["held_out_note"]
    assert result["elbo_nats"] == pytest.approx(summary["best_val_loss"], rel=1e-3)
    train = tmp_path / "train.json"
    assert (
        evaluate.main([str(runs["vae"]), "--split", "train", "--iw-samples", "0", "--out", str(train)]) == 0
    )
    assert json.loads(train.read_text())["n_images"] == 128 - 32
