"""The options every tool shares: a slip on the command line is argparse's one-line usage error
(exit 2) before anything is read or written, never a run's own file replaced."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from resvae.cli import evaluate, sample
from resvae.cli.analyze.cli import build_parser


def exit_code(parse, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    return int(stop.value.code)


@pytest.mark.parametrize("out", ["RUN/checkpoints/best.ckpt", "RUN/summary.json", "RUN/metrics.csv", "RUN"])
def test_eval_refuses_an_out_that_would_replace_a_run_file(tmp_path: Path, out: str) -> None:
    (tmp_path / "RUN").mkdir()
    argv = [str(tmp_path / "RUN"), "--out", str(tmp_path / out)]
    assert exit_code(evaluate.parser().parse_args, argv) == 2
    args = evaluate.parser().parse_args([str(tmp_path / "RUN"), "--out", str(tmp_path / "e.json")])
    assert args.out == tmp_path / "e.json"  # a .json file of its own is fine


@pytest.mark.parametrize("name", ["../model.arch.depth=28/summary", "../../evil", "", ".hidden", "a/b"])
def test_compare_names_its_files_in_the_sweep_folder_only(name: str) -> None:
    assert exit_code(build_parser().parse_args, ["compare", "SWEEP", "--name", name]) == 2


def test_analyze_takes_the_devices_it_can_run_on() -> None:
    for device in ("foo", "mps", "meta", "cuda:x"):
        assert exit_code(build_parser().parse_args, ["lesion", "RUN", "--device", device]) == 2, device
    for device in ("cpu", "cuda", "cuda:1"):
        assert build_parser().parse_args(["lesion", "RUN", "--device", device]).device == device


@pytest.mark.parametrize("text", ["inf", "1,inf", "nan", "-1"])
def test_sample_temperatures_are_finite_and_not_negative(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        sample._temperature(text)


@pytest.mark.parametrize(("name", "words"), [("missing.yaml", "does not exist"), ("folder", "is a folder")])
def test_config_that_is_not_a_file_says_what_it_is(tmp_path: Path, name: str, words: str) -> None:
    from resvae.cli.targets import Target, run_config

    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=f"--config .*{name} {words}: pass the run's config file"):
        run_config(Target("RUN", None), tmp_path / name)
