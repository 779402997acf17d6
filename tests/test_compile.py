"""Compilation falls back to eager, with one clear warning, when torch.compile fails."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch

from resvae.data import SyntheticDataModule
from resvae.models import VAE
from resvae.models.compiled import CompiledOrEager
from resvae.nn import ArchConfig
from tests.conftest import cpu_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(**overrides) -> VAE:
    kwargs = dict(
        arch=ArchConfig(depth=28, width=2, latent_dim=4),
        likelihood="gaussian",
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        scheduler=None,
    )
    return VAE(**{**kwargs, **overrides})


def broken_compile(fn, mode=None, **kwargs):
    def compiled(*args):
        raise RuntimeError("InductorError: no working C++ compiler")

    return compiled


def test_failed_compile_warns_once_and_runs_eager(monkeypatch) -> None:
    monkeypatch.setattr(torch, "compile", broken_compile)
    calls = []
    fn = CompiledOrEager(lambda x: calls.append(x) or x * 2, "reduce-overhead")
    with pytest.warns(RuntimeWarning, match="reduce-overhead.*eager mode"):
        assert fn(3) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert fn(4) == 8
    assert fn.fell_back and not fn.active and calls == [3, 4]


def test_no_compile_calls_the_function_directly() -> None:
    fn = CompiledOrEager(lambda x: x + 1, "none")
    assert fn(1) == 2 and not fn.active and not fn.fell_back
    with pytest.raises(ValueError, match="unknown compile mode"):
        CompiledOrEager(lambda x: x, "fastest")
    with pytest.raises(ValueError, match="model.train_step.compile") as err:
        tiny_vae(train_step={"compile": "fastest"})
    assert "'fastest'" in str(err.value) and "reduce-overhead" in str(err.value)


def test_training_with_a_failing_compile_trains_eagerly(monkeypatch) -> None:
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny_vae(train_step={"compile": "default"})
    data = SyntheticDataModule(train_size=32, test_size=8, batch_size=8, val_size=8)
    trainer = cpu_trainer(max_epochs=1, enable_checkpointing=False, limit_val_batches=0)
    with pytest.warns(RuntimeWarning, match="torch.compile") as record:
        trainer.fit(model, datamodule=data)
    assert sum("torch.compile" in str(w.message) for w in record) == 1
    assert trainer.global_step == 3 and model.forward_fn.fell_back
