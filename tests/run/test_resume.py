"""Preemption: a run killed (SIGKILL) or stopped (SIGTERM) and restarted with the same command
continues where it stopped and ends where an uninterrupted run ends."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.config import TINY
from tests.helpers.processes import start_piped, wait_for_first_checkpoint
from tests.helpers.records import epoch_rows, final_weights, output_run_dir

ARGS = [
    *TINY,
    "trainer.max_epochs=4",
    "logger=csv",
    "test=false",
    "callbacks.early_stopping.patience=100",
    "model.optimizer.lr=5e-3",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    proc = start_piped(root, *ARGS)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return root


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_and_matches_an_uninterrupted_one(
    sig, uninterrupted: Path, tmp_path: Path
) -> None:
    proc = start_piped(tmp_path, *ARGS)
    wait_for_first_checkpoint(tmp_path, proc)
    time.sleep(0.3)  # into the next epoch: a mid-epoch stop
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    # SIGKILL: the kernel's -9 (no handler runs); SIGTERM: the run's own exit, 128 + 15
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 143), out
    if sig == signal.SIGTERM:
        assert "SIGTERM: saved" in out, out
        summary = (output_run_dir(tmp_path) / "summary.json").read_text()
        assert '"interrupted"' in summary

    resumed = start_piped(tmp_path, *ARGS)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming from" in out

    expected, expected_ckpt = final_weights(uninterrupted)
    got, got_ckpt = final_weights(tmp_path)
    assert got_ckpt["epoch"] == expected_ckpt["epoch"]
    assert got_ckpt["global_step"] == expected_ckpt["global_step"]
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # optimizer, early stopping and scheduler state continue too
    assert (
        got_ckpt["optimizer_states"][0]["state"][0]["step"]
        == expected_ckpt["optimizer_states"][0]["state"][0]["step"]
    )
    assert got_ckpt["lr_schedulers"] == expected_ckpt["lr_schedulers"]
    es = [k for k in expected_ckpt["callbacks"] if k.startswith("EarlyStopping")][0]
    assert got_ckpt["callbacks"][es]["wait_count"] == expected_ckpt["callbacks"][es]["wait_count"]

    # metrics.csv: every epoch exactly once, the same values as the uninterrupted run
    want, have = epoch_rows(uninterrupted), epoch_rows(tmp_path)
    for key in ("train/loss", "val/loss"):
        assert sorted(have[key]) == [1, 2, 3, 4]  # epochs counted from 1
        for epoch, value in want[key].items():
            assert have[key][epoch] == pytest.approx(value, rel=1e-4), (key, epoch)


@pytest.mark.slow
def test_resumed_run_continues_its_wandb_run(run_train, tmp_path: Path) -> None:
    args = [*TINY, "logger=wandb", "test=false"]
    run_train(*args, "trainer.max_epochs=1")
    out = run_train(*args, "trainer.max_epochs=2")  # same folder: max_epochs is not part of its name
    assert "resuming from" in out.stdout + out.stderr
    runs = sorted(output_run_dir(tmp_path).glob("wandb/offline-run-*"))
    assert len(runs) == 2
    run_id = (output_run_dir(tmp_path) / "wandb" / "run_id").read_text().strip()
    assert all(r.name.endswith(f"-{run_id}") for r in runs)
