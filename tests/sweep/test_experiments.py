"""The residual-network experiments (conf/experiment/degradation.yaml, identity_mappings.yaml),
the gradient-flow callbacks config and the MLP models (model=mlp_vae, model=mlp_ae): they
compose and instantiate on CPU, set what their papers set, and the MLP trains and reloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from resvae.callbacks.gradient_flow import GradientFlow
from resvae.models.loading import load_model
from resvae.nn import MLPArchConfig, ResidualBlock
from resvae.sweep.comparison import SweepComparison
from tests.helpers.config import compose_train
from tests.helpers.models import cpu_trainer
from tests.helpers.records import run_dirs

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_EXPERIMENTS = ("degradation", "identity_mappings")
RESNET_MODELS = ("vae", "ae")
MLP_MODELS = ("mlp_vae", "mlp_ae")
DATA = ("cifar10", "synthetic")
# the words of the refusal when an experiment about the ResNet's blocks meets the MLP network
MLP_REFUSAL = "of the ResNet (network=resnet), which the MLP network"
VARIANTS = {  # He et al. 2016: (preact, shortcut, shortcut_scale, shortcut_dropout)
    "original": (False, "identity", 0.5, 0.0),
    "scaled": (False, "scaled", 0.5, 0.0),
    "gated": (False, "gated", 0.5, 0.0),
    "projection": (False, "projection", 0.5, 0.0),
    "dropout": (False, "identity", 0.5, 0.5),
    "preact": (True, "identity", 0.5, 0.0),
}


def build(cfg):
    return instantiate(cfg.model, _convert_="all"), instantiate(cfg.data)


@pytest.mark.parametrize("model_group", RESNET_MODELS + MLP_MODELS)
@pytest.mark.parametrize("data_group", DATA)
@pytest.mark.parametrize("experiment", NEW_EXPERIMENTS)
def test_new_experiments_compose_and_instantiate(experiment, data_group, model_group):
    overrides = [
        f"experiment={experiment}",
        f"data={data_group}",
        f"model={model_group}",
        "model.arch.width=2",
    ]
    cfg = compose_train(overrides, hydra_cfg=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    callback = instantiate(cfg.hydra.callbacks[experiment])
    assert isinstance(callback, SweepComparison) and callback.name == experiment
    if model_group in MLP_MODELS:
        with pytest.raises(Exception, match=r"of the ResNet \(network=resnet\)"):
            build(cfg)
        return
    model, datamodule = build(cfg)
    assert model.arch.depth == cfg.model.arch.depth and model.arch.layers == model.arch.depth
    assert datamodule.batch_size == cfg.data.batch_size
    # the papers' network style, and the same training budget for every job
    assert model.arch.act == "relu" and model.arch.zero_init_last is False
    assert cfg.callbacks.early_stopping.patience == cfg.trainer.max_epochs


def test_degradation_sweeps_depth_and_plain_vs_residual():
    cfg = compose_train(["experiment=degradation"], hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    assert params["model.arch.depth"] == "28,40,70,100"
    assert params["model.arch.shortcut"] == "identity,none"
    assert cfg.model.arch.preact is False and cfg.model.arch.block == "bottleneck"
    assert cfg.hydra.callbacks.degradation.x == "model.arch.depth"
    assert cfg.hydra.callbacks.degradation.series == "model.arch.shortcut"
    for depth in (28, 100):
        for shortcut in ("identity", "none"):
            job = compose_train(
                ["experiment=degradation", f"model.arch.depth={depth}", f"model.arch.shortcut={shortcut}",
                 "model.arch.width=2"]
            )  # fmt: skip
            model = instantiate(job.model, _convert_="all")
            blocks = [m for m in model.net.modules() if isinstance(m, ResidualBlock)]
            assert model.arch.depth == depth and {b.shortcut_kind for b in blocks} == {shortcut}


def test_identity_mappings_one_job_per_variant_of_the_paper():
    cfg = compose_train(["experiment=identity_mappings"], hydra_cfg=True)
    assert cfg.hydra.sweeper.params.variant.split(",") == list(VARIANTS)
    assert cfg.model.arch.depth == 100 and cfg.hydra.callbacks.identity_mappings.series == "variant"
    for variant, (preact, shortcut, scale, dropout) in VARIANTS.items():
        job = compose_train(
            [
                "experiment=identity_mappings",
                f"variant={variant}",
                "model.arch.depth=28",
                "model.arch.width=2",
            ]
        )
        model = instantiate(job.model, _convert_="all")
        arch = model.arch
        assert (arch.preact, arch.shortcut, arch.shortcut_scale, arch.shortcut_dropout) == (
            preact,
            shortcut,
            scale,
            dropout,
        ), variant
        blocks = [m for m in model.net.modules() if isinstance(m, ResidualBlock)]
        assert {b.shortcut_dropout for b in blocks} == {dropout}
        assert all((b.gate is not None) == (shortcut == "gated") for b in blocks)
        assert all((b.out_act is None) == preact for b in blocks)
        if shortcut == "projection":  # a 1x1 projection on every block, not only where shapes change
            assert all(not isinstance(b.shortcut, torch.nn.Identity) for b in blocks)


def test_unknown_variant_is_a_clear_error():
    from omegaconf.errors import OmegaConfBaseException

    cfg = compose_train(["experiment=identity_mappings", "variant=bogus"])
    with pytest.raises(OmegaConfBaseException, match="bogus"):
        instantiate(cfg.model, _convert_="all")


def test_gradient_flow_callbacks_config():
    cfg = compose_train(["callbacks=gradient_flow", "experiment=smoke"])
    assert {"model_checkpoint", "early_stopping", "sample_grids", "gradient_flow"} <= set(cfg.callbacks)
    assert (
        cfg.callbacks.early_stopping.patience
        == compose_train(["experiment=smoke"]).callbacks.early_stopping.patience
    )
    callback = instantiate(cfg.callbacks.gradient_flow)
    assert isinstance(callback, GradientFlow) and callback.epochs[0] == 0 and callback.at_end


@pytest.mark.parametrize("model_group", MLP_MODELS)
def test_mlp_model_trains_and_its_checkpoint_loads(model_group, tmp_path: Path):
    cfg = compose_train(
        ["experiment=smoke", f"model={model_group}", "model.arch.depth=12", "model.arch.width=64",
         "model.arch.latent_dim=8", "data.train_size=128", "data.val_size=32", "data.batch_size=16"]
    )  # fmt: skip
    torch.manual_seed(0)
    model, dm = build(cfg)
    assert isinstance(model.arch, MLPArchConfig) and model.arch.blocks == 2 and model.arch.layers == 12
    dm.setup()
    batch = dm.splits["val"][:32]

    def loss() -> float:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            model.eval()
            return float(model.objective(model.to_input(batch)).loss.mean())

    before = loss()
    trainer = cpu_trainer(max_epochs=3, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    after = loss()
    assert after < before - 100, (before, after)  # nats/image over 192 dims: a clear fall
    path = tmp_path / "mlp.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.arch == model.arch
    z = torch.randn(4, 8)
    torch.testing.assert_close(loaded.inference.decode(z), model.inference.decode(z))


@pytest.mark.slow
def test_identity_mappings_multirun_writes_its_comparison(run_train, tmp_path: Path):
    """A real multirun of two variants: one folder per variant, and the experiment's table."""
    proc = run_train(
        "experiment=identity_mappings", "variant=dropout,preact", "data=synthetic", "trainer=cpu",
        "model.arch.depth=28", "model.arch.width=2", "model.arch.latent_dim=8", "data.train_size=64",
        "data.val_size=16", "data.test_size=16", "data.batch_size=16", "trainer.max_epochs=1",
        "test=false", "logger=csv",
    )  # fmt: skip
    (sweep,) = (tmp_path / "outputs" / "identity_mappings" / "multirun").glob("*/multirun.yaml")
    sweep = sweep.parent  # the sweep's own folder
    summaries = {
        s["config"]["variant"]: s
        for s in (json.loads((d / "summary.json").read_text()) for d in run_dirs(sweep).values())
    }
    assert sorted(summaries) == ["dropout", "preact"]
    with open(sweep / "analysis" / "identity_mappings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["dropout", "preact"]
    assert all(r["status"] == "finished" and float(r["train_loss"]) > 0 for r in rows)
    assert (sweep / "analysis" / "identity_mappings.png").is_file()
    assert (sweep / "report.md").is_file() and "identity_mappings:" in proc.stdout
    assert summaries["dropout"]["shortcut_dropout"] == 0.5 and summaries["preact"]["preact"] is True
    assert summaries["dropout"]["layers"] == summaries["dropout"]["depth"] == 28


def test_hierarchy_depth_sweep_compares_the_two_vaes_at_each_depth():
    cfg = compose_train(["experiment=hierarchy_depth_sweep"], hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    assert params["model"] == "vae,hvae" and params["model.arch.depth"] == "28,40,70,100"
    callback = instantiate(cfg.hydra.callbacks.hierarchy)
    assert (callback.x, callback.series) == ("model.arch.depth", "model._target_")
    for model_group, network in (("vae", "resnet"), ("hvae", "hvae")):
        for depth in (28, 100):
            job = compose_train(
                ["experiment=hierarchy_depth_sweep", f"model={model_group}", f"model.arch.depth={depth}",
                 "model.arch.width=4"]
            )  # fmt: skip
            model = instantiate(job.model, _convert_="all")
            assert model.arch.network == network and model.arch.depth == depth == model.arch.layers
            assert job.data.batch_size == 128 and job.trainer.max_epochs == 300  # the same budget
