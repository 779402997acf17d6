"""resvae-train with trainer=ddp, on the CPU with two gloo ranks.

Lightning starts rank 1 by running the same command again in the same run folder. Rank 1 reads
the folder to reach rank 0's decision (train, resume from last.ckpt, test only) but takes no lock
and writes nothing there: rank 0 owns the folder and its records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resvae.run.loggers import read_rows
from tests.helpers.config import TINY
from tests.helpers.records import output_run_dir

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
       "trainer.precision=32-true"]  # fmt: skip
SINGLE_THREAD = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores


@pytest.mark.slow
def test_two_ranks_train_one_run_whose_records_rank_zero_writes_once(run_train, tmp_path: Path) -> None:
    proc = run_train(*TINY, *DDP, "trainer.max_epochs=2", env=SINGLE_THREAD)
    assert "in use by another trainer" not in proc.stdout + proc.stderr
    run_dir = output_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert summary["test_bpd"] is not None and summary["best_val_loss"] is not None
    assert not (run_dir / ".lock.owner.json").exists()  # the owner released the folder
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    val_epochs = [r["epoch"] for r in read_rows(run_dir / "metrics.csv") if "val/loss" in r]
    assert val_epochs == [1, 2]  # one rank logs each epoch once
    (test_row,) = [r for r in read_rows(run_dir / "metrics.csv") if "test/bpd" in r]
    assert test_row["test/bpd"] == pytest.approx(summary["test_bpd"])

    # one more epoch: both ranks resume from last.ckpt (rank 1 decides so from the folder)
    proc = run_train(*TINY, *DDP, "trainer.max_epochs=3", env=SINGLE_THREAD)
    assert "resuming from" in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 3
    val_epochs = [r["epoch"] for r in read_rows(run_dir / "metrics.csv") if "val/loss" in r]
    assert val_epochs == [1, 2, 3]
