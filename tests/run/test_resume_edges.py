"""Resume edge cases: test-only reruns, summaries across attempts, validation every n epochs,
folders without last.ckpt, SIGTERM during validation, run folder names."""

from __future__ import annotations

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from resvae.data import SyntheticDataModule
from resvae.models import VAE
from resvae.nn import ArchConfig
from resvae.run.checkpoints import CheckpointError, check_compatible
from resvae.run.config import MAX_LEAF, run_leaf
from resvae.run.signals import Preempted, Preemption
from tests.helpers.config import TINY
from tests.helpers.models import cpu_trainer, tiny_vae
from tests.helpers.records import metric_rows, output_run_dir, summary_of


def epochs_logged(root: Path, key: str) -> Counter:
    with open(output_run_dir(root) / "metrics.csv") as f:
        return Counter(int(float(r["epoch"])) for r in csv.DictReader(f) if r.get(key))


@pytest.mark.slow
def test_rerun_of_an_early_stopped_run_only_tests_it(run_train, tmp_path: Path) -> None:
    args = [
        *TINY,
        "logger=csv",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1e9",
        "trainer.max_epochs=6",
    ]
    run_train(*args, "test=false")
    first = summary_of(output_run_dir(tmp_path))
    assert first["stopped_early"] and first["epochs"] == 2 and "test_bpd" not in first
    last = output_run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    mtime = last.stat().st_mtime_ns
    trained_rows = metric_rows(output_run_dir(tmp_path))

    out = run_train(*args, "test=true")
    assert "running the test only" in out.stdout + out.stderr
    second = summary_of(output_run_dir(tmp_path))
    assert last.stat().st_mtime_ns == mtime  # not trained further
    for key in ("epochs", "global_step", "best_val_loss", "train_loss", "val_loss", "train_seconds"):
        assert second[key] == first[key], key
    assert second["tested"] and second["test_bpd"] > 0 and second["status"] == "finished"
    assert second.get("resumed_from") == first.get("resumed_from")  # nothing was resumed

    # every training row is kept (the last epoch's too, logged after its checkpoint), and the test
    # is logged at the run's final epoch and step
    rows = metric_rows(output_run_dir(tmp_path))
    kept = [
        {k: v for k, v in r.items() if v}
        for r in rows
        if not any(k.startswith("test/") and v for k, v in r.items())
    ]
    assert kept == [{k: v for k, v in r.items() if v} for r in trained_rows]
    (test_row,) = [r for r in rows if r.get("test/bpd")]
    assert int(test_row["epoch"]) == first["epochs"] and int(test_row["step"]) == first["global_step"]

    # a test interrupted before it was recorded runs again: the same numbers, logged once
    summary = summary_of(output_run_dir(tmp_path))
    summary.pop("tested")
    (output_run_dir(tmp_path) / "summary.json").write_text(json.dumps(summary))
    run_train(*args, "test=true")
    assert summary_of(output_run_dir(tmp_path))["test_bpd"] == second["test_bpd"]  # the test is seeded
    assert [r for r in metric_rows(output_run_dir(tmp_path)) if r.get("test/bpd")] == [test_row]


@pytest.mark.slow
def test_extended_run_keeps_its_record_and_metrics_with_sparse_validation(run_train, tmp_path: Path) -> None:
    args = [
        *TINY,
        "logger=csv",
        "test=false",
        "trainer.check_val_every_n_epoch=2",
        "callbacks.early_stopping.patience=100",
    ]
    run_train(*args, "trainer.max_epochs=4")
    first = summary_of(output_run_dir(tmp_path))
    run_train(*args, "trainer.max_epochs=6")  # same folder: continues to epoch 6
    second = summary_of(output_run_dir(tmp_path))
    assert second["epochs"] == 6 and second["global_step"] == first["global_step"] * 6 // 4
    assert second["train_seconds"] > first["train_seconds"]  # totals span both attempts
    assert epochs_logged(tmp_path, "train/loss") == Counter(range(1, 7))  # epochs counted from 1
    assert epochs_logged(tmp_path, "val/loss") == Counter([2, 4, 6])


@pytest.mark.slow
def test_folder_with_checkpoints_but_no_last_is_not_overwritten(run_train, tmp_path: Path) -> None:
    run_train(*TINY, "logger=none", "test=false", "trainer.max_epochs=1")
    ckpts = output_run_dir(tmp_path) / "checkpoints"
    (ckpts / "last.ckpt").unlink()
    best = (ckpts / "best.ckpt").read_bytes()
    out = run_train(*TINY, "logger=none", "test=false", "trainer.max_epochs=2", check=False)
    assert out.returncode == 2 and "no last.ckpt" in out.stdout + out.stderr
    assert (ckpts / "best.ckpt").read_bytes() == best


