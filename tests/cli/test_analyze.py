"""resvae-analyze (resvae/cli/analyze.py) and the gradient-flow callback on tiny CPU models: the
outputs' structure, and properties of residual vs plain networks that could fail."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from resvae.cli.analyze import main
from resvae.cli.analyze.common import AnalysisError, Subject
from resvae.cli.analyze.compare import compare_sweep
from resvae.cli.analyze.lesion import deleted, lesion_study
from resvae.data.modules import synthetic_images
from resvae.models import AE, VAE
from resvae.models.gradients import gradient_profile, network_units
from resvae.nn import ArchConfig, MLPArchConfig
from resvae.sweep.comparison import SweepComparison
from tests.helpers.models import cpu_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = {
    "_target_": "resvae.data.SyntheticDataModule",
    "train_size": 64,
    "test_size": 32,
    "image_size": 32,
    "batch_size": 16,
    "val_size": 16,
    "seed": 0,
}


def images(n: int = 8) -> torch.Tensor:
    return torch.from_numpy(synthetic_images(n, 32, 0))


def vae(depth: int = 40, **arch) -> VAE:
    torch.manual_seed(0)
    arch.setdefault("width", 2)
    return VAE(arch=ArchConfig(depth=depth, latent_dim=8, **arch))


def subject(model) -> Subject:
    return Subject("tiny", model, "tiny", None, None)


def save_checkpoint(model, path: Path, data: dict | None = DATA) -> Path:
    """A resvae checkpoint as resvae-train writes it (weights, the resvae entry, the run config)."""
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    if data is not None:
        ckpt["resvae"]["run"] = {"config": {"data": data}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# ------------------------------------------------------------------------------------- blocks
def test_network_units_in_forward_order_with_shape_changing_blocks_marked():
    model = vae(40)  # blocks (1, 2, 2, 1) in the encoder and mirrored in the decoder
    units = network_units(model.net)
    assert [u.name for u in units] == [
        "encoder.layer1.0", "encoder.layer2.0", "encoder.layer2.1", "encoder.layer3.0",
        "encoder.layer3.1", "encoder.layer4.0", "decoder.layer4.0", "decoder.layer3.0",
        "decoder.layer3.1", "decoder.layer2.0", "decoder.layer2.1", "decoder.layer1.0",
    ]  # fmt: skip
    # the stride-2 encoder blocks and the upsampling decoder blocks change the shape
    assert [u.deletable for u in units] == [True, False] * 3 + [False, True] * 3
    assert {u.kind for u in units} == {"residual"}
    assert {u.kind for u in network_units(vae(40, shortcut="none").net)} == {"plain"}
    mlp = VAE(arch=MLPArchConfig(depth=16, width=8, latent_dim=4, image_size=32))
    names = [u.name for u in network_units(mlp.net)]
    assert names == [f"encoder.blocks.{i}" for i in range(3)] + [f"decoder.blocks.{i}" for i in range(3)]


def test_deleted_replaces_blocks_only_inside_and_refuses_shape_changes():
    model = vae(40, zero_init_last=False).eval()
    units = network_units(model.net)
    x = model.objective.to_input(images(2))
    with torch.no_grad():
        before = model.net.encode(x)
        with deleted([units[0], units[2]]):
            during = model.net.encode(x)
        after = model.net.encode(x)
    assert not torch.allclose(before, during)
    torch.testing.assert_close(before, after)
    with pytest.raises(AnalysisError, match="changes the shape"), deleted([units[1]]):
        pass


# ------------------------------------------------------------------------------------- lesion
def test_lesion_at_init_residual_blocks_delete_for_free_plain_ones_do_not():
    """Zero-initialised branches make each residual block its shortcut at init: deleting one
    changes nothing. Deleting a block of the plain network of the same depth (by the identity)
    changes the loss. GroupNorm: per-image statistics, so eval mode does not collapse the plain
    network's signal as BatchNorm's initial running statistics do."""
    x = images(8)
    res = lesion_study(subject(vae(40, norm="group")), x, draws=2, seed=0, batch=8)
    plain = lesion_study(subject(vae(40, norm="group", shortcut="none")), x, draws=2, seed=0, batch=8)
    for r in (res, plain):
        assert r["deletable"] == 6 and len(r["blocks"]) == 12 and len(r["skipped"]) == 6
        assert [k["k"] for k in r["k"]] == [1, 2, 3, 4, 5, 6]
        assert [k["draws"] for k in r["k"]] == [2, 2, 2, 2, 2, 1]  # k = n: one possible subset
        assert all((b["loss"] is None) == (not b["deletable"]) for b in r["blocks"])
    res_change = max(abs(b["increase"]) for b in res["blocks"] if b["deletable"])
    plain_change = min(abs(b["increase"]) for b in plain["blocks"] if b["deletable"])
    assert res_change < 1e-3 * plain_change, (res_change, plain_change)
    assert max(abs(k["mean_increase"]) for k in res["k"]) < 1e-3 * plain_change


def test_lesion_is_seeded_and_its_k_draws_are_reproducible():
    model, x = vae(40, zero_init_last=False), images(4)
    a = lesion_study(subject(model), x, draws=2, seed=3, batch=4, k_max=3)
    b = lesion_study(subject(model), x, draws=2, seed=3, batch=4, k_max=3)
    assert a["k"] == b["k"] and a["baseline_loss"] == b["baseline_loss"]
    assert len(a["k"]) == 3


def test_lesion_cli_writes_tables_and_plot_into_the_run_folder(tmp_path: Path, capsys):
    res = save_checkpoint(vae(40), tmp_path / "res" / "checkpoints" / "last.ckpt")
    assert main(["lesion", str(res), "--images", "4", "--draws", "2", "--device", "cpu"]) == 0
    out = tmp_path / "res" / "analysis"
    assert {p.name for p in out.iterdir()} == {
        "lesion.json",
        "lesion_blocks.csv",
        "lesion_k.csv",
        "lesion_intact.csv",
        "lesion.png",
    }
    report = json.loads((out / "lesion.json").read_text())
    (model,) = report["models"]
    assert model["label"] == "res" and model["network"] == "resnet" and model["depth"] == 40
    assert len(read_csv(out / "lesion_blocks.csv")) == 12 and len(read_csv(out / "lesion_k.csv")) == 6
    assert png_size(out / "lesion.png")[0] > 500

    # two models side by side need --out
    plain = save_checkpoint(vae(40, shortcut="none"), tmp_path / "plain" / "checkpoints" / "last.ckpt")
    assert main(["lesion", str(res), str(plain), "--images", "4", "--device", "cpu"]) == 2
    assert "--out" in capsys.readouterr().err
    both = tmp_path / "both"
    assert main(["lesion", str(res), str(plain), "--images", "4", "--draws", "1", "--out", str(both)]) == 0
    labels = {r["label"] for r in read_csv(both / "lesion_k.csv")}
    assert labels == {"res", "plain"}


def _recorded_run(tmp_path: Path, name: str, model, val_loss: float) -> Path:
    """A run folder with the model's best.ckpt and a summary.json recording `val_loss`."""
    ckpt = save_checkpoint(model, tmp_path / name / "checkpoints" / "best.ckpt")
    (tmp_path / name / "summary.json").write_text(json.dumps({"best_val_loss": val_loss}))
    return ckpt


