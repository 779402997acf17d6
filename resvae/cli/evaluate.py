"""resvae-eval: evaluate any checkpoint on a data split and write eval.json.

Usage::

    resvae-eval outputs/smoke/default                        # a run folder: its best.ckpt (else last.ckpt)
    resvae-eval outputs/depth_sweep/multirun                 # a sweep folder: every run folder in it
    resvae-eval path/to/x.ckpt --split val --iw-samples 100 --out x-eval.json
    resvae-eval RUN --fid 10000 --device cuda               # and the FID of 10000 samples
    python -m resvae.cli.evaluate RUN --device cpu --batch-size 50 --seed 1

Per image, then averaged with the standard error over images (std / sqrt(n)): the negative ELBO
(nats/image and bits/dim), the importance-weighted NLL bound with K samples, the reconstruction
PSNR and SSIM of the posterior-mean reconstruction, and for a VAE the posterior diagnostics
(active units, KL per latent dimension); with `--fid N`, the FID of N prior samples against the
split's real images (resvae/cli/fid.py: torchmetrics' on the Inception weights, which are
downloaded once into torch hub's cache). The numbers are a function of the checkpoint, the split,
K, the batch size and `--seed` (see `batch_seed`); the run's data config (`.hydra/config.yaml`)
says which images the split holds, read from the data root that resvae/cli/data_root.py picks (as
resvae-analyze and resvae-sample do; one line on stderr says which and why). What it computes and
how to read eval.json: docs/evaluate.md.

Exit codes: 0 all evaluated; 1 an evaluation failed (non-finite weights or values), or any run
of a sweep failed; 2 an error of the input (missing path, no or bad checkpoint, missing data,
bad option, the FID's Inception weights neither cached nor downloadable), printed as one line
`resvae-eval: error: ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from resvae.cli.args import add_run_options, json_file, nonnegative_int, positive_int, progress_printer
from resvae.cli.data_root import SPLITS, load_split, report_data, resolve_data_root
from resvae.cli.scores import EvaluationError, bpd_refusal, evaluate_images
from resvae.cli.targets import (
    INPUT_ERRORS,
    Target,
    deterministic_kernels,
    open_targets,
    run_config,
    sha256_of,
)
from resvae.run.checkpoints import CHECKPOINT_TAG, read_checkpoint
from resvae.run.errors import one_line
from resvae.run.io import atomic_write_json

PROG = "resvae-eval"
EVAL_FILE = "eval.json"
FID_FIELDS = ("fid", "fid_samples", "fid_real_images", "fid_feature")  # null without --fid


def evaluate_target(target: Target, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Evaluate one checkpoint as the command line asks; write and return its eval.json."""
    from resvae.models.loading import load_model

    checkpoint = target.resolve_checkpoint()
    info = read_checkpoint(checkpoint)[CHECKPOINT_TAG]
    model = load_model(checkpoint, device)
    cfg = run_config(target, args.config)
    root = resolve_data_root(args.data_root, target.run_dir or checkpoint, args.config)
    data = load_split(cfg, args.split, root, info)
    model.check_data_shape(SimpleNamespace(image_shape=tuple(data.images.shape[1:])))
    iw = args.iw_samples if args.iw_samples is not None else (1000 if device.type == "cuda" else 100)
    batch_size = args.batch_size or (500 if device.type == "cuda" else 100)
    started = time.perf_counter()
    numbers = evaluate_images(
        model,
        data.images,
        iw_samples=iw,
        batch_size=batch_size,
        seed=args.seed,
        split=args.split,
        progress=progress_printer(target.label),
    )
    # said once the numbers exist: a failed evaluation stays one error line (which names the root
    # when the data is missing)
    report_data(data, "" if target.label == str(args.path) else f"{target.label}: ")  # a sweep's run
    refused = bpd_refusal(model, info)
    if refused is not None:
        numbers.update(bpd=None, bpd_se=None, bpd_iw=None, bpd_iw_se=None)
    fid: dict[str, Any] = dict.fromkeys(FID_FIELDS)
    if args.fid is not None:
        from resvae.cli.fid import sample_fid

        fid = sample_fid(
            model.inference,
            data.images,
            args.fid,
            batch_size=batch_size,
            seed=args.seed,
            progress=progress_printer(f"{target.label}: FID"),
        )
    result = {
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_sha256": sha256_of(checkpoint),
        "run_dir": str(target.run_dir.resolve()) if target.run_dir else None,
        "model": type(model).__name__,
        "likelihood": model.likelihood.name,
        "split": args.split,
        "held_out": data.held_out,
        "held_out_note": data.note,
        "val_source": data.val_source,
        "data": data.data_line,
        "data_warning": data.warning,
        "seed": args.seed,
        "batch_size": batch_size,
        "device": _device_name(device),
        "bpd_refused": refused,
        **numbers,
        **fid,
        "seconds": round(time.perf_counter() - started, 3),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = args.out or ((target.run_dir or checkpoint.parent) / EVAL_FILE)
    atomic_write_json(out, result)
    result["eval_json"] = str(out)
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# ---------------------------------------------------------------------------------- output
def _pm(value: float | None, se: float | None, fmt: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:{fmt}} ± {se:{fmt}}" if se is not None else f"{value:{fmt}} ± n/a"


def summary_line(label: str, r: dict[str, Any]) -> str:
    """One line per checkpoint, e.g. `RUN: test bpd 5.123 ± 0.004 (ELBO), 5.101 ± 0.004 (IW, K=100),
    PSNR 21.3, SSIM 0.62, active units 31/256` (and `, FID 54.32 (10000 samples vs 10000 test
    images)` with --fid)."""
    split, k = r["split"], r["iw_samples"]
    if r["bpd_refused"] is None:
        parts = [f"{split} bpd {_pm(r['bpd'], r['bpd_se'], '.3f')} (ELBO)"]
        if k:
            parts.append(f"{_pm(r['bpd_iw'], r['bpd_iw_se'], '.3f')} (IW, K={k})")
    else:
        if r["elbo_nats"] is not None:
            parts = [f"{split} loss {_pm(r['elbo_nats'], r['elbo_nats_se'], '.1f')} nats/image (ELBO)"]
        else:
            loss = _pm(r["loss_nats"], r["loss_nats_se"], ".1f")
            parts = [f"{split} loss {loss} nats/image (reconstruction NLL)"]
        if k:
            parts.append(f"{_pm(r['nll_iw_nats'], r['nll_iw_se'], '.1f')} (IW, K={k})")
        parts.append(f"bits/dim not reported: {r['bpd_refused']}")
    if r["penalty_nats"]:
        parts.append(
            f"weight penalty {r['penalty_nats']:.1f} nats/image (in the training loss, not in the ELBO)"
        )
    parts.append(f"PSNR {r['psnr']:.1f}" if r["psnr"] is not None else "PSNR inf")
    parts.append(f"SSIM {r['ssim']:.2f}")
    if r["active_units"] is not None:
        parts.append(f"active units {r['active_units']}/{r['latent_dim']}")
    if r.get("fid") is not None:
        samples, real = r["fid_samples"], r["fid_real_images"]
        parts.append(f"FID {r['fid']:.2f} ({samples} samples vs {real} {split} images)")
    line = f"{label}: " + ", ".join(parts)
    if not r["held_out"]:
        line += f" [not held out: {r['held_out_note']}]"
    return line


# ---------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate checkpoints (ELBO and importance-weighted NLL in nats and bits/dim, "
        "PSNR, SSIM, active units, KL per latent dimension, optionally FID) and write eval.json.",
    )
    p.add_argument(
        "path", metavar="CKPT", type=Path, help="a checkpoint file, a run folder or a sweep folder"
    )
    p.add_argument("--split", choices=SPLITS, default="test", help="data split (default: test)")
    p.add_argument(
        "--iw-samples", type=nonnegative_int, default=None,
        help="importance samples K of the IW bound (default: 1000 on CUDA, 100 on CPU; 0: skip)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: 500 on CUDA, 100 on CPU")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of all the randomness (default 0)")
    p.add_argument(
        "--fid", type=positive_int, default=None, metavar="N",
        help="also the FID of N prior samples (temperature 1) against the split's first N images (all "
        "if it holds fewer); the Inception weights are downloaded on first use into "
        "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints)",
    )  # fmt: skip
    add_run_options(p)
    p.add_argument("--out", type=json_file, help="write the results here (default: RUN/eval.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        device, targets, sweep = open_targets(args.path, args.device)
        if sweep and args.out is not None:
            raise ValueError(f"--out names one file but {args.path} is a sweep folder of {len(targets)} runs")
        if args.fid is not None:  # the weights fetched (or refused) before any evaluation starts
            if args.fid < 2:
                raise ValueError(f"--fid {args.fid}: FID needs at least 2 samples (a covariance)")
            from resvae.cli import fid

            fid.inception_weights()
    except INPUT_ERRORS as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    deterministic_kernels()
    failures = 0
    code = 0
    for target in targets:
        prefix = f"{target.label}: " if sweep else ""
        try:
            result = evaluate_target(target, args, device)
        except INPUT_ERRORS as err:
            print(f"{PROG}: error: {prefix}{one_line(err)}", file=sys.stderr, flush=True)
            failures, code = failures + 1, 2
        except EvaluationError as err:
            print(f"{PROG}: error: {prefix}{target.resolve_checkpoint()}: {one_line(err)}", file=sys.stderr)
            failures, code = failures + 1, 1
        except torch.cuda.OutOfMemoryError:
            print(
                f"{PROG}: error: {prefix}out of GPU memory: lower --batch-size", file=sys.stderr, flush=True
            )
            failures, code = failures + 1, 1
        else:
            print(summary_line(target.label, result), flush=True)
    if sweep and failures:
        print(f"{PROG}: {failures} of {len(targets)} runs failed", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
