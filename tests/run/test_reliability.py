"""Reliability promises: atomic writes, non-finite guards end to end, bad input, config fuzzing."""

from __future__ import annotations

import json
import traceback
from collections import namedtuple
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint

import resvae
from resvae.callbacks import RunSummary
from resvae.data import SyntheticDataModule
from resvae.models import VAE, NonFiniteTrainingError
from resvae.nn import ArchConfig
from resvae.run.checkpoints import AtomicCheckpointIO
from resvae.run.config import config_dir
from resvae.run.folder import Run, config_hash, without_new_nulls
from resvae.run.io import atomic_write_json
from tests.helpers.config import TINY
from tests.helpers.models import cpu_trainer

# ----------------------------------------------------------------------------- atomic writes


def test_interrupted_checkpoint_write_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"generation": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the job is killed mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"generation": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["generation"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_full_disk_is_one_clear_error_and_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    import resvae.run.io

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"generation": 1}, path)

    def disk_fills_up(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 1029312 vs 1029200")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", disk_fills_up)
    monkeypatch.setattr(resvae.run.io.shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 4096, 4096))
    with pytest.raises(resvae.run.io.DiskFullError, match="no space left .* free some space, then rerun"):
        AtomicCheckpointIO().save_checkpoint({"generation": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["generation"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_interrupted_summary_write_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"status": "finished", "epochs": 3})
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        atomic_write_json(path, {"status": "running"})
    assert json.loads(path.read_text()) == {"status": "finished", "epochs": 3}


# ----------------------------------------------------------------------------- non-finite updates


def diverges_after_first_epoch(model: VAE) -> VAE:
    """Make the model's loss NaN from epoch 1 on, as a diverging run's becomes."""
    forward = model.objective.forward

    def nan_from_epoch_1(x):
        terms = forward(x)
        if model.training and model.current_epoch >= 1:
            terms.objective = terms.objective * float("nan")
        return terms

    model.objective.forward = nan_from_epoch_1
    return model


def test_non_finite_run_stops_keeps_last_good_checkpoint_and_fails_summary(tmp_path: Path) -> None:
    model = diverges_after_first_epoch(
        VAE(
            arch=ArchConfig(depth=28, width=2, latent_dim=8),
            likelihood="gaussian",
            optimizer=partial(torch.optim.Adam, lr=1e-3),
            train_step={"max_consecutive_skips": 3, "skip_check_every": 1},
        )
    )
    data = SyntheticDataModule(train_size=64, test_size=16, batch_size=16, val_size=16)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints", filename="best", monitor="val/loss", save_last=True
    )
    run = Run(tmp_path, {}, last_checkpoint=tmp_path / "checkpoints" / "last.ckpt")
    trainer = cpu_trainer(
        max_epochs=5,
        callbacks=[ckpt, RunSummary(run)],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )
    with pytest.raises(NonFiniteTrainingError, match="max_consecutive_skips=3"):
        trainer.fit(model, datamodule=data)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "NonFiniteTrainingError" in summary["error"]
    assert summary["skipped_steps"] >= 3
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # the checkpoint of the last good epoch, not overwritten
    state = last["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the skipped updates left the parameters exactly as they were at that checkpoint (BatchNorm's
    # running statistics still follow each forward pass, as they do under GradScaler's skips)
    for name, value in model.named_parameters():
        torch.testing.assert_close(value.detach(), state[name], msg=name)


# ----------------------------------------------------------------------------- bad input, end to end


def _fails(run_train, *args: str) -> str:
    proc = run_train(*args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout
    # one clear line, no traceback (that goes to the run's log)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("resvae-train: error:") <= 1, proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_bad_input_gives_clear_errors_and_writes_nothing_over(run_train, tmp_path: Path) -> None:
    run_train(*TINY, "trainer.max_epochs=1", "logger=none", "test=false")
    (run_dir,) = {p.parent.parent for p in tmp_path.glob("outputs/**/checkpoints/last.ckpt")}

    def contents() -> dict[Path, bytes]:  # all but .hydra/ (Hydra's) and train.log (appended to)
        return {
            p: p.read_bytes()
            for p in run_dir.rglob("*")
            if p.is_file() and ".hydra" not in str(p) and p.name != "train.log"
        }

    before = contents()
    log, record = (run_dir / "train.log").read_bytes(), (run_dir / ".hydra" / "config.yaml").read_bytes()

    out = _fails(run_train, *TINY, "trainer.max_epochs=1", "logger=none", "test=false", "resume=never")
    assert "already holds checkpoints" in out and "resume=auto" in out
    assert (run_dir / "train.log").read_bytes() == log  # refused: not even its log is written to
    # an attempt that owns the folder but fails to build its trainer keeps the run's .hydra/ record
    out = _fails(run_train, *TINY, "trainer.max_epochs=2", "logger=none", "test=false", "trainer.devices=0")
    assert "Trainer(devices=0)" in out
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == record
    out = _fails(run_train, *TINY, "logger=none", f"resume='{tmp_path / 'nope.ckpt'}'")
    assert "no such checkpoint" in out
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    out = _fails(run_train, *TINY, "logger=none", f"resume='{foreign}'")
    assert "not a resvae checkpoint" in out
    out = _fails(
        run_train, *TINY, "logger=none", "model.arch.depth=34", f"resume='{run_dir}/checkpoints/last.ckpt'"
    )
    assert "another architecture" in out and "blocks" in out

    assert contents() == before  # nothing of the existing run was touched
    assert "Traceback" in (run_dir / "train.log").read_text()  # the errors' tracebacks are logged

    empty = tmp_path / "empty"
    empty.mkdir()
    out = _fails(
        run_train,
        "data=cifar10",
        f"data.root={empty}",
        "data.download=false",
        "logger=none",
        "model.arch.width=2",
    )
    assert "cifar-10-batches-py" in out and "data.root" in out
    out = _fails(run_train, *TINY, "logger=none", "model.optimizer.lr=-1")
    assert "Invalid learning rate: -1" in out and "model" in out
    out = _fails(run_train, *TINY, "logger=none", "data.batch_size=0")
    assert "data.batch_size must be >= 1" in out
    out = _fails(run_train, *TINY, "logger=none", "model.arch.dpeth=40")
    assert "model.arch.dpeth is not a key of this config; did you mean model.arch.depth?" in out
    out = _fails(run_train, *TINY, "logger=none", "model.lr=1e-3")  # a key that moved
    assert "did you mean model.optimizer.lr?" in out


# ----------------------------------------------------------------------------- config fuzzing

RESVAE_DIR = Path(resvae.__file__).parent
CLEAR_ERRORS = (ValueError, TypeError, KeyError)

words = st.sampled_from(
    [
        "bottleneck",
        "basic",
        "identity",
        "projection",
        "gated",
        "scaled",
        "none",
        "batch",
        "group",
        "relu",
        "silu",
        "gelu",
        "dense",
        "spatial",
        "transposed",
        "resize",
        "logistic_mixture",
        "gaussian",
        "bernoulli",
        "bogus",
        "adam",
        "sgd",
    ]
)
override = st.one_of(
    st.builds("model.arch.depth={}".format, st.integers(-10, 120)),
    st.builds("model.arch.width={}".format, st.integers(-2, 4)),
    st.builds("model.arch.latent_dim={}".format, st.integers(-1, 16)),
    st.builds(
        "model.arch.blocks=[{}]".format,
        st.lists(st.integers(-1, 3), max_size=5).map(lambda b: ",".join(map(str, b))),
    ),
    st.builds("model.arch.block={}".format, words),
    st.builds("model.arch.shortcut={}".format, words),
    st.builds("model.arch.norm={}".format, words),
    st.builds("model.arch.act={}".format, words),
    st.builds("model.arch.latent={}".format, words),
    st.builds("model.arch.upsample={}".format, words),
    st.builds("model.likelihood={}".format, words),
    st.builds("optimizer={}".format, words),
    st.builds("scheduler={}".format, words),
    st.builds("model.optimizer.lr={}".format, st.floats(-1, 1, allow_nan=False)),
    st.builds("model.n_mix={}".format, st.integers(-1, 3)),
    st.builds("model.arch.preact={}".format, st.sampled_from(["true", "false", "maybe"])),
    st.builds("data.batch_size={}".format, st.integers(-1, 8)),
    st.builds("data.val_size={}".format, st.sampled_from(["0", "0.5", "16", "1000", "-3"])),
    st.builds("model={}".format, st.sampled_from(["vae", "ae", "gan"])),
    st.builds(
        "{}=1".format,
        st.sampled_from(["model.arch.dpeth", "data.btach_size", "trainer.max_epoch", "model.depth"]),
    ),
)


def _raised_in_resvae_or_config(err: BaseException) -> bool:
    """The innermost frame of the error's cause lies in resvae's own checks or the config layer."""
    cause = err.__cause__ or err
    frames = traceback.extract_tb(cause.__traceback__)
    innermost = Path(frames[-1].filename) if frames else Path()
    return RESVAE_DIR in innermost.parents or "omegaconf" in str(innermost) or "hydra" in str(innermost)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(overrides=st.lists(override, max_size=4))
def test_any_override_starts_or_fails_with_a_clear_message(overrides: list[str]) -> None:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        try:
            cfg = compose("train", overrides=["experiment=smoke", "model.arch.width=2", *overrides])
        except (ConfigCompositionException, HydraException, ValueError) as err:
            assert str(err)
            return
    try:
        model = instantiate(cfg.model, _convert_="all")
        data = instantiate(cfg.data)
        data.setup()
        batch = next(iter(data.train_dataloader()))
    except Exception as err:  # must be one of our checks, with a message, not a crash inside torch
        cause = err.__cause__ or err
        assert isinstance(cause, CLEAR_ERRORS), repr(cause)
        assert str(cause) and _raised_in_resvae_or_config(err), "".join(traceback.format_exception(cause))
        return
    x = batch[:2]
    terms = model.objective(model.to_input(x))  # the run starts: one forward pass works
    assert terms.loss.shape == (len(x),)


def test_a_key_added_later_at_null_keeps_an_older_run_the_same_run() -> None:
    old = {"seed": 0, "model": {"arch": {"depth": 28}}}
    new = {"seed": 0, "conv_precision": None, "model": {"arch": {"depth": 28, "stem": None}}}
    assert config_hash(without_new_nulls(old, new)) == config_hash(old)
    changed = {**new, "conv_precision": "tf32"}  # set on purpose: another run
    assert config_hash(without_new_nulls(old, changed)) != config_hash(old)
    assert without_new_nulls(new, new) == new  # nothing dropped that the old config has


@pytest.mark.gpu
def test_a_gpu_runs_summary_names_the_gpu_and_its_peak_memory(tmp_path: Path) -> None:
    """The final summary is written in on_fit_end, after Lightning's teardown has moved the module
    back to the CPU (an H200 run said "device": "cpu" and no peak memory before this was fixed)."""
    model = VAE(arch=ArchConfig(depth=28, width=2, latent_dim=4), optimizer=partial(torch.optim.Adam))
    run = Run(tmp_path, {}, last_checkpoint=tmp_path / "last.ckpt")
    trainer = L.Trainer(
        accelerator="gpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[RunSummary(run)], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=SyntheticDataModule(train_size=8, test_size=4, batch_size=4, val_size=4))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == torch.cuda.get_device_name(0) and summary["peak_memory_gib"] > 0
