"""The training app end to end: config composition, a smoke run, multiruns, launchers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from resvae.run.checkpoints import read_checkpoint
from resvae.run.config import config_dir
from tests.helpers.browser import open_in_chromium
from tests.helpers.config import TINY, compose_train
from tests.helpers.records import metric_rows, only_run_dir, run_dirs

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
SUMMARY_KEYS = {
    "network",
    "protocol",
    "layers",
    "min_train_loss",
    "min_val_loss",
    "config_hash",
    "depth",
    "blocks",
    "params",
    "epochs",
    "stopped_early",
    "train_seconds",
    "train_loss",
    "val_loss",
    "best_val_loss",
    "test_bpd",
    "images_per_second",
    "device",
    "precision",
    "float32",
    "git_commit",
    "status",
}


DATA = sorted(p.stem for p in (config_dir() / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
# (experiment, data, model) combinations that are refused on purpose, with the words of the error:
# depth_sweep sets the suite's likelihood, which the study's network (model=keras2018) has not
EXCLUDED: dict[tuple[str, str, str], str] = {
    **{
        (e, data, "keras2018"): "likelihood"
        for e in ("depth_sweep", "hierarchy_depth_sweep")
        for data in ("cifar10", "synthetic")
    },
    # the experiments about the ResNet's blocks (shortcuts, pre-activation) need model=vae or ae
    **{
        (e, d, m): "of the ResNet (network=resnet)"
        for e in ("degradation", "identity_mappings")
        for d in ("cifar10", "synthetic")
        for m in ("mlp_vae", "mlp_ae", "hvae")
    },
    **{
        (e, d, "keras2018"): "unexpected keyword argument"
        for e in ("degradation", "identity_mappings")
        for d in ("cifar10", "synthetic")
    },
}


@pytest.mark.parametrize("model_group", MODELS)
@pytest.mark.parametrize("data_group", DATA)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_every_data_and_model_group(
    experiment: str, data_group: str, model_group: str, tmp_path: Path
) -> None:
    """Experiments set only keys that every data and model group accepts (or refuse clearly)."""
    overrides = [
        f"experiment={experiment}",
        f"data={data_group}",
        f"model={model_group}",
        "model.arch.width=2",
    ]
    expected_error = EXCLUDED.get((experiment, data_group, model_group))
    try:
        cfg = compose_train(overrides)
        model = instantiate(cfg.model, _convert_="all")
        datamodule = instantiate(cfg.data)
    except Exception as err:
        assert expected_error and expected_error in str(err), f"{overrides}: {err}"
        return
    assert expected_error is None, f"{overrides} should have been refused"
    assert model.arch.depth == cfg.model.arch.depth
    assert datamodule.batch_size == cfg.data.batch_size


def test_experiments_set_the_protocols() -> None:
    seed = compose_train(["experiment=seed_depth_sweep"], hydra_cfg=True)  # see nn/test_keras2018.py
    assert seed.model._target_.endswith("Keras2018VAE") and seed.protocol == "keras2018"
    assert str(seed.hydra.mode) == "RunMode.MULTIRUN"
    # the study's protocol with the suite's network
    suite = compose_train(["experiment=seed_depth_sweep", "model=vae"])
    assert suite.model._target_.endswith(".VAE") and suite.data.batch_size == 25

    modern = compose_train(["experiment=depth_sweep"], hydra_cfg=True)
    assert modern.model.likelihood == "logistic_mixture" and modern.data.batch_size > 25
    assert modern.model.optimizer._target_ == "torch.optim.AdamW"
    assert modern.hydra.sweeper.params["model.arch.depth"] == "28,40,70,100"

    smoke = compose_train(["experiment=smoke"])
    assert smoke.data._target_.endswith("SyntheticDataModule") and smoke.trainer.accelerator == "cpu"


def test_launcher_configs_compose() -> None:
    slurm = compose_train(["hydra/launcher=slurm"], hydra_cfg=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.max_num_timeout > 0 and slurm.hydra.launcher.gpus_per_node == 1
    plain = compose_train(["hydra/launcher=submitit_slurm"], hydra_cfg=True)
    assert plain.hydra.launcher._target_.endswith("SlurmLauncher")
    local = compose_train(["hydra/launcher=submitit_local"], hydra_cfg=True)
    assert local.hydra.launcher._target_.endswith("LocalLauncher")


def test_unknown_config_key_is_a_clear_error() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="dpeth"):
        compose_train(["model.arch.dpeth=40"])
    with pytest.raises(ConfigCompositionException, match="experiment"):
        compose_train(["experiment=no_such_experiment"])


def wandb_run_log(run_dir: Path) -> str:
    (log,) = run_dir.glob("wandb/offline-run-*/logs/debug.log")
    return log.read_text()


@pytest.mark.slow
def test_smoke_run_writes_everything_a_run_promises(run_train, tmp_path: Path) -> None:
    proc = run_train(*TINY, "trainer.max_epochs=2", "logger=wandb")
    run_dir = only_run_dir(tmp_path / "outputs" / "smoke")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    for kind in ("samples", "recon"):
        assert sorted(p.name for p in (run_dir / kind).glob("*.png")) == [
            "epoch_001.png",
            "epoch_002.png",
        ]  # the Nth epoch, from 1

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["status"] == "finished" and summary["epochs"] == 2 and summary["depth"] == 28
    # one line with the result, in the console and in train.log
    done = (
        f"done: 2 epochs; best epoch {summary['best_epoch']}; best val {summary['min_val_bpd']:.4f} bits/dim"
    )
    assert done in proc.stdout + proc.stderr and done in (run_dir / "train.log").read_text()
    assert f"test {summary['test_bpd']:.4f} bits/dim (ELBO)" in (run_dir / "train.log").read_text()
    assert summary["blocks"] == [1, 1, 1, 1] and summary["params"] > 0
    assert summary["best_val_loss"] <= summary["val_loss"] + 1e-6
    assert summary["test_bpd"] > 0 and summary["images_per_second"] > 0
    # testing best.ckpt (epoch 1 of 2 or earlier) does not roll the training record back to it
    assert len(summary["epochs_timed"]) == 2
    assert sum(e["train_seconds"] for e in summary["epochs_timed"]) == pytest.approx(
        summary["train_seconds"], abs=0.01
    )
    assert summary["warmup_seconds"] > 0 and summary["val_active_units"] is not None
    # each checkpoint names the run's config too (how a folder whose summary.json is lost is checked)
    for name in ("last.ckpt", "best.ckpt"):
        tag = read_checkpoint(run_dir / "checkpoints" / name)["resvae"]
        assert tag["run"]["config_hash"] == summary["config_hash"] and tag["model_class"] == "VAE"

    rows = metric_rows(run_dir)
    val_epochs = [r["epoch"] for r in rows if r.get("val/loss")]
    train_epochs = [r["epoch"] for r in rows if r.get("train/loss")]
    assert val_epochs == ["1", "2"] and train_epochs == ["1", "2"]  # the Nth epoch, from 1
    assert summary["best_epoch"] in (1, 2) and summary["epochs"] == 2  # the same numbering
    assert f"epoch_{summary['best_epoch']:03d}.png" in {p.name for p in (run_dir / "samples").iterdir()}
    assert {"val/bpd", "val/psnr", "val/ssim", "train/recon", "train/kl", "test/bpd", "test/nll_iw"} <= rows[
        0
    ].keys()

    # the offline W&B run holds the logged sample and reconstruction images
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = [p.name for p in (runs[0] / "files" / "media" / "images").glob("*.png")]
    assert any(n.startswith("samples") for n in media) and any(n.startswith("recon") for n in media)
    assert "epoch 2/2" in proc.stdout  # plain progress lines

    # the same command again finds the finished run and does not train it twice
    mtime = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    again = run_train(*TINY, "trainer.max_epochs=2", "logger=csv")
    assert "already finished" in again.stdout + again.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_depth_multirun_writes_one_folder_per_job(run_train, tmp_path: Path) -> None:
    proc = run_train("-m", *TINY, "model.arch.depth=28,34", "trainer.max_epochs=1", "logger=csv")
    jobs = run_dirs(tmp_path / "outputs" / "smoke" / "multirun")
    assert len(jobs) == 2
    for depth, blocks in ((28, [1, 1, 1, 1]), (34, [1, 1, 2, 1])):
        (job,) = [d for name, d in jobs.items() if name.endswith(f"depth={depth}")]  # named by what varies
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert summary["depth"] == depth and summary["blocks"] == blocks
        assert (job / "checkpoints" / "best.ckpt").is_file()
    assert "2 job(s)" in proc.stdout
    (sweep,) = (tmp_path / "outputs" / "smoke" / "multirun").glob("*/multirun.yaml")  # this sweep's folder
    sweep = sweep.parent
    assert {p.name for p in jobs.values()} <= {p.name for p in sweep.iterdir()}
    # the sweep's report, as a user opens it: every job's row, every image loaded, no errors
    errors, first_cells, images, _ = open_in_chromium(sweep / "report.html", tmp_path / "report.png")
    assert errors == [] and sorted(first_cells) == sorted(jobs)
    assert images and all(complete and width > 0 for _, complete, width in images), images


@pytest.mark.slow
def test_failing_job_does_not_stop_the_sweep(run_train, tmp_path: Path) -> None:
    """A job that fails at run time (here: it diverges; an impossible value of a sweep is refused
    before any job starts, tests/run/test_preflight.py)."""
    proc = run_train(
        "-m", *TINY, "model.optimizer.lr=1e6,1e-3", "trainer.max_epochs=1", "logger=wandb", check=False
    )
    assert proc.returncode == 1
    jobs = run_dirs(tmp_path / "outputs" / "smoke" / "multirun")
    (bad,) = [d for name, d in jobs.items() if name.endswith("lr=1000000.0")]  # Hydra writes 1e6 so
    (good,) = [d for name, d in jobs.items() if name.endswith("lr=0.001")]
    failed = json.loads((bad / "summary.json").read_text())
    assert failed["status"] == "failed" and "diverged" in failed["error"]
    assert json.loads((good / "summary.json").read_text())["status"] == "finished"
    # each job had its own W&B run, closed with the job's exit code (W&B's own run log says so)
    assert "got exitcode: 1" in wandb_run_log(bad) and "got exitcode: 0" in wandb_run_log(good)
    assert "1 job(s) FAILED" in proc.stdout and "lr=1000000.0: " in proc.stdout
    # the user error is one clear line, not a traceback; the traceback is in the job's log
    assert "Traceback" not in proc.stderr and "resvae-train: error: diverged" in proc.stderr
    assert "Traceback" in (bad / "train.log").read_text()


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_job(run_train, tmp_path: Path) -> None:
    run_train("-m", "hydra/launcher=submitit_local", *TINY, "trainer.max_epochs=1", "logger=csv")
    summary = json.loads(
        (only_run_dir(tmp_path / "outputs" / "smoke" / "multirun") / "summary.json").read_text()
    )
    assert summary["status"] == "finished" and summary["epochs"] == 1


@pytest.mark.parametrize("flags", [["--help"], ["--cfg", "job", "experiment=smoke"]])
def test_help_and_the_config_answer_without_torch(flags: list[str]) -> None:
    """resvae-train --help names the groups and experiments without importing torch or Lightning;
    --cfg job without Lightning (they take seconds to import; a job imports them when it runs)."""
    code = (
        "import sys\nfrom resvae.cli.train import cli\n"
        f"sys.argv = ['resvae-train', *{flags!r}]\n"
        "try:\n    cli()\nexcept SystemExit as e:\n    print('EXIT', e.code)\nelse:\n    print('EXIT', 0)\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    # --help exits 0, --cfg job returns (the process would exit 0)
    assert out.stdout.splitlines()[-2] == "EXIT 0", out.stdout[-500:] + out.stderr[-500:]
    if flags == ["--help"]:
        assert "IMPORTED []" in out.stdout, out.stdout[-500:] + out.stderr[-500:]
        assert "experiment: degradation, depth_sweep" in out.stdout and "resvae-train --cfg job" in out.stdout
        listed = out.stdout.split("Experiments (experiment=...):")[1].split("Config groups")[0]
        assert set(EXPERIMENTS) == {name.strip() for name in listed.replace("\n", " ").split(",")}
    else:  # Hydra resolves trainer.precision (${auto_precision:}), which asks torch for CUDA
        assert "name: smoke" in out.stdout and "'lightning'" not in out.stdout.splitlines()[-1]


def test_dash_m_after_the_overrides_is_moved_before_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra's parser takes flags before the overrides only; `resvae-train a=1 -m b=2` would be
    a usage error of nine lines."""
    import resvae.cli.train as app

    given: list[list[str]] = []
    monkeypatch.setattr(app, "main", lambda: given.append(sys.argv[1:]))
    monkeypatch.setattr(sys, "argv", ["resvae-train", "experiment=smoke", "-m", "seed=1,2", "--multirun"])
    app.cli()
    assert given == [["-m", "--multirun", "experiment=smoke", "seed=1,2"]]
