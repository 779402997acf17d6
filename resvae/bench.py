"""resvae-bench: training speed of the network resvae-train builds, bare and in the real loop.

    resvae-bench experiment=depth_sweep --depth 28 100 --batch 25 1024               # on a GPU
    resvae-bench experiment=smoke model.arch.width=2 model.arch.image_size=8 data.image_size=8 \\
        --device cpu --batch 2 --steps 200 --loops bare lightning                    # host overhead

Every loop runs the same step: the model's configured optimizer (fused where available),
gradient clipping, the non-finite guard and the metric sums (resvae.models.step.TrainStep), on
uint8 batches gathered from a device-resident set and flipped in the step:
  bare                 a Python loop over TrainStep, eager
  captured             the same with its closure replayed as a CUDA graph (GPU only)
  lightning            resvae-train itself in a subprocess (Lightning's loop, validation on
                       --val-images images, checkpoints, logging), eager
  lightning-captured   the same with model.train_step.capture=cuda_graph (GPU only)
The real loop's figures come from the summary.json of the process that trained: images/s of its
last epoch, warm-up (the first step, compile and capture included), peak memory, and seconds
per 50,000-image epoch including validation (scaled to 10,000 images) and checkpoint waits.
Prints a table and JSON lines (--json FILE writes them too). GFLOP per image come from
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
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from resvae.config import auto_precision, config_dir
from resvae.data.device_batches import DeviceBatches
from resvae.models.base import AUTOCAST, LatentModel, build_optimizer
from resvae.models.capture import capture_step

LOOPS = ("bare", "captured", "lightning", "lightning-captured")
CUDA_ONLY = ("captured", "lightning-captured")
PEAK_TFLOPS = {"H100": 798.0, "H200": 790.0, "A100": 312.0}  # bf16 dense matmul, measured/spec
EPOCH_IMAGES, VAL_IMAGES = 50_000, 10_000  # CIFAR-10: a training epoch, the test set


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build_model(cfg: DictConfig, device: torch.device) -> LatentModel:
    model = instantiate(cfg.model, _convert_="all").to(device)
    if model.channels_last:
        model.net.to(memory_format=torch.channels_last)
    return model.train()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(
    cfg: DictConfig, device: torch.device, precision: str, batch: int, steps: int, warmup: int, capture: bool
) -> dict[str, Any]:
    """(a) / (b): TrainStep in a Python loop; images/s, ms per step, warm-up seconds, peak memory."""
    model = build_model(cfg, device)
    optimizer = build_optimizer(model.optimizer_factory, [p for p in model.parameters() if p.requires_grad])
    model.step.bind(model.objective.objective_and_metrics, optimizer, model.channels_last)
    model.step.flip = True
    size = cfg.model.arch.image_size
    images = torch.randint(
        0, 256, (batch * (steps + warmup), 3, size, size), dtype=torch.uint8, device=device
    )
    batches = DeviceBatches(images, batch, shuffle=True, drop_last=True)  # gathered as they are used
    dtype = AUTOCAST.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with autocast:
        stream = iter(batches)
        if capture and not capture_step(model.step, images[:batch], [model.objective], dtype):
            return {"skipped": "capture failed"}
        model.step(next(stream))
        synchronize(device)
        warm = time.perf_counter() - start  # capture and the first step, as the real loop reports it
        for _ in range(warmup - 1):
            model.step(next(stream))
        synchronize(device)
        start = time.perf_counter()
        for b in stream:
            model.step(b)
        synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "img_s": batch * steps / seconds,
        "ms_step": 1e3 * seconds / steps,
        "warmup_s": warm,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "epoch_50k_s": EPOCH_IMAGES * seconds / (batch * steps),  # training only
    }


def lightning_run(
    overrides: Sequence[str], depth: int, batch: int, steps: int, val_images: int, capture: bool,
    device: torch.device, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """(c1) / (c2): resvae-train in a subprocess on synthetic data; its last epoch's figures."""
    name = f"bench_d{depth}_b{batch}_{'captured' if capture else 'eager'}"
    args = [
        *overrides,
        "hydra.mode=RUN",
        "data=synthetic",
        f"model.arch.depth={depth}",
        f"data.batch_size={batch}",
        f"data.train_size={batch * steps + val_images}",
        f"data.val_size={val_images}",
        f"data.test_size={batch}",
        "trainer.max_epochs=3",
        "trainer.num_sanity_val_steps=0",
        "callbacks.early_stopping.patience=1000",
        "logger=csv",
        "test=false",
        f"output_root={workdir}",
        f"name={name}",
        "resume=never",
        f"model.train_step.capture={'cuda_graph' if capture else 'none'}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same intra-op threads as the bare loops
    proc = subprocess.run(
        [sys.executable, "-m", "resvae.train", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"resvae-train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (summary_path,) = workdir.glob(f"{name}/**/summary.json")
    summary = json.loads(summary_path.read_text())
    last = summary["epochs_timed"][-1]
    img_s = last["images"] / last["train_seconds"]
    val = last["val_seconds"] * VAL_IMAGES / val_images
    epoch = EPOCH_IMAGES / img_s + val + last.get("checkpoint_seconds", 0.0)
    return {
        "img_s": img_s,
        "ms_step": last.get("step_ms") or 1e3 * last["train_seconds"] * batch / last["images"],
        "warmup_s": summary.get("warmup_seconds"),
        "peak_mem_gib": summary.get("peak_memory_gib"),
        "epoch_50k_s": epoch,
        "val_fraction": (val + last.get("checkpoint_seconds", 0.0)) / epoch,
        "checkpoint_s": last.get("checkpoint_seconds"),
        "captured": summary.get("captured"),
    }


def train_gflop_per_image(model: LatentModel, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    size = model.arch.image_size
    x = torch.rand(2, model.arch.in_channels, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        objective, _ = model.objective.objective_and_metrics(x * 2 - 1)
        objective.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


def data_path_images_per_second(device: torch.device, batch: int, n: int = EPOCH_IMAGES) -> float:
    """The loader alone: a shuffled epoch of uint8 batches gathered from a resident set."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    batches = DeviceBatches(images, batch, shuffle=True, drop_last=True)
    for _ in batches:  # warm-up
        pass
    synchronize(device)
    start = time.perf_counter()
    count = sum(len(b) for b in batches)
    synchronize(device)
    return count / (time.perf_counter() - start)


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
    base_cfg = compose_config(args.overrides)
    torch.set_float32_matmul_precision(base_cfg.matmul_precision)
    precision = base_cfg.trainer.precision if args.precision == "config" else args.precision
    if precision in ("auto", None) or "auto_precision" in str(precision):
        precision = auto_precision()
    precision = precision if device.type == "cuda" else "32-true"
    peak = peak_tflops(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    workdir = Path(tempfile.mkdtemp(prefix="resvae-bench-"))
    rows: list[dict[str, Any]] = []
    for depth in args.depth or [base_cfg.model.arch.depth]:
        cfg = compose_config([*args.overrides, f"model.arch.depth={depth}"])
        gflop = train_gflop_per_image(build_model(cfg, device), device)
        for batch in args.batch or [base_cfg.data.batch_size]:
            for loop in args.loops:
                if loop in CUDA_ONLY and device.type != "cuda":
                    print(f"{loop}: skipped (CUDA graphs need a GPU)", flush=True)
                    continue
                results = []
                for _ in range(args.repeat):  # the best of a few: other processes only ever slow a run down
                    if loop.startswith("lightning"):
                        captured = loop == "lightning-captured"
                        folder = Path(tempfile.mkdtemp(dir=workdir))
                        results.append(
                            lightning_run(
                                args.overrides,
                                depth,
                                batch,
                                args.steps,
                                args.val_images,
                                captured,
                                device,
                                folder,
                            )
                        )
                    else:
                        captured = loop == "captured"
                        results.append(
                            bare_loop(cfg, device, precision, batch, args.steps, args.warmup, captured)
                        )
                result = min(results, key=lambda r: r.get("ms_step", math.inf))
                if "skipped" in result:
                    print(f"{loop}: skipped ({result['skipped']})", flush=True)
                    continue
                row = {
                    "depth": depth,
                    "batch": batch,
                    "loop": loop,
                    "device": device_name,
                    "precision": precision,
                }
                row.update({k: _round(v) for k, v in result.items()}, gflop_img=round(gflop, 3))
                row["mfu"] = round(result["img_s"] * gflop / (peak * 1e3), 4) if peak else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    rows.append(
        {
            "loop": "data_path",
            "device": device_name,
            "img_s": _round(
                data_path_images_per_second(device, max(args.batch or [base_cfg.data.batch_size]))
            ),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    return rows


def _round(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


COLUMNS = (
    "depth",
    "batch",
    "loop",
    "img_s",
    "ms_step",
    "mfu",
    "warmup_s",
    "epoch_50k_s",
    "val_fraction",
    "peak_mem_gib",
)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r["loop"] != "data_path":
            lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLUMNS) + " |")
    data = [r for r in rows if r["loop"] == "data_path"]
    if data:
        lines.append(f"\ndata path alone: {data[0]['img_s']:,.0f} img/s on {data[0]['device']}")
    for depth, batch in sorted({(r["depth"], r["batch"]) for r in rows if "depth" in r}):
        got = {r["loop"]: r for r in rows if r.get("depth") == depth and r.get("batch") == batch}
        pairs = (("captured", "bare"), ("lightning", "bare"), ("lightning-captured", "bare"))
        pairs += (("lightning-captured", "captured"),)
        ratios = [
            f"{a} / {b} = {got[a]['img_s'] / got[b]['img_s']:.2f}x img/s, "
            f"{got[a]['ms_step'] / got[b]['ms_step']:.3f}x ms/step"
            for a, b in pairs
            if a in got and b in got
        ]
        if ratios:
            lines.append(f"depth {depth} batch {batch}: " + "; ".join(ratios))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Positional arguments are Hydra overrides of the training config, e.g. experiment=depth_sweep",
    )
    p.add_argument("overrides", nargs="*")
    p.add_argument("--depth", type=int, nargs="+")
    p.add_argument("--batch", type=int, nargs="+")
    p.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    p.add_argument("--steps", type=int, default=50, help="timed steps (and the real loop's steps per epoch)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--val-images",
        type=int,
        default=None,
        help=f"the real loop's validation set (default {VAL_IMAGES} on a GPU, 64 on a CPU)",
    )
    p.add_argument("--precision", default="config", help="config (the trainer's), 32-true or bf16-mixed")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak for MFU (default: known GPUs)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each loop; the fastest is reported")
    p.add_argument("--threads", type=int, help="torch intra-op threads (1 for a Python-bound CPU check)")
    p.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = p.parse_args(argv)
    if (
        args.steps < 1
        or args.warmup < 0
        or args.repeat < 1
        or (args.threads is not None and args.threads < 1)
    ):
        p.error("--steps, --repeat and --threads must be >= 1 and --warmup >= 0")
    if any(b < 1 for b in args.batch or []):
        p.error("--batch sizes must be >= 1")
    if args.val_images is None:
        gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        args.val_images = VAL_IMAGES if gpu else 64
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench(args)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if not all(math.isfinite(r["img_s"]) for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
