"""resvae-sample on checkpoints of real (tiny) training runs: a VAE and an AE, 1 epoch each,
trained at once in two processes and shared by the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import resvae
from resvae.cli import sample
from resvae.cli.data_root import load_split
from tests.helpers.processes import one_error_line, run_cli, train_runs

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TILE = 32 + 2  # a 32 px image and make_grid's 2 px padding


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) of a make_grid PNG of rows x cols tiles of 32 px."""
    return cols * TILE + 2, rows * TILE + 2


def tile(png: Path, row: int, col: int) -> torch.Tensor:
    """The 32 x 32 image at (row, col) of a grid, uint8 [3, 32, 32]."""
    pixels = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1)
    top, left = 2 + row * TILE, 2 + col * TILE
    return pixels[:, top : top + 32, left : left + 32]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sample-runs")
    return train_runs(
        root,
        {
            "vae": ["trainer.max_epochs=1"],
            "ae": ["trainer.max_epochs=1", "model=ae"],
            "hvae": ["trainer.max_epochs=1", "model=hvae"],
        },
    )


@pytest.fixture(scope="module")
def test_images(runs: dict[str, Path]) -> torch.Tensor:
    return load_split(OmegaConf.load(runs["vae"] / ".hydra" / "config.yaml"), "test").images


# the arguments of the geometry test: 12 samples 4 per row at two temperatures, 6 reconstructions,
# 3 interpolations of 5 steps
SMALL = ["--temperatures", "1.0", "0.5", "--n", "12", "--nrow", "4", "--n-recon", "6",
         "--interpolations", "3", "--steps", "5", "--device", "cpu"]  # fmt: skip
