"""Compilation falls back to eager, with one clear warning, when torch.compile fails."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from resvae.data import SyntheticDataModule
from resvae.models.compiled import CompiledOrEager, resolve_mode
from tests.helpers.models import cpu_trainer, tiny_vae

pytestmark = pytest.mark.usefixtures("one_thread")


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


def recording_compile(fn, mode=None, **kwargs):
    def compiled(*args):
        recording_compile.calls.append([tuple(a.shape) for a in args])
        return fn(*args)

    return compiled


def test_compiled_code_serves_its_first_shapes_and_a_smaller_last_batch_runs_eagerly(monkeypatch) -> None:
    recording_compile.calls = []
    monkeypatch.setattr(torch, "compile", recording_compile)
    fn = CompiledOrEager(lambda x: x * 2, "reduce-overhead", "validation forward")
    for batch in (4, 4, 3, 4):  # a 15-image split in batches of 4: its last batch of 3 would recompile
        assert torch.equal(fn(torch.ones(batch, 2)), torch.full((batch, 2), 2.0))
    assert recording_compile.calls == [[(4, 2)]] * 3 and fn.active and fn.first_call_seconds is not None


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


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_a_compile_mode_with_its_own_cuda_graphs_is_refused_inside_a_captured_step(mode) -> None:
    with pytest.raises(ValueError, match=f"compile={mode} records its own CUDA graphs") as err:
        tiny_vae(train_step={"compile": mode, "capture": "cuda_graph"})
    assert "model.train_step.capture=none" in str(err.value) and "\n" not in str(err.value)
    tiny_vae(train_step={"compile": "default", "capture": "cuda_graph"})  # inductor without graphs: fine
    tiny_vae(train_step={"compile": mode, "capture": "none"})  # and the mode alone too


def test_auto_eval_compile_is_reduce_overhead_on_cuda_and_none_on_a_cpu() -> None:
    assert resolve_mode("auto", torch.device("cuda", 0)) == "reduce-overhead"
    assert resolve_mode("auto", torch.device("cpu")) == "none"
    assert resolve_mode("reduce-overhead", torch.device("cpu")) == "reduce-overhead"  # asked for: kept
    with pytest.raises(ValueError, match="model.train_step.compile 'auto'"):
        tiny_vae(train_step={"compile": "auto"})  # auto is validation's only
    model = tiny_vae(train_step={"compile_eval": "auto"})
    data = SyntheticDataModule(train_size=16, test_size=8, batch_size=8, val_size=8)
    cpu_trainer(max_epochs=1, enable_checkpointing=False, limit_train_batches=1, limit_val_batches=1).fit(
        model, datamodule=data
    )
    assert model.eval_fn.mode == "none" and not model.eval_fn.active


def test_each_compile_announces_itself_in_one_log_line(monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kwargs: fn)  # compiles instantly
    fn = CompiledOrEager(lambda x: x + 1, "default", "validation forward")
    with caplog.at_level(logging.INFO, logger="resvae.models.compiled"):
        assert fn(1) == 2 and fn(2) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("compiling validation forward (mode=default)") for line in lines) == 1
    assert sum(line.startswith("compiled validation forward (mode=default) in") for line in lines) == 1
    caplog.clear()
    model = tiny_vae(train_step={"compile": "default"})
    data = SyntheticDataModule(train_size=16, test_size=8, batch_size=8, val_size=8)
    with caplog.at_level(logging.INFO, logger="resvae.models.compiled"):
        cpu_trainer(max_epochs=1, enable_checkpointing=False, limit_train_batches=2, limit_val_batches=0).fit(
            model, datamodule=data
        )
    lines = [r.getMessage() for r in caplog.records]
    assert sum("compiling training forward (mode=default)" in line for line in lines) == 1, lines