class SigtermDuringValidation(L.Callback):
    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_validation_lets_the_validation_finish(tmp_path: Path) -> None:
    data = SyntheticDataModule(train_size=64, test_size=8, batch_size=16, val_size=32, val_batch_size=8)
    best = ModelCheckpoint(
        dirpath=tmp_path, filename="best", monitor="val/loss", save_on_train_epoch_end=False
    )
    trainer = cpu_trainer(
        max_epochs=3,
        num_sanity_val_steps=0,
        callbacks=[best, Preemption(tmp_path / "last.ckpt"), SigtermDuringValidation()],
    )
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        trainer.fit(tiny_vae(), datamodule=data)
    assert stopped.value.code == 128 + signal.SIGTERM
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    # the stop came after epoch 0 had finished, validation included, at the first batch of
    # epoch 1: the run resumes there with epoch 0 validated (a best checkpoint exists)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 + 1
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["best_model_score"] is not None and (tmp_path / "best.ckpt").is_file()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler in place before fit is back


def test_sigterm_during_the_last_validation_stops_before_the_test(tmp_path: Path) -> None:
    """After the last training batch no batch end comes: the signal is acted on at train end."""
    data = SyntheticDataModule(train_size=64, test_size=8, batch_size=16, val_size=32, val_batch_size=8)
    trainer = cpu_trainer(
        max_epochs=2,
        num_sanity_val_steps=0,
        callbacks=[Preemption(tmp_path / "last.ckpt"), SigtermDuringValidation(epoch=1)],
    )
    with pytest.raises(Preempted) as stopped:
        trainer.fit(tiny_vae(), datamodule=data)
    assert stopped.value.code == 128 + signal.SIGTERM
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * 2  # both epochs (2 batches) done, validated
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 2


@pytest.mark.parametrize("train_size", [48, 32], ids=["2-batch epochs", "1-batch epochs"])
def test_signal_at_an_epochs_last_batch_saves_at_the_epochs_end(tmp_path: Path, train_size: int) -> None:
    class SigtermAtLastBatch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == trainer.num_training_batches - 1:
                os.kill(os.getpid(), signal.SIGTERM)

    data = SyntheticDataModule(
        train_size=train_size, test_size=8, batch_size=16, val_size=16, val_batch_size=8
    )
    best = ModelCheckpoint(
        dirpath=tmp_path, filename="best", monitor="val/loss", save_on_train_epoch_end=False
    )
    trainer = cpu_trainer(
        max_epochs=3,
        num_sanity_val_steps=0,
        callbacks=[best, Preemption(tmp_path / "last.ckpt"), SigtermAtLastBatch()],
    )
    with pytest.raises(Preempted):
        trainer.fit(tiny_vae(), datamodule=data)
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    batches = (train_size - 16) // 16
    # epoch 0 completed (validated: best.ckpt exists), the run resumes at the start of epoch 1
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == batches
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    assert (tmp_path / "best.ckpt").is_file()


def test_run_leaf_names_runs_by_what_changes_training() -> None:
    excluded = ["logger", "data.root", "trainer.max_epochs"]
    assert run_leaf([], excluded) == "default"
    assert run_leaf(["model.depth=40", "logger=csv", "data.root=/d"], excluded) == "model.depth=40"
    assert run_leaf(["b=1", "a=2"], excluded) == run_leaf(["a=2", "b=1"], excluded) == "a=2,b=1"
    assert run_leaf(["logger.wandb.project=x", "trainer.max_epochs=5"], excluded) == "default"
    assert "/" not in run_leaf(["+callbacks.sample_grids.dirpath=/tmp/x"], excluded)
    long = [f"model.option_{i}={'x' * 20}" for i in range(20)]
    name = run_leaf(long, excluded)
    assert len(name) <= MAX_LEAF and name != run_leaf(long[:-1], excluded)


def test_checkpoint_of_another_likelihood_is_refused() -> None:
    model = tiny_vae()
    info = {
        "model_class": "VAE",
        "arch": dict(model.shape_signature()),
        "likelihood": "logistic_mixture",
        "n_mix": 10,
    }
    with pytest.raises(CheckpointError, match="likelihood"):
        check_compatible(info, "VAE", model.shape_signature(), Path("x.ckpt"))


def test_data_of_another_image_shape_is_a_clear_error() -> None:
    model = VAE(arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=16), likelihood="gaussian")
    data = SyntheticDataModule(train_size=16, test_size=4, batch_size=4, val_size=4)
    data.setup()
    with pytest.raises(ValueError, match="model.arch.image_size=32"):
        model.check_data_shape(data)
