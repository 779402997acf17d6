"""A sweep stopped by a signal (resvae/sweep/callbacks.py, jobs.py): its report lists the interrupted job
as interrupted (not failed) and the jobs that never started as not started, and is written even
though W&B has shut down by the time the report is logged."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict, read_write

from resvae.run.config import config_dir, run_leaf
from resvae.sweep import callbacks as hydra_callbacks
from resvae.sweep.callbacks import finish_sweep
from resvae.sweep.jobs import SweepJob, format_sweep_report, sweep_jobs
from tests.helpers.config import TINY
from tests.helpers.processes import finish_logged, start_logged, wait_for_logged
from tests.helpers.records import read_status, run_dirs, summary_of, sweep_folders


def sweep_config(overrides: list[str], sweeps: list[str] = ()):
    """The config a multirun's process has: composed from `overrides`, with the command line's
    `sweeps` (which compose refuses outside a multirun) added to hydra.overrides.task."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.overrides.task = [*overrides, *sweeps]
    return cfg


def job(folder: Path, status: str, **extra) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": status, **extra}))
    return folder


# ----------------------------------------------------------------------------- no training
def test_the_job_list_of_a_basic_sweep_is_the_sweepers() -> None:
    """The command line's sweeps crossed with the config's hydra.sweeper.params, in the basic
    sweeper's order; each job's folder is the subdir Hydra gives it (run_leaf of its overrides)."""
    cfg = sweep_config(["experiment=depth_sweep", "logger=csv"], ["seed=0,1"])
    jobs = sweep_jobs(cfg)
    assert jobs is not None and len(jobs) == 8
    assert jobs[0].overrides == ("model.arch.depth=28", "experiment=depth_sweep", "logger=csv", "seed=0")
    assert jobs[1].overrides == ("model.arch.depth=28", "experiment=depth_sweep", "logger=csv", "seed=1")
    assert [j.overrides[0] for j in jobs[::2]] == [f"model.arch.depth={d}" for d in (28, 40, 70, 100)]
    for j in jobs:
        leaf = run_leaf(list(j.overrides), cfg.run.excludes, cfg.run.name_excludes)
        assert j.folder == Path(cfg.hydra.sweep.dir) / leaf
    assert len({j.folder for j in jobs}) == 8
    optuna = sweep_config(["+hparams_search=vae_lr_latent", *TINY])
    assert sweep_jobs(optuna) is None  # Optuna picks its trials as it goes: no list to compare


def test_report_tells_interrupted_and_not_started_from_failed(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job(sweep / "a", "finished", depth=28)
    job(sweep / "b", "interrupted", error="SystemExit: 143")
    job(sweep / "c", "failed", error="RuntimeError: boom")
    jobs = [SweepJob((f"x={n}",), sweep / n) for n in "abcd"]
    text, not_done = format_sweep_report(sweep, jobs=jobs)
    assert text.startswith(f"sweep {sweep}: 4 job(s)\n")
    assert "\n  d                                        not started" in text
    assert f"1 job(s) FAILED:\n  {sweep / 'c'}: RuntimeError: boom\n" in text
    assert f"1 job(s) interrupted (rerun the same command to resume them):\n  {sweep / 'b'}\n" in text
    assert text.endswith(f"1 job(s) not started (rerun the same command to run them):\n  {sweep / 'd'}")
    assert "SystemExit" not in text and not_done == 3
    # a job this process started but that was refused (it wrote nothing) is not "not started"
    text, not_done = format_sweep_report(sweep, refused=[str(sweep / "d")], jobs=jobs)
    assert "not started" not in text and "did not run in this sweep" in text and not_done == 3
    text, _ = format_sweep_report(sweep, jobs=jobs, started={("x=d",)})
    assert "not started" not in text


def test_a_failing_wandb_log_leaves_the_report_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    job(sweep / "a", "finished", depth=28, best_val_loss=1.0)

    def closed(*args, **kwargs) -> None:
        raise ConnectionResetError("the service is gone")

    monkeypatch.setattr(hydra_callbacks, "log_report_to_wandb", closed)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert finish_sweep(sweep, {"project": "p", "group": "g", "entity": None}) == 0
    out = capsys.readouterr().out
    assert (sweep / "report.md").is_file() and f"report: {sweep / 'report.html'}" in out
    (line,) = [x for x in out.splitlines() if "W&B" in x]
    assert line.startswith("W&B logging of the report skipped: ConnectionResetError: the service is gone")
    assert "report not complete" not in out


# ----------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_sigterm_during_the_second_job_reports_interrupted_and_not_started(tmp_path: Path) -> None:
    """Three jobs under the basic launcher, W&B offline: the first is short (3 steps), the
    second runs until SIGTERM comes, the third never starts. The sweep exits 143 with a report
    that says so, written in full, and no job shows as failed."""
    steps = "+trainer.max_steps=3,100000,100001"  # in the folder name: one folder per job
    proc, out = start_logged(
        tmp_path, "-m", *TINY, "trainer.max_epochs=200", "test=false", steps, "logger=wandb"
    )

    def second_job_saved() -> bool:
        # the second job's folder by name: the first job, too, is `running` with a last.ckpt at its end
        for summary in tmp_path.glob("outputs/**/max_steps=100000/summary.json"):
            if read_status(summary) == "running" and (summary.parent / "checkpoints" / "last.ckpt").is_file():
                return True
        return False

    wait_for_logged(second_job_saved, proc, out, "the second job's first checkpoint", timeout=240)
    proc.send_signal(signal.SIGTERM)
    text = finish_logged(proc, out, timeout=180)
    assert proc.returncode == 143, text[-4000:]
    (sweep,) = sweep_folders(tmp_path)
    jobs = {re.search(r"max_steps=(\d+)", name)[1]: folder for name, folder in run_dirs(sweep).items()}
    assert sorted(jobs) == ["100000", "3"]  # the third job has no folder
    assert (
        summary_of(jobs["3"])["status"] == "finished"
        and summary_of(jobs["100000"])["status"] == "interrupted"
    )
    report = text[text.index(f"sweep outputs/smoke/multirun/{sweep.name}: 3 job(s)") :]
    assert "1 job(s) interrupted (rerun the same command to resume them):\n  " in report
    third = next(line for line in report.splitlines() if "max_steps=100001" in line)
    assert third.split()[-2:] == ["not", "started"]
    assert "1 job(s) not started (rerun the same command to run them):" in report
    assert "FAILED" not in report and "report not complete" not in report
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file()
    skipped = [line for line in report.splitlines() if line.startswith("W&B logging of the report")]
    assert len(skipped) <= 1 and all(
        line.startswith("W&B logging of the report skipped: ") for line in skipped
    )