def test_lesion_warns_when_batchnorm_statistics_do_not_fit_and_reestimation_recovers(tmp_path: Path, capsys):
    """Issue 23: a plain network whose BatchNorm running statistics do not fit the images has an
    intact loss far from its recorded validation loss, and deleting blocks then measures that
    drift. The lesion study warns; --bn-reestimate brings the intact loss back to the recorded
    one and reports both losses per deleted block."""
    from resvae.cli.analyze.footing import batch_norms, reestimate_batch_norm
    from resvae.cli.analyze.lesion import mean_loss
    from resvae.data import SyntheticDataModule

    model = vae(28, shortcut="none")  # plain, BatchNorm
    dm = SyntheticDataModule(**{k: v for k, v in DATA.items() if k != "_target_"})
    dm.setup()
    reestimate_batch_norm(model, dm.splits["train"], seed=0, batch=16)  # statistics as training leaves them
    val_loss = mean_loss(model, dm.splits["val"], seed=0, batch=16)  # what the run records
    args = ["--images", "16", "--draws", "1", "--k-max", "2", "--device", "cpu"]
    good = _recorded_run(tmp_path, "good", model, val_loss)
    assert main(["lesion", str(good), *args]) == 0
    assert "WARNING" not in capsys.readouterr().err
    intact = json.loads((tmp_path / "good" / "analysis" / "lesion.json").read_text())["models"][0]["intact"]
    assert intact["agrees"] is True and intact["recorded_from"] == "summary.json best_val_loss"

    with torch.no_grad():
        for bn in batch_norms(model.objective):  # statistics of other images: every layer shifted
            bn.running_mean.sub_(2.0)
    bad = _recorded_run(tmp_path, "bad", model, val_loss)
    assert main(["lesion", str(bad), *args]) == 0
    err = capsys.readouterr().err
    assert "WARNING: bad: the intact model's test loss" in err and "rerun with --bn-reestimate N" in err
    (r,) = json.loads((tmp_path / "bad" / "analysis" / "lesion.json").read_text())["models"]
    assert r["kind"] == "plain" and r["intact"]["agrees"] is False and r["intact"]["ratio"] > 1.5
    (row,) = read_csv(tmp_path / "bad" / "analysis" / "lesion_intact.csv")
    assert row["agrees"] == "False" and row["warning"].startswith("the intact model's test loss")

    out = tmp_path / "reestimated"
    assert main(["lesion", str(bad), *args, "--bn-reestimate", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "with BatchNorm re-estimated the intact loss is" in err
    (fixed,) = json.loads((out / "lesion.json").read_text())["models"]
    assert fixed["bn_reestimate_images"] == 48  # 3 batches of the run's 16 (its 48 training images)
    assert fixed["baseline_loss"] == pytest.approx(r["baseline_loss"])  # the plain losses unchanged
    assert 0.8 < fixed["intact"]["ratio_bn_reestimated"] < 1.25, fixed["intact"]
    deleted_rows = [b for b in fixed["blocks"] if b["deletable"]]
    assert deleted_rows and all(b["loss_bn_reestimated"] is not None for b in deleted_rows)
    assert all(
        b["increase_bn_reestimated"]
        == pytest.approx(b["loss_bn_reestimated"] - fixed["baseline_loss_bn_reestimated"])
        for b in deleted_rows
    )
    assert fixed["k"][0]["mean_increase_bn_reestimated"] is not None
    # the checkpoint's statistics are what every "without" loss used: re-estimation is undone
    again = lesion_study(subject(model), images(8), draws=1, seed=0, batch=8, k_max=1)
    lesion_study(subject(model), images(8), draws=1, seed=0, batch=8, k_max=1, bn_images=dm.splits["train"])
    after = lesion_study(subject(model), images(8), draws=1, seed=0, batch=8, k_max=1)
    assert after["baseline_loss"] == again["baseline_loss"]


def test_a_bn_reestimate_that_misses_the_recorded_loss_is_a_warning_too(monkeypatch) -> None:
    """Too few re-estimation batches can leave statistics worse than the checkpoint's: the
    re-estimated losses would then be read as damage; the check says so."""
    from resvae.cli.analyze import footing

    monkeypatch.setattr(footing, "recorded_val_loss", lambda s: (100.0, "summary.json best_val_loss"))
    check = footing.intact_check(subject(vae(28)), 101.0, 480.0, "test")
    assert check["agrees"] is True and "the re-estimate does not fit" in check["warning"]
    assert footing.intact_check(subject(vae(28)), 101.0, 99.0, "test")["warning"] is None


# ------------------------------------------------------------------------------------- gradients
def _spread(rows: list[dict], key: str = "out_grad_norm") -> float:
    """Decades between the first and the last encoder block's gradient norm."""
    enc = [r[key] for r in rows if r["part"] == "encoder"]
    return abs(math.log10(enc[0] / enc[-1]))


def test_gradient_norms_at_init_plain_deep_network_vs_residual():
    """Without normalisation the plain network's gradients vanish towards the input (many
    decades); with BatchNorm they grow towards the input (Yang et al. 2019). Either way the
    plain network's per-block norms spread over far more decades than the residual one's."""
    x = images(8)
    for norm in ("none", "batch"):
        res = gradient_profile(vae(100, norm=norm), x, seed=0)
        plain = gradient_profile(vae(100, norm=norm, shortcut="none"), x, seed=0)
        assert len(res) == len(plain) == 32
        assert _spread(plain) > _spread(res) + 1.0, (norm, _spread(plain), _spread(res))
    plain_no_norm = gradient_profile(vae(100, norm="none", shortcut="none"), x, seed=0)
    enc = [r["out_grad_norm"] for r in plain_no_norm if r["part"] == "encoder"]
    assert enc[0] < 1e-6 * enc[-1]  # vanishing towards the input


def test_gradient_profile_changes_nothing():
    model = AE(arch=ArchConfig(depth=28, width=2, latent_dim=8))  # BatchNorm and the AE's code fit
    model.train()
    buffers = {k: v.clone() for k, v in model.objective.named_buffers()}
    rng = torch.get_rng_state()
    rows = gradient_profile(model, images(8), seed=0)
    assert all(r["param_grad_norm"] > 0 and r["param_norm"] > 0 for r in rows)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in model.objective.named_buffers())
    assert model.training


def test_gradients_cli_from_checkpoint_and_fresh_init(tmp_path: Path):
    ckpt = save_checkpoint(vae(28), tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert main(["gradients", str(ckpt), "--images", "4"]) == 0
    rows = read_csv(tmp_path / "run" / "analysis" / "gradients.csv")
    assert len(rows) == 8 and rows[0]["name"] == "encoder.layer1.0"
    out = tmp_path / "init"
    base = "experiment=smoke data.train_size=64 data.val_size=16 model.arch.width=2 model.arch.depth=40"
    args = ["gradients", "--init", base, "--init", f"{base} model.arch.shortcut=none", "--out", str(out)]
    assert main([*args, "--images", "4"]) == 0
    report = json.loads((out / "gradients.json").read_text())
    assert [m["shortcut"] for m in report["models"]] == ["identity", "none"]
    assert {p.name for p in out.iterdir()} == {"gradients.json", "gradients.csv", "gradients.png"}


def test_data_from_the_runs_hydra_config_with_interpolations(tmp_path: Path):
    """Checkpoints without a run config: the data comes from <run>/.hydra/config.yaml, whose
    interpolations (seed: ${seed}) are resolved."""
    ckpt = save_checkpoint(vae(28), tmp_path / "run" / "checkpoints" / "last.ckpt", data=None)
    data = {**DATA, "seed": "${seed}"}
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"seed": 3, "data": data}))
    assert main(["gradients", str(ckpt), "--images", "4"]) == 0
    assert (tmp_path / "run" / "analysis" / "gradients.png").is_file()


