"""Which images resvae-analyze, resvae-eval and resvae-sample read (resvae/cli/data_root.py): the
same rule for all, `--data-root`, else the run's .hydra/config.yaml, else $RESVAE_DATA or
./data, and one line on stderr saying which and why. Tiny CIFAR-10 archives stand for two data
sets, A (the run's) and B (what $RESVAE_DATA points at): they differ in images and in size, so
which one a tool read shows in its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from resvae.cli import analyze, evaluate, sample
from resvae.cli.data_root import resolve_data_root
from resvae.data import CIFAR10DataModule
from resvae.data.archive import write_batch
from resvae.data.modules import synthetic_images
from resvae.models import VAE
from resvae.nn import ArchConfig
from resvae.run.layout import run_folder

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = {  # the run's data config as the checkpoint keeps it: data.root is not part of it
    "_target_": "resvae.data.CIFAR10DataModule",
    "batch_size": 8,
    "val_size": 8,
    "flip": False,
    "seed": 0,
}
TEST_IMAGES = {"A": 6, "B": 10}


def write_cifar(root: Path, seed: int, n_test: int) -> Path:
    """A CIFAR-10 folder of 24 training and `n_test` test images (generated from `seed`)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    write_batch(folder / "data_batch_1", synthetic_images(24, 32, seed))
    write_batch(folder / "test_batch", synthetic_images(n_test, 32, seed + 100))
    return root


@pytest.fixture
def two_data_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Data A and data B, and $RESVAE_DATA pointing at B."""
    roots = {
        "A": write_cifar(tmp_path / "data-A", 1, TEST_IMAGES["A"]),
        "B": write_cifar(tmp_path / "data-B", 2, TEST_IMAGES["B"]),
    }
    monkeypatch.setenv("RESVAE_DATA", str(roots["B"]))
    return roots


def make_run(folder: Path, root: Path | None, fingerprint_root: Path | None = None) -> Path:
    """A run folder as resvae-train leaves it: checkpoints/last.ckpt (the run config without
    data.root, the images' fingerprint) and, when `root` is given, .hydra/config.yaml naming it."""
    torch.manual_seed(0)
    model = VAE(arch=ArchConfig(depth=28, width=2, latent_dim=8))
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    ckpt["resvae"]["run"] = {"config": {"data": DATA}}
    if fingerprint_root is not None:
        ckpt["resvae"]["run"]["data"] = CIFAR10DataModule(root=str(fingerprint_root), **DATA_ARGS).fingerprint
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, folder / "checkpoints" / "last.ckpt")
    if root is not None:
        (folder / ".hydra").mkdir()
        config = {"seed": 0, "data": {**DATA, "root": str(root), "download": True}}
        OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    return folder


DATA_ARGS = {k: v for k, v in DATA.items() if k != "_target_"}


def data_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "data: " in line]


