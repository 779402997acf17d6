"""Bad input is one line with the fix and exit 2, and nothing is created or lost.

The command lines are checked before Hydra starts (resvae/run/preflight.py); the table below is the
one a red team tried against 14b4f38, where each gave a traceback, Hydra's advice to append the
key with '+', or trained (a name with '..' wrote a whole run outside the output root).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from resvae.run.checkpoints import CheckpointError, read_checkpoint
from resvae.run.preflight import config_problem
from tests.helpers.config import TINY
from tests.helpers.records import only_run_dir

# (command line, words the one line must hold)
BAD_COMMAND_LINES = [
    (["name=../../../../tmp/x"], "a run name is one folder name"),
    (["name=/abs/path"], "a run name is one folder name"),
    (["name=a\nb"], "a run name is one folder name"),
    (["name=.."], "a run name is one folder name"),
    (["output_root=/etc/hostname/outputs"], "output_root=/etc/hostname/outputs: cannot create folders"),
    (["seed=abc"], "seed=abc: expected a whole number"),
    (["data.batch_size=1.5"], "data.batch_size=1.5: expected a whole number"),
    (["run.signals=[SIGFOO]"], "'SIGFOO' is not a signal"),
    (["run.signals=[SIGKILL]"], "'SIGKILL' is not a signal that can be caught"),
    (["seedd=1"], "seedd is not a key of this config; did you mean seed?"),
    (["resme=never"], "did you mean resume?"),
    (["tset=false"], "did you mean test?"),
    (["model.arch.dept=28"], "did you mean model.arch.depth?"),
    (["model.lr=1e-3"], "did you mean model.optimizer.lr?"),
    (["model=vaee"], "model=vaee: no such option; choose one of ae, hvae, keras2018"),
    (["experiment=nonexistent"], "experiment=nonexistent: no such option; choose one of degradation"),
    (["trainer=tpu"], "trainer=tpu: no such option; choose one of cpu, ddp, default, gpu"),
    (["model.optimizer.lr=abc"], "model.optimizer.lr=abc: expected a number"),
    (["model.optimizer.lr=1e-3,abc"], "model.optimizer.lr=abc: expected a number"),  # any value of a sweep
    (["matmul_precision=bogus"], "matmul_precision=bogus: choose one of highest, high, medium"),
    (["conv_precision=fast"], "conv_precision=fast: choose one of ieee, tf32 or null"),
    (["model.arch.depth=29"], "invalid depth 29 for bottleneck blocks"),
    (["model.arch.depth=28,30"], "nearest valid: 28 or 34"),
    (["model.arch.blocks=[1,1]"], "model.arch.blocks must list 4 positive block counts"),
    (["model.arch.shortcut=foo"], "unknown shortcut 'foo'"),
    (["output_root="], "output_root is empty"),  # the configs would join it into /<name>
    (["seed=-1"], "seed=-1: a seed is a whole number from 0 to 4294967295"),
    (["seed=0,4294967296"], "seed=4294967296: a seed is a whole number"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: set the number of epochs to train, 1 or more"),
    (["trainer.max_epochs=-5"], "(-1: no limit)"),
    (["resume=nevr"], "resume=nevr: no such checkpoint file; choose auto"),
    (["data.batch_size=0"], "data.batch_size must be >= 1, got 0"),  # the data module is built
    (["data.batch_size=8,0"], "data.batch_size must be >= 1, got 0"),  # for each value of a sweep
]


@pytest.mark.parametrize(("argv", "words"), BAD_COMMAND_LINES, ids=lambda v: str(v)[:40])
def test_each_bad_command_line_is_one_line_naming_the_fix(argv: list[str], words: str) -> None:
    problem = config_problem(argv)
    assert problem is not None and words in problem
    assert "\n" not in problem.replace("a\nb", "")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["experiment=smoke", "name=depth_study.v2", "seed=3", "model.arch.depth=28,40,70,100"],
        ["+extra_key=1", "~tags", "hydra.verbose=true", "conv_precision=tf32", "data.batch_size=25"],
        ["model=keras2018", "experiment=seed_depth_sweep", "model.arch.depth=100"],
        ["output_root=outputs/../elsewhere"],  # the user's own root is used as given (resolved)
    ],
)
def test_good_command_lines_pass(argv: list[str]) -> None:
    assert config_problem(argv) is None


def test_a_slurm_sweep_without_sbatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    problem = config_problem(["-m", "hydra/launcher=slurm"])
    assert problem is not None and "sbatch" in problem and "submitit_local" in problem


def run(args: list[str], cwd: Path, module: str = "resvae.cli.train") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "HOME": str(cwd.parent / "home")},
    )


@pytest.mark.parametrize(
    "args",
    [
        ["name=../../escaped"],
        ["model.arch.depth=29"],
        ["seedd=1"],
        ["model.optimizer.lr=abc"],
        ["resume=never_", "trainer.max_epochs=0"],
        ["data.batch_size=0"],
    ],
)
def test_the_app_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "work" / "a").mkdir(parents=True)
    (tmp_path / "work" / "home").mkdir()  # caches of torch and matplotlib
    proc = run([*TINY, "output_root=outputs", *args], tmp_path / "work" / "a")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resvae-train: error: ") and "Traceback" not in proc.stderr
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "home" not in p.parts)
    assert made == ["work", "work/a"]  # no folder, no log, nowhere


def test_resvae_bench_shares_the_key_check(tmp_path: Path) -> None:
    proc = run(["model.arch.dept=28"], tmp_path, module="resvae.cli.bench")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "resvae-bench: error: model.arch.dept is not a key of this config; did you mean model.arch.depth? "
        "(to add a new key on purpose, write +model.arch.dept=...)"
    )


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    torch.save(
        {"state_dict": {}, "epoch": 3, "pytorch-lightning_version": "2.1.0"}, tmp_path / "lightning.ckpt"
    )
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "state_dict.ckpt")
    torch.save({"a": 1}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    whole = (tmp_path / "lightning.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("hello world\n" * 10)
    with zipfile.ZipFile(tmp_path / "zip.ckpt", "w") as z:
        z.writestr("a", "b")
    for path in tmp_path.glob("*.ckpt"):
        files[path.stem] = path
    return files


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("lightning", "a Lightning 2.1.0 checkpoint (epoch 3) of another program"),
        ("state_dict", "a bare state_dict of 2 tensors, not a training checkpoint"),
        ("legacy", "in torch's legacy (pre-1.6, not zip) format"),
        ("truncated", "a zip archive whose end is missing: truncated"),
        ("empty", "the file is empty"),
        ("text", "not a PyTorch checkpoint at all (it starts with b'hell')"),
        ("zip", "a complete zip archive, not in PyTorch's checkpoint layout"),
    ],
)
def test_a_foreign_or_broken_checkpoint_is_described_as_what_it_is(
    tmp_path: Path, kind: str, words: str
) -> None:
    path = checkpoint_files(tmp_path)[kind]
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert words in message and "\n" not in message
    if kind not in ("truncated", "empty"):
        assert "truncated" not in message  # it is not what it is not


def test_an_unreadable_best_ckpt_points_at_the_runs_last_ckpt(tmp_path: Path) -> None:
    files = checkpoint_files(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    best = tmp_path / "checkpoints" / "best.ckpt"
    best.write_bytes(files["truncated"].read_bytes())
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"use another checkpoint \(e.g. .*checkpoints/last.ckpt\)"):
        read_checkpoint(best)


# ----------------------------------------------------------------------------- a diverged run
@pytest.mark.slow
def test_a_run_that_never_had_a_finite_val_loss_has_no_best_ckpt_and_every_tool_says_so(
    tmp_path: Path, run_train
) -> None:
    proc = run_train(*TINY, "logger=csv", "model.optimizer.lr=1e6", "trainer.max_epochs=2", check=False)
    assert proc.returncode == 2 and "no epoch had a finite one, so there is no best.ckpt" in proc.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # Lightning would save the NaN epoch
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary.get("best_val_loss") is None
    for tool in (["resvae.cli.evaluate"], ["resvae.cli.sample"], ["resvae.cli.analyze", "lesion"]):
        out = subprocess.run(
            [sys.executable, "-m", *tool, str(run_dir), "--device", "cpu"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2, (tool, out.stderr[-500:])
        line = out.stderr.strip().splitlines()[-1]
        assert "has no best.ckpt: no epoch had a finite val/loss" in line and "last.ckpt" in line, line


def test_every_value_of_a_swept_group_is_checked_not_only_the_first() -> None:
    problem = config_problem(["-m", "experiment=smoke", "data=cifar10,synthetic", "data.root=/x"])
    assert problem is not None and problem.startswith("data.root is not a key of this config")
    assert problem.endswith("(in the jobs with data=synthetic)")
    assert config_problem(["-m", "model=vae,ae", "model.arch.depth=28,40"]) is None


def test_hydra_flags_and_their_values_are_not_overrides() -> None:
    assert config_problem(["--cfg", "job", "experiment=smoke", "-p", "model"]) is None
    assert config_problem(["--info", "config", "seed=1"]) is None
