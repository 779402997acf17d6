"""resvae-train: the Hydra app that trains one VAE/AE run (or each job of a multirun).

    resvae-train experiment=smoke                     # a CPU run of a minute or two
    resvae-train data.root=/data/cifar10 model.arch.depth=40
    resvae-train -m model.arch.depth=28,40,70,100     # a depth sweep, one job per depth
    resvae-train experiment=depth_sweep               # the recommended GPU sweep

This module stays light (no torch, no Lightning) so that `--help` and `--cfg job` answer at once;
a job's work is in resvae/cli/training.py.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from resvae.run.config import config_dir

# Hydra's flags that only print (help, the config, shell completion): no check, no run
PRINTING_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from resvae.cli.training import run_job  # torch and Lightning: only for a job that runs

    return run_job(cfg)


def cli() -> None:
    """The console script: a mistyped or renamed config key is one clear line (with the key it
    probably meant) before Hydra starts, rather than Hydra's advice to append it with '+'."""
    # Hydra's parser takes flags only before the overrides (`resvae-train depth=40 -m` is a usage
    # error): -m moves to the front; it takes no value, so nothing else moves with it
    multirun = [arg for arg in sys.argv[1:] if arg in ("-m", "--multirun")]
    sys.argv[1:] = multirun + [arg for arg in sys.argv[1:] if arg not in multirun]
    if not any(arg in PRINTING_FLAGS or arg.startswith("--cfg=") for arg in sys.argv[1:]):
        from resvae.run.preflight import config_problem  # composes configs (and loads torch): not for --help

        problem = config_problem(sys.argv[1:])
        if problem:
            print(f"resvae-train: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
