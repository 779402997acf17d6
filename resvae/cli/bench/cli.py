"""resvae-bench's command line: Hydra overrides of the training config, then options."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from resvae.cli.bench import acceptance
from resvae.cli.bench.common import VAL_IMAGES, resolve_device
from resvae.cli.bench.suite import LOOPS, REAL_LOOPS, Settings, data_path_row, measure
from resvae.cli.bench.table import format_table
from resvae.run.preflight import config_problem

GPU_STEPS, CPU_STEPS = 500, 20  # timed steps by default
GPU_WARMUP, CPU_WARMUP = 20, 3
CPU_VAL_IMAGES = 64


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from resvae.cli.bench import __doc__ as doc

    p = argparse.ArgumentParser(
        prog="resvae-bench",
        description=(doc or "").split("\n\n")[0],
        epilog="Positional arguments are Hydra overrides of the training config, e.g. experiment=depth_sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*")
    p.add_argument("--depth", type=int, nargs="+")
    p.add_argument("--batch", type=int, nargs="+")
    p.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    p.add_argument(
        "--steps", type=int, help=f"timed steps (default {GPU_STEPS} on a GPU, {CPU_STEPS} on a CPU; "
        "--acceptance: per case)",
    )  # fmt: skip
    p.add_argument(
        "--warmup", type=int, help=f"untimed steps first (default {GPU_WARMUP} GPU, {CPU_WARMUP} CPU)"
    )
    p.add_argument(
        "--val-images", type=int,
        help=f"the real loop's validation set (default {VAL_IMAGES} on a GPU, {CPU_VAL_IMAGES} on a CPU)",
    )  # fmt: skip
    p.add_argument("--precision", default="config", help="config (the trainer's), 32-true or bf16-mixed")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument(
        "--peak-tflops", type=float, help="dense peak of the precision that runs (default: known GPUs)"
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each loop; the fastest is reported")
    p.add_argument("--threads", type=int, help="torch intra-op threads (1 for a Python-bound CPU check)")
    p.add_argument("--json", type=Path, help="also write the rows (and the acceptance table) here as JSON")
    p.add_argument(
        "--acceptance", action="store_true", help="the GPU acceptance run (see docs/benchmarks.md)"
    )
    p.add_argument(
        "--cases", nargs="+", metavar="CASE",
        help="--acceptance: only these cases, by name (vae, keras2018) or label ('vae d28 b25'); "
        "'gpu-tests' for the GPU tests",
    )  # fmt: skip
    p.add_argument(
        "--keep-runs", type=Path, metavar="DIR",
        help="keep the real loop's run folders (train.log, summary.json, metrics.csv) under DIR",
    )  # fmt: skip
    p.add_argument(
        "--budget-s", type=float, help="--acceptance: no row starts after this (default 540 on a GPU)"
    )
    args = p.parse_intermixed_args(argv)
    positive = [args.steps, args.warmup, args.val_images, args.threads, args.repeat, *(args.batch or [])]
    if any(v is not None and v < 1 for v in positive):
        p.error("--steps, --warmup, --val-images, --threads, --repeat and --batch must be >= 1")
    if args.cases and not args.acceptance:
        p.error("--cases needs --acceptance")
    if args.keep_runs and args.keep_runs.exists() and not args.keep_runs.is_dir():
        p.error(f"--keep-runs {args.keep_runs}: not a folder")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


def settings_for(args: argparse.Namespace, workdir: Path) -> Settings:
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    cpu_warmup, cpu_val = (
        (acceptance.TINY_WARMUP, acceptance.TINY_VAL) if args.acceptance else (CPU_WARMUP, CPU_VAL_IMAGES)
    )
    return Settings(
        device=device,
        warmup=args.warmup or (GPU_WARMUP if gpu else cpu_warmup),
        steps=args.steps or (GPU_STEPS if gpu else CPU_STEPS),
        val_images=args.val_images or (VAL_IMAGES if gpu else cpu_val),
        precision=args.precision,
        repeat=args.repeat,
        peak_tflops=args.peak_tflops,
        workdir=workdir,
    )


def fail(message: str) -> None:
    print(f"resvae-bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    problem = config_problem(args.overrides)  # a mistyped key: one line, before anything composes
    if problem:
        fail(problem)
    needs_lightning = args.acceptance or any(loop in REAL_LOOPS for loop in args.loops)
    if needs_lightning and (problem := acceptance.lightning_problem()):
        fail(problem)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.acceptance and args.cases and (problem := acceptance.unknown_cases(args.cases)):
        fail(problem)
    if args.keep_runs:
        args.keep_runs.mkdir(parents=True, exist_ok=True)
    # the real loop's run folders: kept under --keep-runs, else in a folder removed at the end
    folder = (
        contextlib.nullcontext(args.keep_runs)
        if args.keep_runs
        else tempfile.TemporaryDirectory(prefix="resvae-bench-")
    )
    with folder as workdir:
        _run(args, settings_for(args, Path(workdir)))


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer's benchmark: true
    if args.acceptance:
        report = acceptance.run(settings, list(args.overrides), args.steps, args.budget_s, args.cases)
        print(format_table(report["rows"]))
        print(acceptance.format_acceptance(report))
        _write(args.json, report)
        raise SystemExit(1 if acceptance.failed(report) else 0)
    rows = []
    depths = args.depth or [None]
    for depth in depths:
        rows += _measure_depth(args, settings, depth)
    rows.append(data_path_row(settings.device, max(r.get("batch", 1) for r in rows)))
    print(json.dumps(rows[-1]), flush=True)
    print(format_table(rows))
    _write(args.json, rows)
    if not all(math.isfinite(r["img_s"]) for r in rows if "img_s" in r):
        raise SystemExit(1)


def _measure_depth(args: argparse.Namespace, settings: Settings, depth: int | None) -> list[dict]:
    from resvae.cli.bench.common import compose_config

    base = compose_config([*args.overrides, "data=synthetic"])
    depth = depth or int(base.model.arch.depth)
    rows = []
    for batch in args.batch or [int(base.data.batch_size)]:
        rows += measure(args.overrides, depth, batch, args.loops, settings)
    return rows


def _write(path: Path | None, data: object) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2) + "\n")
