"""Precision: fp16 AMP (16-mixed) is refused in one line, since the guarded step neither scales the
loss nor can share `found_inf` with GradScaler; bf16-mixed trains, and still skips a non-finite
update, on the CPU.

Lightning itself turns `Trainer(accelerator="cpu", precision="16-mixed")` into bf16-mixed, so the
refusal is exercised with its MixedPrecision plugin built for fp16 on the CPU, which is what a
GPU run of trainer.precision=16-mixed gets (with a GradScaler).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from resvae.models import VAE
from resvae.nn import ArchConfig
from resvae.run.numerics import conv_precision_for, set_float32_precision
from tests.helpers.batches import Batches, batches
from tests.helpers.models import cpu_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def mixture_vae() -> VAE:
    """A tiny VAE with a logistic mixture likelihood on 8x8 images; its weights seeded."""
    torch.manual_seed(0)
    return VAE(
        arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8),
        likelihood="logistic_mixture",
        n_mix=2,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )


@pytest.mark.parametrize("precision", ["16-mixed", "16"])
def test_fp16_mixed_precision_is_refused_naming_the_fix(precision) -> None:
    with pytest.raises(ValueError, match="bf16-mixed") as err:
        mixture_vae().check_trainer(precision, world_size=1)
    assert f"trainer.precision={precision}" in str(err.value) and "32-true" in str(err.value)
    assert "\n" not in str(err.value)
    for fine in ("32-true", "bf16-mixed", "16-true"):  # no scaler involved: the guard is enough
        mixture_vae().check_trainer(fine, world_size=1)


def test_a_trainer_with_a_grad_scaler_is_refused_before_any_step() -> None:
    model = mixture_vae()
    before = [p.detach().clone() for p in model.parameters()]
    fp16 = MixedPrecision("16-mixed", "cpu")  # with a GradScaler, as on a GPU
    trainer = cpu_trainer(max_epochs=1, limit_val_batches=0, enable_checkpointing=False, plugins=[fp16])
    assert trainer.precision == "16-mixed"
    with pytest.raises(ValueError, match="trainer.precision=16-mixed is not supported"):
        trainer.fit(model, train_dataloaders=Batches(batches()))
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bf16_mixed_on_the_cpu_trains_and_skips_a_nonfinite_batch() -> None:
    model = mixture_vae()
    trainer = cpu_trainer(
        max_epochs=1, limit_val_batches=0, enable_checkpointing=False, precision="bf16-mixed"
    )
    trainer.fit(model, train_dataloaders=Batches(batches()))
    assert int(model.step.skipped) == 1  # batch BAD of the five
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(b).all() for b in model.objective.buffers())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])  # the mean of the applied updates


@pytest.fixture
def restore_float32():
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.conv.fp32_precision
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.conv.fp32_precision = conv


@pytest.mark.usefixtures("restore_float32")
def test_highest_is_ieee_float32_for_convolutions_too() -> None:
    """torch's matmul setting leaves cuDNN convolutions at TF32; set_float32_precision sets both."""
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.set_float32_matmul_precision("highest")
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # the trap: convolutions stay TF32
    assert set_float32_precision("highest") == {"matmul": "ieee", "conv": "ieee"}
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert set_float32_precision("high") == {"matmul": "tf32", "conv": "tf32"}
    assert set_float32_precision("highest", "tf32") == {"matmul": "ieee", "conv": "tf32"}  # the switch
    with pytest.raises(ValueError, match="conv_precision=fast: choose one of ieee, tf32"):
        set_float32_precision("highest", "fast")


def test_the_study_protocol_composes_to_ieee_float32() -> None:
    from hydra import compose, initialize_config_dir

    from resvae.run.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        study = compose("train", overrides=["experiment=seed_depth_sweep"])
        default = compose("train")
    assert conv_precision_for(study.matmul_precision, study.conv_precision) == "ieee"
    assert study.trainer.precision == "32-true"
    assert conv_precision_for(default.matmul_precision, default.conv_precision) == "tf32"