# ------------------------------------------------------------------------------------- activations
def test_activations_cli_writes_one_grid_per_stage(tmp_path: Path, capsys):
    ckpt = save_checkpoint(vae(28), tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert main(["activations", str(ckpt), "--images", "3", "--channels", "4", "--scale", "2"]) == 0
    out = tmp_path / "run" / "analysis"
    for i in range(1, 5):  # rows: 3 images; columns: the image and 4 maps, 2 x 32 px + 2 px padding
        assert png_size(out / f"activations_layer{i}.png") == (2 + 5 * 66, 2 + 3 * 66)
    stats = read_csv(out / "activations.csv")
    assert [r["stage"] for r in stats] == ["layer1", "layer2", "layer3", "layer4"]
    assert [int(r["resolution"]) for r in stats] == [32, 16, 8, 4]
    mlp = VAE(arch=MLPArchConfig(depth=8, width=8, latent_dim=4))
    bad = save_checkpoint(mlp, tmp_path / "mlp" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert main(["activations", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resvae-analyze: error: activations needs a convolutional encoder") and "mlp" in err


# ------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys):
    """main() is the console script's body (`sys.exit(main())`): an error it did not catch would
    raise here instead of returning 2."""
    cases = [
        (["lesion", str(tmp_path / "missing.ckpt")], "does not exist"),
        (["gradients"], "give a checkpoint"),
        (["lesion", str(tmp_path / "x.ckpt"), "--images", "0"], "--images must be >= 1"),
        (["gradients", "--init", "model.arch.depth=50", "--out", str(tmp_path)], "invalid depth 50"),
        (["compare", str(tmp_path / "nowhere")], "no such sweep folder"),
        (["compare", str(tmp_path)], "no job folders"),
    ]
    no_data = save_checkpoint(vae(28), tmp_path / "r" / "checkpoints" / "last.ckpt", data=None)
    cases.append((["lesion", str(no_data)], "--data-root DIR"))
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("resvae-analyze: error: ") and words in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------- sweeps
def _fake_sweep(root: Path) -> Path:
    losses = {(28, "identity"): 10.0, (28, "none"): 11.0, (40, "identity"): 9.5, (40, "none"): 12.0}
    for (depth, shortcut), loss in losses.items():
        job = root / f"model.arch.depth={depth},model.arch.shortcut={shortcut}"
        job.mkdir(parents=True)
        config = {"model": {"arch": {"depth": depth, "shortcut": shortcut}}}
        summary = {
            "status": "finished",
            "config": config,
            "train_loss": loss,
            "val_loss": loss + 1,
            "epochs": 3,
        }
        (job / "summary.json").write_text(json.dumps(summary))
    broken = root / "broken"
    (broken / ".hydra").mkdir(parents=True)
    return root


def test_compare_sweep_table_and_plot(tmp_path: Path):
    sweep = _fake_sweep(tmp_path / "multirun")
    written = compare_sweep(sweep, "degradation", x="model.arch.depth", series="model.arch.shortcut")
    names = "degradation.csv degradation_seeds.csv degradation.json degradation.md degradation.png"
    assert [p.name for p in written] == names.split()
    rows = read_csv(sweep / "analysis" / "degradation.csv")
    assert [(r["model.arch.shortcut"], r["model.arch.depth"], r["train_loss"]) for r in rows[:4]] == [
        ("identity", "28", "10.0"),
        ("identity", "40", "9.5"),
        ("none", "28", "11.0"),
        ("none", "40", "12.0"),
    ]
    assert rows[-1]["status"] == "broken"
    assert "| model.arch.shortcut | model.arch.depth |" in (sweep / "analysis" / "degradation.md").read_text()
    bars = compare_sweep(sweep, "variants", series="model.arch.shortcut")  # no x: bars per job
    assert bars[-1].name == "variants.png" and png_size(bars[-1])[0] > 500


def test_compare_shows_mean_and_sd_over_seeds_with_n(tmp_path: Path):
    """Runs whose configs differ only in their seeds (seed, and data.seed that it sets) are one
    configuration: mean ± sd over them, n shown. A run differing in anything else is not grouped."""
    import statistics

    from resvae.cli.analyze.compare import compare_figure, seed_means

    sweep = tmp_path / "multirun"
    runs = {  # (depth, shortcut, seed, lr): final training loss
        (28, "none", 0, 1e-3): 12.0, (28, "none", 1, 1e-3): 13.0, (28, "none", 2, 1e-3): 17.0,
        (28, "identity", 0, 1e-3): 10.0, (28, "identity", 1, 1e-3): 11.0,
        (28, "identity", 0, 5e-3): 30.0,  # another learning rate: its own configuration
    }  # fmt: skip
    for (depth, shortcut, seed, lr), loss in runs.items():
        job = sweep / f"depth={depth},shortcut={shortcut},seed={seed},lr={lr}"
        job.mkdir(parents=True)
        model = {"arch": {"depth": depth, "shortcut": shortcut}, "optimizer": {"lr": lr}}
        config = {"seed": seed, "data": {"seed": seed}, "model": model}
        summary = {
            "status": "finished",
            "config": config,
            "seed": seed,
            "train_loss": loss,
            "val_loss": loss + 1,
        }
        (job / "summary.json").write_text(json.dumps(summary))
    compare_sweep(sweep, "seeds", x="model.arch.depth", series="model.arch.shortcut")
    groups = read_csv(sweep / "analysis" / "seeds_seeds.csv")
    table = {(g["model.arch.shortcut"], g["n"], g["seeds"]): g for g in groups}
    assert sorted(table) == [("identity", "1", "0"), ("identity", "2", "0 1"), ("none", "3", "0 1 2")]
    plain = table[("none", "3", "0 1 2")]
    assert float(plain["train_loss"]) == pytest.approx(14.0)
    assert float(plain["train_loss_sd"]) == pytest.approx(statistics.stdev([12.0, 13.0, 17.0]))
    assert plain["train_loss_n"] == "3" and table[("identity", "1", "0")]["train_loss_sd"] == ""
    md = (sweep / "analysis" / "seeds.md").read_text()
    assert f"| none | 28 | 3 | 0 1 2 | 14 ± {statistics.stdev([12.0, 13.0, 17.0]):.3g} |" in md
    assert "| identity | 28 | 1 | 0 | 30 |" in md  # one run: no sd
    report = json.loads((sweep / "analysis" / "seeds.json").read_text())
    assert len(report["runs"]) == 6 and len(report["seed_means"]) == 3
    rows = report["runs"]
    fig = compare_figure(seed_means(rows, ["model.arch.shortcut", "model.arch.depth"]), "seeds",
                         "model.arch.depth", "model.arch.shortcut")  # fmt: skip
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "model.arch.shortcut=none, final (n=3)" in legend
    assert "model.arch.shortcut=identity, final (n=1-2)" in legend
    assert "mean ± sd over seeds" in fig.get_suptitle()


def test_lesion_and_gradient_plots_say_which_network_is_plain(tmp_path: Path):
    from resvae.cli.analyze.gradients import plot_gradients
    from resvae.cli.analyze.lesion import plot_lesion

    x = images(4)
    res = subject(vae(28))
    plain = subject(vae(28, shortcut="none"))
    plain.label = "deep"
    results = [lesion_study(s, x, draws=1, seed=0, batch=4, k_max=1) for s in (res, plain)]
    fig = plot_lesion(results)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["residual (shortcut identity): tiny", "plain (shortcut none): deep"]
    assert "plain (shortcut none) vs residual" in fig.get_suptitle()
    profiles = [{**s.describe(), "blocks": gradient_profile(s.model, x, seed=0)} for s in (res, plain)]
    fig = plot_gradients(profiles)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == legend
    assert "plain (shortcut none) vs residual" in fig.get_suptitle()


def test_sweep_comparison_hydra_callback_writes_at_multirun_end(tmp_path: Path):
    sweep = _fake_sweep(tmp_path / "multirun")
    callback = SweepComparison(name="degradation", x="model.arch.depth", series="model.arch.shortcut")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "name": "t", "logger": {"csv": {}}})
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)
    assert (sweep / "analysis" / "degradation.png").is_file()
    callback.on_job_start(config=config, task_function=None)  # the other hooks do nothing


def test_sweep_comparison_logs_table_and_plot_to_wandb_with_a_wandb_logger(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    sweep = _fake_sweep(tmp_path / "multirun")
    callback = SweepComparison(name="degradation", x="model.arch.depth", series="model.arch.shortcut")
    logger = {"wandb": {"project": "resvae", "entity": None}}
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "name": "t", "logger": logger})
    callback.on_multirun_end(config)
    (run,) = (sweep / "analysis" / "wandb").glob("offline-run-*")
    media = {p.relative_to(run / "files" / "media").parts[:3] for p in (run / "files" / "media").rglob("*.*")}
    assert ("images", "analysis", "degradation") in media and ("table", "analysis", "degradation") in media