EXPECTED = {
    "samples_T1.png": grid_size(3, 4),
    "samples_T0.5.png": grid_size(3, 4),
    "reconstructions.png": grid_size(4, 4),  # two bands of (originals, reconstructions)
    "interpolations.png": grid_size(3, 5 + 2),  # a, 5 steps, b
}


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_same_seed_byte_identical_files_in_two_processes(runs: dict[str, Path], tmp_path: Path) -> None:
    """A fresh process and this one (which has run other things before) write the same bytes."""
    args = [str(runs["vae"]), *SMALL, "--seed", "5"]
    proc = run_cli("resvae.cli.sample", *args, "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert sample.main([*args, "--out", str(tmp_path / "b")]) == 0  # while the other one runs
    assert sample.main([*args[:-1], "6", "--out", str(tmp_path / "c")]) == 0
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == [str(tmp_path / "a" / name) for name in EXPECTED]  # the files written
    first, second = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert first == second and set(first) == set(EXPECTED)
    # another seed: other noise, other images
    other = pngs(tmp_path / "c")
    assert set(other) == set(EXPECTED) and all(other[name] != first[name] for name in EXPECTED)


def test_grid_geometry_and_layout(
    runs: dict[str, Path], test_images: torch.Tensor, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "grids"
    assert sample.main([str(runs["vae"]), *SMALL, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    written = printed.out.split()
    assert written == [str(out / name) for name in EXPECTED]
    # not a terminal: a progress line at every quarter of the grids, the last one at 100%
    progress = [line for line in printed.err.splitlines() if ": grid " in line]
    total = len(EXPECTED)
    assert progress and progress[-1].endswith(f"grid {total}/{total} (100%)"), printed.err
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPECTED)  # no temporary files left
    for name, size in EXPECTED.items():
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
        assert Image.open(out / name).size == size, name

    def is_test_image(image: torch.Tensor) -> bool:
        return bool((test_images == image).flatten(1).all(1).any())

    recon = out / "reconstructions.png"
    # rows 0 and 2 hold originals (exact test images), rows 1 and 3 their reconstructions
    assert all(
        is_test_image(tile(recon, row, col)) for row in (0, 2) for col in range(4) if row == 0 or col < 2
    )
    assert not any(is_test_image(tile(recon, row, col)) for row in (1, 3) for col in range(4))
    assert (
        int(tile(recon, 2, 3).max()) == 0 and int(tile(recon, 3, 3).max()) == 0
    )  # the partial band's filler
    interp = out / "interpolations.png"
    for row in range(3):  # each row starts and ends with a test image, different ones
        a, b = tile(interp, row, 0), tile(interp, row, 6)
        assert is_test_image(a) and is_test_image(b) and not torch.equal(a, b)


def test_temperatures_decode_the_same_noise(runs: dict[str, Path], tmp_path: Path) -> None:
    """With one temperature the grid is the first of a run with several: the same noise."""
    base = ["--n", "8", "--n-recon", "0", "--interpolations", "0", "--device", "cpu"]
    assert (
        sample.main([str(runs["vae"]), *base, "--temperatures", "0.5", "1.0", "--out", str(tmp_path / "a")])
        == 0
    )
    assert sample.main([str(runs["vae"]), *base, "--temperatures", "0.5", "--out", str(tmp_path / "b")]) == 0
    assert pngs(tmp_path / "b") == {"samples_T0.5.png": pngs(tmp_path / "a")["samples_T0.5.png"]}


def test_default_folder_is_the_runs_samples_eval(runs: dict[str, Path], capsys) -> None:
    args = ["--n", "4", "--n-recon", "2", "--interpolations", "1", "--steps", "2", "--device", "cpu"]
    assert sample.main([str(runs["vae"] / "checkpoints" / "best.ckpt"), *args]) == 0
    folder = runs["vae"] / "samples_eval"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "samples_T1.png",
            "samples_T0.8.png",
            "samples_T0.6.png",
            "reconstructions.png",
            "interpolations.png",
        ]
    )
    assert capsys.readouterr().out.split()[0] == str(folder / "samples_T1.png")


def test_autoencoder_samples_from_its_code_gaussian(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ae"
    assert sample.main([str(runs["ae"]), *SMALL, "--out", str(out)]) == 0
    assert {name: Image.open(out / name).size for name in EXPECTED} == EXPECTED
    # the fitted Gaussian of the codes: its mean and spread drive the samples, so temperatures differ
    assert pngs(out)["samples_T1.png"] != pngs(out)["samples_T0.5.png"]


def test_errors_are_one_line(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert sample.main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err, "resvae-sample")
    sweep = tmp_path / "sweep"
    (sweep / "a" / "checkpoints").mkdir(parents=True)
    (sweep / "b" / "checkpoints").mkdir(parents=True)
    assert sample.main([str(sweep)]) == 2
    assert "is a sweep folder" in one_error_line(capsys.readouterr().err, "resvae-sample")
    with pytest.raises(SystemExit) as exit_:  # argparse's error: usage and one line, exit 2
        sample.main([str(runs["vae"]), "--temperatures", "-1"])
    assert exit_.value.code == 2


def test_hierarchical_vae_per_group_temperatures_and_the_prior_mean(
    runs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """Temperature 0 decodes the prior's mean: the same grid whatever the seed; one temperature per
    latent group (top-down) is a grid of its own; a wrong count of groups is one line, exit 2."""
    model = resvae.load(runs["hvae"], device="cpu")
    groups = model.objective.num_groups
    per_group = ",".join(["1"] * (groups - 1) + ["0.5"])
    base = ["--n", "4", "--n-recon", "0", "--interpolations", "0", "--device", "cpu"]
    for seed in ("1", "2"):
        out = tmp_path / seed
        args = [str(runs["hvae"]), *base, "--temperatures", "0", per_group, "--seed", seed, "--out", str(out)]
        assert sample.main(args) == 0
    assert pngs(tmp_path / "1")["samples_T0.png"] == pngs(tmp_path / "2")["samples_T0.png"]
    name = f"samples_T{per_group}.png"
    assert pngs(tmp_path / "1")[name] != pngs(tmp_path / "2")[name]  # noise at T > 0 follows the seed
    capsys.readouterr()
    assert sample.main([str(runs["hvae"]), *base, "--temperatures", "1,1", "--out", str(tmp_path / "x")]) == 2
    assert "temperatures given for" in one_error_line(capsys.readouterr().err, "resvae-sample")
