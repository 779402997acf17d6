"""Sweep jobs are named by what the sweep varies (`depth=40`), the same command finds the same
folders, and a job folder named by an earlier version (its full overrides) is still found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resvae.run.config import SWEEP_KEYS_ENV, job_leaf, run_leaf, short_names, varied_keys
from tests.helpers.config import TINY


def test_the_keys_a_sweep_varies_come_from_its_command_line_and_its_sweeper() -> None:
    task = ["experiment=smoke", "model.arch.depth=28,40", "seed=0,1", "data.batch_size=64"]
    assert varied_keys(task, {"model.optimizer.lr": "interval(1e-4, 1e-2)"}) == [
        "model.arch.depth", "seed", "model.optimizer.lr",
    ]  # fmt: skip
    assert varied_keys(["model.arch.depth=28"], None) == []


def test_short_names_read_well_and_never_collide() -> None:
    names = short_names(
        ["model.arch.depth", "model.arch.latent_dim", "model.optimizer.lr", "data.seed", "seed"]
    )
    assert names == {
        "model.arch.depth": "depth", "model.arch.latent_dim": "latent", "model.optimizer.lr": "lr",
        "data.seed": "data.seed", "seed": "seed",
    }  # fmt: skip


def test_a_job_is_named_by_the_swept_keys_only_and_never_cut(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    overrides = [f"data.option{i}=value{i}" for i in range(20)] + ["model.optimizer.lr=0.0003", "seed=2"]
    assert len(run_leaf(overrides)) <= 120 and "seed" not in run_leaf(overrides)  # the old name lost it
    monkeypatch.setenv(SWEEP_KEYS_ENV, "model.optimizer.lr,seed")
    assert job_leaf(overrides, sweep_dir=str(tmp_path)) == "lr=0.0003,seed=2"
    monkeypatch.setenv(SWEEP_KEYS_ENV, "logger,model.optimizer.lr")
    assert job_leaf(overrides, ["logger"], sweep_dir=str(tmp_path)) == "lr=0.0003"  # excluded keys: not
    monkeypatch.delenv(SWEEP_KEYS_ENV)
    assert job_leaf(overrides, sweep_dir=str(tmp_path)) == run_leaf(overrides)  # no sweep: as before


def test_a_folder_of_an_earlier_version_is_used_where_the_new_name_is_missing(monkeypatch, tmp_path) -> None:
    overrides = ["data.batch_size=64", "model.arch.depth=40"]
    monkeypatch.setenv(SWEEP_KEYS_ENV, "model.arch.depth")
    (tmp_path / run_leaf(overrides)).mkdir()
    assert job_leaf(overrides, sweep_dir=str(tmp_path)) == run_leaf(overrides)
    (tmp_path / "depth=40").mkdir()  # both exist: the new name
    assert job_leaf(overrides, sweep_dir=str(tmp_path)) == "depth=40"


@pytest.mark.slow
def test_a_depth_sweep_names_its_jobs_by_depth_and_a_rerun_finds_them(run_train, tmp_path: Path) -> None:
    args = ["-m", *TINY, "trainer.max_epochs=1", "logger=csv", "model.arch.depth=28,40"]
    run_train(*args)
    (sweep,) = (tmp_path / "outputs" / "smoke" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert jobs == ["depth=28", "depth=40"]
    summary = json.loads((sweep / "depth=40" / "summary.json").read_text())
    assert "model.arch.depth=40" in summary["overrides"] and "data.train_size=128" in summary["overrides"]
    again = run_train(*args)
    assert again.stdout.count("finished") >= 2 and "already finished" in again.stdout + again.stderr
    assert sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file()) == jobs