# ------------------------------------------------------------------------------------- callback
def _fit(tmp_path: Path, callbacks: list, epochs: int = 2) -> VAE:
    from resvae.data import SyntheticDataModule

    torch.manual_seed(0)
    model = VAE(
        arch=ArchConfig(depth=28, width=2, latent_dim=8),
        optimizer=lambda params, **kw: torch.optim.Adam(params, lr=1e-3, **kw),
    )
    dm = SyntheticDataModule(train_size=48, test_size=16, batch_size=16, val_size=16)
    trainer = cpu_trainer(
        max_epochs=epochs, callbacks=callbacks, default_root_dir=str(tmp_path), enable_checkpointing=False
    )
    trainer.fit(model, datamodule=dm)
    return model


def test_gradient_flow_callback_writes_per_epoch_and_leaves_training_unchanged(tmp_path: Path):
    from resvae.callbacks.gradient_flow import GradientFlow

    plain = _fit(tmp_path / "plain", [])
    probed = _fit(tmp_path / "probed", [GradientFlow(epochs=[0, 1], n_images=8)])
    folder = tmp_path / "probed" / "gradient_flow"
    names = {p.name for p in folder.iterdir()}
    assert {"epoch_000.csv", "epoch_000.png", "epoch_001.csv", "epoch_002.csv", "gradient_flow.png"} <= names
    rows = read_csv(folder / "epoch_000.csv")
    assert len(rows) == 8 and all(float(r["param_grad_norm"]) > 0 for r in rows)
    # measuring does not change what is trained: same weights as the run without the callback
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name
