"""A run's records stay true under what a hostile cluster does: divergence, an edited config,
two trainers on one folder, leftovers of kills, an unreadable summary, an unsafe checkpoint,
W&B switched off, and SIGKILL at random moments followed by reruns."""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from resvae.data import write_batch
from resvae.run.checkpoints import read_checkpoint
from tests.helpers.config import TINY
from tests.helpers.processes import start_piped, wait_for_piped
from tests.helpers.records import metric_rows, only_run_dir, summary_of

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_diverged_run_never_reports_a_perfect_model(run_train, tmp_path: Path, optimizer: str) -> None:
    proc = run_train(
        *TINY,
        "logger=csv",
        f"optimizer={optimizer}",
        "model.optimizer.lr=1e6",
        "trainer.max_epochs=3",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    summary = summary_of(run_dir)
    assert summary["status"] == "failed"
    assert "diverged" in summary["error"] or "no update of epoch" in summary["error"]
    assert summary.get("test_bpd") is None  # nothing was tested on a diverged model
    assert summary.get("min_train_loss") != 0.0 and summary.get("train_loss") != 0.0  # never a perfect 0
    rows = metric_rows(run_dir)
    assert not any(r.get("train/loss") in ("0", "0.0") for r in rows)
    if "diverged" in summary["error"]:  # a non-finite validation: never a number, never the best
        assert summary["val_loss"] is None and summary.get("best_val_loss") is None
        assert summary["val_nonfinite_batches"] >= 1
        val = [r for r in rows if r.get("val/loss")]
        assert val and all(r["val/loss"] == "nan" for r in val)


# ------------------------------------------------------------------------------ config hash

EXPERIMENT = """# @package _global_
defaults:
  - override /data: synthetic
  - override /trainer: cpu
name: mine
data: {{train_size: 96, val_size: 32, test_size: 16, batch_size: 32}}
model: {{arch: {{width: 2, latent_dim: 8}}, optimizer: {{lr: {lr}}}}}
trainer: {{max_epochs: 1}}
"""


def test_an_edited_experiment_is_refused_with_what_differs(run_train, tmp_path: Path) -> None:
    conf = tmp_path / "myconf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(EXPERIMENT.format(lr=0.002))
    args = ["--config-dir", str(tmp_path / "myconf"), "experiment=mine", "logger=csv"]
    run_train(*args)
    run_dir = only_run_dir(tmp_path / "outputs")
    before = {
        p: p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in (".ckpt", ".json", ".csv")
    }

    hydra_record = (run_dir / ".hydra" / "config.yaml").read_text()

    (conf / "mine.yaml").write_text(EXPERIMENT.format(lr=0.003))
    proc = run_train(*args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "another configuration" in proc.stderr and "model.optimizer.lr: 0.002 -> 0.003" in proc.stderr
    after = {
        p: p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix in (".ckpt", ".json", ".csv")
    }
    assert after == before  # the old result is neither returned as new nor touched
    assert (run_dir / ".hydra" / "config.yaml").read_text() == hydra_record  # nor its record of the config
    assert "already finished" not in proc.stdout + proc.stderr

    # a checkpoint of another config copied into the folder is refused too, even with summary.json there
    run_train(*args, "name=other")  # mine.yaml has lr 0.003 now
    (other,) = [d for d in (tmp_path / "outputs" / "other").iterdir() if d.is_dir()]
    shutil.copy(other / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    (conf / "mine.yaml").write_text(EXPERIMENT.format(lr=0.002))
    proc = run_train(*args, "trainer.max_epochs=2", check=False)
    assert (
        proc.returncode == 2
        and "its checkpoints/last.ckpt: model.optimizer.lr: 0.003 -> 0.002" in proc.stderr
    )


def write_archive(root: Path, seed: int) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    write_batch(folder / "data_batch_1", rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8))
    write_batch(folder / "test_batch", rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8))
    return root


def test_other_data_under_the_same_folder_is_refused(run_train, tmp_path: Path) -> None:
    args = [
        "data=cifar10", "data.download=false", "data.batch_size=16", "data.val_size=16", "trainer=cpu",
        "model.arch.width=2", "model.arch.latent_dim=8", "trainer.max_epochs=1", "logger=none", "test=false",
    ]  # fmt: skip
    run_train(*args, f"data.root={write_archive(tmp_path / 'a', 0)}")
    proc = run_train(*args, f"data.root={write_archive(tmp_path / 'b', 1)}", check=False)
    assert proc.returncode == 2 and "other images than those data.root now gives" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the same images moved elsewhere (or reached through another relative path) are the same run
    (tmp_path / "a").rename(tmp_path / "moved")
    run_train(*args, f"data.root={tmp_path / 'moved'}", "trainer.max_epochs=2")


# ------------------------------------------------------------------------------ one trainer per folder


def test_a_second_trainer_is_refused_and_a_dead_ones_folder_is_taken_over(run_train, tmp_path: Path) -> None:
    args = [*TINY, "logger=csv", "trainer.max_epochs=200", "test=false"]
    first = start_piped(tmp_path, *args)
    try:
        wait_for_piped(lambda: list(tmp_path.glob("outputs/**/summary.json")), first)
        second = run_train(*args, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"in use by another trainer (pid {first.pid} on host" in second.stderr
    finally:
        first.kill()
        out, _ = first.communicate()
    assert first.returncode == -signal.SIGKILL, out  # it was still training when killed
    run_dir = only_run_dir(tmp_path / "outputs")
    assert summary_of(run_dir)["status"] == "running"  # the second one wrote nothing

    # the killed trainer's lock went with its process: the next one takes the folder over, and
    # trains one epoch past the killed one's last checkpoint (how far it got depends on timing)
    last = run_dir / "checkpoints" / "last.ckpt"
    reached = int(read_checkpoint(last)["epoch"]) if last.exists() else 0
    third = run_train(*TINY, "logger=csv", f"trainer.max_epochs={reached + 1}", "test=false")
    assert "took over the run folder from pid" in third.stdout + third.stderr


# ------------------------------------------------------------------------------ leftovers of a kill


def test_leftovers_of_a_killed_attempt_are_cleaned_or_kept_aside(run_train, tmp_path: Path) -> None:
    args = [*TINY, "logger=csv", "test=false"]
    run_train(*args, "trainer.max_epochs=1")
    run_dir = only_run_dir(tmp_path / "outputs")
    partial = [run_dir / "checkpoints" / ".last.ckpt.k1ll3d.tmp", run_dir / ".summary.json.x.tmp"]
    for path in partial:
        path.write_bytes(b"\0" * 1024)
    (run_dir / "summary.json").write_text('{"status": "finis')

    proc = run_train(*args, "trainer.max_epochs=2")
    out = proc.stdout + proc.stderr
    assert not any(p.exists() for p in partial) and "removed 2 unfinished file(s)" in out
    assert "summary.json is unreadable" in out and "resuming from" in out
    (aside,) = run_dir.glob("summary.json.unreadable-*")
    assert aside.read_text() == '{"status": "finis'
    summary = summary_of(run_dir)
    assert summary["status"] == "finished" and summary["epochs"] == 2

    # a finished run's summary.json lost again: the record comes back from its checkpoint
    (run_dir / "summary.json").write_text("[1, 2]")
    run_train(*args, "trainer.max_epochs=2", "test=true")
    rebuilt = summary_of(run_dir)
    for key in ("epochs", "best_val_loss", "min_train_loss", "min_val_loss", "params", "depth"):
        assert rebuilt[key] == summary[key], key
    assert rebuilt["status"] == "finished" and rebuilt["tested"] and rebuilt["test_bpd"] > 0

    # and a checkpoint beyond a lowered max_epochs is a clear refusal, not Lightning's traceback
    run_train(*args, "trainer.max_epochs=3", "test=false")  # last.ckpt: epoch 2 (its validation)
    interrupted = {**summary_of(run_dir), "status": "interrupted"}
    (run_dir / "summary.json").write_text(json.dumps(interrupted))
    proc = run_train(*args, "trainer.max_epochs=1", check=False)
    assert proc.returncode == 2 and "is at epoch" in proc.stderr and "trainer.max_epochs=" in proc.stderr


# ------------------------------------------------------------------------------ unsafe checkpoints


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(run_train, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"resvae": {"model_class": "VAE"}, "state_dict": {}, "payload": RunsCode(marker)}, crafted)
    proc = run_train(*TINY, "logger=none", f"resume='{crafted}'", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "refused to load" in proc.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------ W&B disabled


def test_wandb_mode_disabled_writes_no_wandb_run(run_train, tmp_path: Path) -> None:
    run_train(*TINY, "logger=wandb", "trainer.max_epochs=1", "test=false", env={"WANDB_MODE": "disabled"})
    run_dir = only_run_dir(tmp_path / "outputs")
    assert summary_of(run_dir)["status"] == "finished"
    assert not list(run_dir.glob("wandb/*run-*")) and (run_dir / "metrics.csv").is_file()


# ------------------------------------------------------------------------------ kill campaigns

CAMPAIGN = [*TINY, "logger=csv", "trainer.max_epochs=4", "callbacks.early_stopping.patience=100"]


def by_epoch(rows: list[dict[str, str]]) -> dict[tuple[str, str], str]:
    """(epoch or step, metric) -> value, failing on any pair logged twice."""
    seen: dict[tuple[str, str], str] = {}
    for row in rows:
        where = row.get("epoch") or f"step {row.get('step')}"
        for key, value in row.items():
            if key in ("epoch", "step") or value == "":
                continue
            assert (where, key) not in seen, f"{key} logged twice at {where}"
            seen[where, key] = value
    return seen


def test_random_sigkills_and_reruns_keep_metrics_csv_true(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    reference.mkdir()
    proc = start_piped(reference, *CAMPAIGN)
    assert proc.wait(timeout=300) == 0
    want = by_epoch(metric_rows(only_run_dir(reference / "outputs")))

    rng = random.Random(12)
    root = tmp_path / "killed"
    root.mkdir()
    kills = 0
    for attempt in range(6):
        proc = start_piped(root, *CAMPAIGN)
        if attempt < 5:
            time.sleep(rng.uniform(3.0, 9.0))  # start-up is ~4 s, the whole run ~10 s
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, out  # killed above: nothing else may stop it
        kills += 1
    else:
        raise AssertionError("the run never finished")
    assert kills >= 2, "the campaign must actually kill runs"
    run_dir = only_run_dir(root / "outputs")
    have = by_epoch(metric_rows(run_dir))
    assert set(have) == set(want)
    for key, value in want.items():
        assert float(have[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    assert not list(run_dir.rglob(".*.tmp"))
    assert summary_of(run_dir)["status"] == "finished"
