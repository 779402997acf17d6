"""The Python API (`resvae.load`): the README's example runs as written, and its numbers are the
model's own (the same ELBO the objective gives, bits/dim its conversion, the IW bound below the
ELBO on average)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import resvae
from tests.helpers.config import REPO
from tests.helpers.processes import train_runs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_runs(tmp_path_factory.mktemp("api"), {"vae": ["trainer.max_epochs=1"]})["vae"]


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- python-api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its Python API example"
    return block.group(1)


def test_the_readme_example_runs_as_written(run: Path) -> None:
    scope = {"RUN": str(run)}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    assert scope["samples"].shape == (16, 3, 32, 32)
    assert float(scope["samples"].min()) >= 0 and float(scope["samples"].max()) <= 1
    assert scope["recon"].shape == (4, 3, 32, 32) and scope["nats"].shape == (4,)
    # each call draws its own posterior sample: equal up to that noise
    torch.testing.assert_close(scope["bits"], scope["nats"] / (3 * 32 * 32 * math.log(2)), rtol=1e-2, atol=0)
    assert float(scope["iw"].mean()) <= float(scope["nats"].mean()) + 5.0  # a tighter bound, noise aside


def test_load_takes_a_folder_or_a_checkpoint_and_gives_the_same_model(run: Path) -> None:
    from_folder, from_file = resvae.load(run), resvae.load(run / "checkpoints" / "best.ckpt")
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(
        from_folder.sample(3, generator=g), from_file.sample(3, generator=g.manual_seed(1))
    )
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    torch.testing.assert_close(from_folder.encode(images), from_file.encode(images))
    assert from_folder.encode(images).shape == (2, *from_folder.latent_shape)


def test_a_bad_path_is_one_clear_error(tmp_path: Path) -> None:
    from resvae.run.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        resvae.load(tmp_path / "nothing.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resvae.load(tmp_path / "run")
