"""The repository, the tiny run every end-to-end test starts from, and the composed train config."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from resvae.run.config import config_dir

REPO = Path(__file__).resolve().parents[2]

# Fast, quiet end-to-end runs: the smoke experiment with fewer images.
TINY = ["experiment=smoke", "data.train_size=128", "data.val_size=32", "data.test_size=32"]


def compose_train(overrides: list[str], hydra_cfg: bool = False):
    """The train config (conf/train.yaml) composed with `overrides`, as Hydra would compose it."""
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_cfg)
