"""resvae-bench: training speed of the network that resvae-train builds, measured three ways.

    resvae-bench experiment=depth_sweep --depth 28 100 --batch 25 1024
    resvae-bench experiment=smoke --device cpu --depth 28 --batch 8 --steps 3 --warmup 1   # CPU check

For each (depth, batch), from the same Hydra config users train with:
  bare       a bare loop: forward + backward + fused optimizer step on a batch already on the
             device (eager PyTorch, bf16 autocast and channels_last as configured)
  compiled   the same loop with the suite's acceleration, torch.compile(mode=--compile-mode);
             "reduce-overhead" captures the step in CUDA graphs
  lightning  resvae-train itself, in a subprocess: the real Lightning loop with device-resident
             data, validation, sample grids, checkpoints and CSV logging, timed from its
             summary.json (last epoch; validation timed apart)
and the data path alone (uint8 set on the device -> gathered, flipped, float, channels_last).
Prints a table and JSON lines (--json FILE also writes them). FLOPs per image come from
torch.utils.flop_counter on one training step; MFU is against --peak-tflops (bf16 dense).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from resvae.config import auto_precision, config_dir
from resvae.data.device_batches import DeviceBatches
from resvae.models.base import LatentModel

LOOPS = ("bare", "compiled", "lightning")
PEAK_TFLOPS = {"H100": 798.0, "H200": 790.0, "A100": 312.0}  # bf16 dense matmul, measured/spec


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build_model(cfg: DictConfig, device: torch.device) -> LatentModel:
    model = instantiate(cfg.model, _convert_="all").to(device)
    if model.channels_last:
        model.net.to(memory_format=torch.channels_last)
    return model.train()


def autocast_for(device: torch.device, precision: str) -> Any:
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step_fn(model: LatentModel, device: torch.device, precision: str, compile_mode: str | None):
    """One optimisation step on a fixed float batch: the loop that (a) and (b) time."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    forward = model.objective.objective_and_metrics
    if compile_mode:
        forward = torch.compile(forward, mode=compile_mode)

    def step(x: torch.Tensor) -> None:
        with autocast_for(device, precision):
            objective, _ = forward(x)
        objective.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[torch.Tensor], None], x: torch.Tensor, steps: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """(images/s over `steps` timed steps, seconds of the `warmup` steps incl. compile/capture)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step(x)
    synchronize(device)
    warm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step(x)
    synchronize(device)
    return x.shape[0] * steps / (time.perf_counter() - start), warm_seconds


def train_gflop_per_image(model: LatentModel, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(2, model.arch.in_channels, model.arch.image_size, model.arch.image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        objective, _ = model.objective.objective_and_metrics(x * 2 - 1)
        objective.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


def data_path_images_per_second(device: torch.device, batch: int, n: int = 50_000) -> float:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    batches = DeviceBatches(images, batch, shuffle=True, flip=True, drop_last=True)

    def epoch() -> int:
        count = 0
        for b in batches:
            x = (b.float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)
            count += x.shape[0]
        return count

    epoch()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    count = epoch()
    synchronize(device)
    return count / (time.perf_counter() - start)


def lightning_run(
    overrides: Sequence[str],
    depth: int,
    batch: int,
    steps: int,
    compile_mode: str | None,
    device: torch.device,
    workdir: Path,
) -> dict[str, Any]:
    """resvae-train in a subprocess on synthetic device-resident data; its last epoch's speed."""
    epochs = 3
    args = [
        *overrides,
        "hydra.mode=RUN",
        "data=synthetic",
        f"model.arch.depth={depth}",
        f"data.batch_size={batch}",
        f"data.train_size={batch * steps + batch * 2}",
        f"data.val_size={batch * 2}",
        f"data.test_size={batch}",
        f"trainer.max_epochs={epochs}",
        "trainer.num_sanity_val_steps=0",
        "callbacks.early_stopping.patience=1000",
        "logger=csv",
        "test=false",
        f"output_root={workdir}",
        f"name=bench_d{depth}_b{batch}",
        "resume=never",
        f"model.train_step.compile={compile_mode or 'none'}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "resvae.train", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"resvae-train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (summary_path,) = workdir.glob(f"bench_d{depth}_b{batch}/**/summary.json")
    summary = json.loads(summary_path.read_text())
    last = summary["epochs_timed"][-1]
    epoch_wall = last["train_seconds"] + last["val_seconds"]
    return {
        "img_s": last["images"] / last["train_seconds"],
        "val_fraction": last["val_seconds"] / epoch_wall if epoch_wall else None,
        "warmup_s": summary.get("compile_first_call_seconds"),
        "compile_fell_back": summary.get("compile_fell_back"),
    }


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    base_cfg = compose_config(args.overrides)
    precision = base_cfg.trainer.precision if args.precision == "config" else args.precision
    if precision in ("auto", None) or "auto_precision" in str(precision):
        precision = auto_precision()
    depths = args.depth or [base_cfg.model.arch.depth]
    batches = args.batch or [base_cfg.data.batch_size]
    peak = peak_tflops(device, args.peak_tflops)
    compile_mode = args.compile_mode if device.type == "cuda" or args.compile_on_cpu else None
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="resvae-bench-"))
    for depth in depths:
        cfg = compose_config([*args.overrides, f"model.arch.depth={depth}"])
        gflop = train_gflop_per_image(build_model(cfg, device), device)
        for batch in batches:
            size = cfg.model.arch.image_size
            x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            setting = cfg.model.train_step.channels_last
            if device.type == "cuda" if setting is None else setting:
                x = x.contiguous(memory_format=torch.channels_last)
            for loop in args.loops:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                row: dict[str, Any] = {
                    "depth": depth,
                    "batch": batch,
                    "loop": loop,
                    "device": device_name,
                    "precision": precision,
                    "gflop_img": round(gflop, 3),
                }
                if loop == "lightning":
                    result = lightning_run(
                        args.overrides, depth, batch, args.steps, compile_mode, device, workdir
                    )
                    img_s, warm = result["img_s"], result["warmup_s"]
                    row["val_fraction"] = result["val_fraction"] and round(result["val_fraction"], 4)
                    row["compile_fell_back"] = result["compile_fell_back"]
                elif loop == "compiled" and compile_mode is None:
                    print("compiled loop skipped on CPU (--compile-on-cpu to force)", flush=True)
                    continue
                else:
                    model = build_model(cfg, device)
                    step = train_step_fn(
                        model, device, precision, compile_mode if loop == "compiled" else None
                    )
                    img_s, warm = time_steps(step, x, args.steps, args.warmup, device)
                    del model, step
                row.update(
                    img_s=float(f"{img_s:.4g}"),
                    warmup_s=None if warm is None else round(warm, 2),
                    mfu=round(img_s * gflop / (peak * 1e3), 4) if peak else None,
                    epoch_50k_s=round(50_000 / img_s, 2),
                    peak_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                    if device.type == "cuda"
                    else None,
                    compile_mode=compile_mode if loop != "bare" else None,
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    rows.append(
        {
            "loop": "data_path",
            "device": device_name,
            "img_s": round(data_path_images_per_second(device, max(batches), args.data_images), 1),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "depth",
        "batch",
        "loop",
        "img_s",
        "mfu",
        "warmup_s",
        "epoch_50k_s",
        "peak_mem_gib",
        "val_fraction",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r["loop"] == "data_path":
            continue
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    data = [r for r in rows if r["loop"] == "data_path"]
    if data:
        lines.append(f"\ndata path alone: {data[0]['img_s']:,.0f} img/s on {data[0]['device']}")
    speedups = []
    for depth in sorted({r["depth"] for r in rows if "depth" in r}):
        for batch in sorted({r["batch"] for r in rows if "batch" in r}):
            got = {r["loop"]: r["img_s"] for r in rows if r.get("depth") == depth and r.get("batch") == batch}
            if "bare" in got and len(got) > 1:
                ratios = ", ".join(f"{k}/bare {v / got['bare']:.2f}x" for k, v in got.items() if k != "bare")
                speedups.append(f"depth {depth} batch {batch}: {ratios}")
    return "\n".join(lines + speedups)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Positional arguments are Hydra "
        "overrides of the training config, e.g. experiment=depth_sweep model.arch.width=64",
    )
    p.add_argument("overrides", nargs="*")
    p.add_argument("--depth", type=int, nargs="+")
    p.add_argument("--batch", type=int, nargs="+")
    p.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    p.add_argument("--steps", type=int, default=50, help="timed steps (and lightning's steps per epoch)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile-mode", default="reduce-overhead")
    p.add_argument("--compile-on-cpu", action="store_true")
    p.add_argument("--precision", default="config", help="config (the trainer's), 32-true or bf16-mixed")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak for MFU (default: known GPUs)")
    p.add_argument("--data-images", type=int, default=50_000)
    p.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = p.parse_args(argv)
    for name in ("steps", "warmup", "data_images"):
        if getattr(args, name) < (1 if name != "warmup" else 0):
            p.error(f"--{name.replace('_', '-')} must be positive")
    if any(b < 1 for b in args.batch or []):
        p.error("--batch sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    rows = bench(args)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if not all(math.isfinite(r["img_s"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