# ---------------------------------------------------------------------------------- the rule
def test_the_rule_option_then_the_runs_config_then_the_default(
    tmp_path: Path, two_data_sets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_data_sets["A"], two_data_sets["B"]
    run = make_run(tmp_path / "run", a)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert run_folder(ckpt) == run and run_folder(run) == run
    from_run = resolve_data_root(None, ckpt)
    assert (from_run.path, from_run.source) == (a, "run")
    assert from_run.line() == f"data: {a} (from the run's .hydra/config.yaml)"
    option = resolve_data_root(str(b), ckpt)
    assert (option.path, option.line()) == (b, f"data: {b} (from --data-root)")
    lone = make_run(tmp_path / "lone", None)  # no .hydra/: the default, $RESVAE_DATA
    default = resolve_data_root(None, lone / "checkpoints" / "last.ckpt")
    assert default.path == b and default.source == "default"
    assert "the default: $RESVAE_DATA" in default.why and "no " in default.why
    monkeypatch.delenv("RESVAE_DATA")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root(None, lone).path == tmp_path / "data"
    assert "$RESVAE_DATA is not set" in resolve_data_root(None, lone).why


def test_a_relative_or_interpolated_root_in_the_runs_config(
    tmp_path: Path, two_data_sets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative root is the folder's below where the run was trained (.hydra/hydra.yaml's
    runtime.cwd); the config's default interpolation is resolved now, and the line says so."""
    trained_in = tmp_path / "project"
    (trained_in / "cifar").mkdir(parents=True)
    run = make_run(tmp_path / "run", Path("cifar"))
    hydra = {"hydra": {"runtime": {"cwd": str(trained_in)}}}
    OmegaConf.save(OmegaConf.create(hydra), run / ".hydra" / "hydra.yaml")
    monkeypatch.chdir(tmp_path)  # not where the run was trained
    found = resolve_data_root(None, run)
    assert found.path == trained_in / "cifar" and "relative to the folder the run was trained in" in found.why
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.data.root = "${oc.env:RESVAE_DATA,data}"
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    found = resolve_data_root(None, run)
    assert found.path == two_data_sets["B"]
    assert found.why == "from the run's .hydra/config.yaml: ${oc.env:RESVAE_DATA,data}, resolved now"


# ---------------------------------------------------------------------------------- the tools
def test_analyze_reads_the_runs_data_not_resvae_data(
    tmp_path: Path, two_data_sets: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """The run's config names A, $RESVAE_DATA names B: every analysis reads A (its 6 test
    images), on a checkpoint and on a run folder; --data-root B reads B."""
    a, b = two_data_sets["A"], two_data_sets["B"]
    run = make_run(tmp_path / "run", a)
    ckpt = run / "checkpoints" / "last.ckpt"
    lesion = ["--images", "500", "--draws", "1", "--k-max", "1", "--device", "cpu"]
    assert analyze.main(["lesion", str(ckpt), *lesion]) == 0
    (model,) = json.loads((run / "analysis" / "lesion.json").read_text())["models"]
    assert model["images"] == TEST_IMAGES["A"]
    assert data_lines(capsys.readouterr().err) == [f"run: data: {a} (from the run's .hydra/config.yaml)"]
    assert analyze.main(["gradients", str(run), "--images", "500", "--device", "cpu"]) == 0
    assert json.loads((run / "analysis" / "gradients.json").read_text())["models"][0]["images"] == 6
    assert analyze.main(["activations", str(run), "--images", "500", "--channels", "1", "--scale", "1"]) == 0
    with Image.open(run / "analysis" / "activations_layer1.png") as grid:
        assert grid.size[1] == 2 + TEST_IMAGES["A"] * 34  # one row per image
    assert f"data: {a} (from the run's .hydra/config.yaml)" in capsys.readouterr().err
    out = tmp_path / "with-b"
    assert analyze.main(["lesion", str(ckpt), *lesion, "--data-root", str(b), "--out", str(out)]) == 0
    assert json.loads((out / "lesion.json").read_text())["models"][0]["images"] == TEST_IMAGES["B"]
    assert data_lines(capsys.readouterr().err) == [f"run: data: {b} (from --data-root)"]


def test_analyze_warns_when_the_images_are_not_the_runs(
    tmp_path: Path, two_data_sets: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """The checkpoint keeps a hash of the images its run was trained on (A): other images (B)
    give a warning, the run's own none."""
    a, b = two_data_sets["A"], two_data_sets["B"]
    run = make_run(tmp_path / "run", a, fingerprint_root=a)
    args = ["gradients", str(run), "--images", "4", "--device", "cpu"]
    assert analyze.main(args) == 0
    assert "not the images the run was trained on" not in capsys.readouterr().err
    assert analyze.main([*args, "--data-root", str(b), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "warning: these are not the images the run was trained on" in err, err


def test_eval_and_sample_read_the_runs_data_and_say_so(
    tmp_path: Path, two_data_sets: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    a, b = two_data_sets["A"], two_data_sets["B"]
    run = make_run(tmp_path / "run", a)
    assert evaluate.main([str(run), "--iw-samples", "0", "--device", "cpu"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["n_images"] == TEST_IMAGES["A"]
    assert result["data"] == f"data: {a} (from the run's .hydra/config.yaml)"
    captured = capsys.readouterr()
    assert data_lines(captured.err) == [result["data"]] and "data:" not in captured.out

    out = tmp_path / "grids"
    args = [str(run), "--n", "2", "--n-recon", "2", "--nrow", "2", "--interpolations", "0", "--device", "cpu"]
    assert sample.main([*args, "--out", str(out)]) == 0
    assert data_lines(capsys.readouterr().err) == [f"data: {a} (from the run's .hydra/config.yaml)"]
    pixels = np.array(Image.open(out / "reconstructions.png").convert("RGB")).transpose(2, 0, 1)
    originals = [pixels[:, 2 : 2 + 32, 2 + c * 34 : 2 + c * 34 + 32] for c in range(2)]
    test_a = synthetic_images(TEST_IMAGES["A"], 32, 101)
    for tile in originals:  # the first row of the grid: images of A's test split
        assert any(np.array_equal(tile, image) for image in test_a)

    other = ["--data-root", str(b), "--out", str(tmp_path / "b.json")]
    assert evaluate.main([str(run), "--iw-samples", "0", *other]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["n_images"] == TEST_IMAGES["B"]
    assert data_lines(capsys.readouterr().err) == [f"data: {b} (from --data-root)"]


@pytest.mark.parametrize("text", [b"model: [unclosed\n  : : :", b"\xe9\xff binary"])
def test_a_config_that_is_not_yaml_is_one_error_naming_it(tmp_path: Path, text: bytes) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_bytes(text)
    with pytest.raises(ValueError, match="cannot read data.root of .*config.yaml"):
        resolve_data_root(None, tmp_path)
