"""resvae-analyze: the residual-network analyses of the literature, on trained or fresh models.

    resvae-analyze lesion CKPT [CKPT ...]        # Veit et al. 2016: delete blocks at test time
    resvae-analyze gradients CKPT [CKPT ...]     # per-block gradient norms of a checkpoint
    resvae-analyze gradients --init "model.arch.shortcut=none model.arch.depth=100" --out DIR
    resvae-analyze activations CKPT              # per-stage feature-map grids of a few images
    resvae-analyze compare SWEEP_DIR --x model.arch.depth --series model.arch.shortcut

CKPT is a checkpoint or a run folder (its best.ckpt, else last.ckpt; which images: common.py).
Each writes a JSON and CSV table and a PNG plot into `--out` (default: `<run>/analysis/` of the
first checkpoint; `<SWEEP_DIR>/analysis/` for compare) and, with `--wandb-project`, logs them to
W&B. Bad input (a missing or unsafe checkpoint, missing data, a bad override) is one error line
and exit code 2. This module is the command line: its arguments and one `cmd_*` per command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.errors import HydraException

from resvae.cli.analyze.activations import (
    ACTIVATION_FIELDS,
    activation_stats,
    feature_grid,
    stage_activations,
    staged_encoder,
)
from resvae.cli.analyze.common import AnalysisError, load_images, subjects_and_out
from resvae.cli.analyze.compare import compare_sweep
from resvae.cli.analyze.gradients import write_gradients
from resvae.cli.analyze.lesion import lesion_study, write_lesion
from resvae.cli.analyze.output import log_to_wandb, write_csv
from resvae.cli.args import device_name, file_stem
from resvae.models.gradients import gradient_profile
from resvae.run.io import atomic_write, atomic_write_json

PROGRAM = "resvae-analyze"


def cmd_lesion(args: argparse.Namespace, device: torch.device) -> list[Path]:
    subjects, out = subjects_and_out(args, device)
    results = []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        bn_images, per_batch = None, int(getattr(s.data, "batch_size", args.batch))
        if args.bn_reestimate:  # N batches of the run's training batch size, as training saw them
            bn_images = load_images(s, args, "train", args.bn_reestimate * per_batch)
        r = lesion_study(
            s, images, args.draws, args.seed, args.batch, args.k_max, bn_images, args.split, per_batch
        )
        results.append(r)
        single = [b["increase"] for b in r["blocks"] if b["increase"] is not None]
        print(
            f"{s.label} ({r['kind']}): baseline {r['baseline_loss']:.2f} nats/image over "
            f"{r['images']} images; "
            f"{r['deletable']} deletable blocks, single deletion {statistics.fmean(single):+.3g} on average "
            f"(max {max(single):+.3g}); all deleted {r['k'][-1]['mean_increase']:+.3g}"
        )
        if bn_images is not None:
            fixed = [b["increase_bn_reestimated"] for b in r["blocks"] if b["increase"] is not None]
            print(
                f"{s.label}: with BatchNorm re-estimated on {len(bn_images)} training images: baseline "
                f"{r['baseline_loss_bn_reestimated']:.2f}; single deletion {statistics.fmean(fixed):+.3g} on "
                f"average (max {max(fixed):+.3g}); all deleted "
                f"{r['k'][-1]['mean_increase_bn_reestimated']:+.3g}"
            )
        if r["intact"]["warning"]:  # loud: the numbers above may be artefacts
            print(f"WARNING: {s.label}: {r['intact']['warning']}", file=sys.stderr, flush=True)
    return write_lesion(results, out, args.seed)


def cmd_gradients(args: argparse.Namespace, device: torch.device) -> list[Path]:
    subjects, out = subjects_and_out(args, device)
    results = []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        blocks = gradient_profile(s.model, images, args.seed)
        results.append({**s.describe(), "images": len(images), "blocks": blocks})
        g = [b["param_grad_norm"] for b in blocks]
        print(f"{s.label}: parameter gradient norm, first block {g[0]:.3g}, last block {g[-1]:.3g}")
    return write_gradients(results, out)


def cmd_activations(args: argparse.Namespace, device: torch.device) -> list[Path]:
    from torchvision.utils import save_image

    subjects, out = subjects_and_out(args, device)
    for s in subjects:  # before reading any data: a model it cannot analyse is the one error line
        staged_encoder(s.model)
    written, stats = [], []
    for s in subjects:
        images = load_images(s, args, args.split, args.images)
        features = stage_activations(s.model, images)
        prefix = "" if len(subjects) == 1 else f"{_safe(s.label)}_"
        for i, f in enumerate(features):
            grid = feature_grid(images, f, args.channels, args.scale)
            path = out / f"{prefix}activations_layer{i + 1}.png"
            written.append(atomic_write(path, lambda fh, grid=grid: save_image(grid, fh, format="png")))
        stats += [{"label": s.label, **row} for row in activation_stats(features)]
    written.insert(0, write_csv(out / "activations.csv", stats, ACTIVATION_FIELDS))
    written.insert(0, atomic_write_json(out / "activations.json", {"stages": stats}))
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in text)


def cmd_compare(args: argparse.Namespace, device: torch.device) -> list[Path]:
    if not Path(args.sweep_dir).is_dir():
        raise AnalysisError(f"no such sweep folder: {args.sweep_dir}")
    return compare_sweep(args.sweep_dir, args.name, args.x, args.series)


BN_REESTIMATE_HELP = (
    "also re-estimate the BatchNorm running statistics on N training batches (of the run's "
    "data.batch_size) for each network evaluated, intact and with blocks deleted, and report "
    "both losses (BatchNorm drift vs damage)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, images: int) -> None:
        p.add_argument(
            "checkpoints", metavar="CKPT", nargs="*", type=Path, help="resvae checkpoint(s) or run folder(s)"
        )
        p.add_argument(
            "--out", type=Path, help="output folder (default: <run>/analysis of the one checkpoint)"
        )
        p.add_argument("--images", type=int, default=images, help=f"images to use (default {images})")
        p.add_argument(
            "--split", choices=("train", "val", "test"), default="test", help="data split (default test)"
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the VAE's noise and the random draws")
        p.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda if available)")
        src = p.add_mutually_exclusive_group()
        src.add_argument("--data-root", help="use CIFAR-10 from this folder instead of the run's data")
        src.add_argument("--synthetic", action="store_true", help="use generated images")
        p.add_argument("--wandb-project", help="also log the tables and plots to this W&B project")
        p.add_argument("--label", action="append", help="a name per model for plots and tables, in order")

    p = sub.add_parser(
        "lesion", help="delete single blocks and k random blocks at test time (Veit et al. 2016)"
    )
    common(p, 500)
    p.add_argument("--draws", type=int, default=5, help="random draws per k (default 5)")
    p.add_argument("--k-max", type=int, default=None, help="largest k (default: every deletable block)")
    p.add_argument("--batch", type=int, default=250, help="evaluation batch size")
    p.add_argument("--bn-reestimate", type=int, default=None, metavar="N", help=BN_REESTIMATE_HELP)
    p.set_defaults(run=cmd_lesion)

    p = sub.add_parser("gradients", help="per-block gradient norms of a checkpoint or a fresh init")
    common(p, 64)
    p.add_argument(
        "--init", action="append", metavar="OVERRIDES",
        help='a freshly initialised model of the training config with these overrides, e.g. '
        '--init "model.arch.depth=100 model.arch.shortcut=none" (repeatable)',
    )  # fmt: skip
    p.set_defaults(run=cmd_gradients)

    p = sub.add_parser("activations", help="per-stage feature-map grids of a few images")
    common(p, 4)
    p.add_argument("--channels", type=int, default=8, help="feature maps per stage and image (default 8)")
    p.add_argument("--scale", type=int, default=3, help="enlarge the tiles this many times (default 3)")
    p.set_defaults(run=cmd_activations)

    p = sub.add_parser("compare", help="final losses of a sweep's jobs side by side (table and plot)")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path)
    p.add_argument("--x", help="dotted config key for the x axis, e.g. model.arch.depth")
    p.add_argument(
        "--series", help="dotted config key, one line (or bar) per value, e.g. model.arch.shortcut"
    )
    p.add_argument("--name", type=file_stem, default="compare", help="file stem of the outputs")
    p.add_argument("--wandb-project", help="also log the table and plot to this W&B project")
    p.set_defaults(run=cmd_compare)
    return parser


def _check(args: argparse.Namespace) -> None:
    for name in ("images", "draws", "batch", "channels", "k_max", "scale", "bn_reestimate"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command; bad input is one error line and exit code 2."""
    from resvae.run.errors import USER_ERRORS, one_line

    args = build_parser().parse_args(argv)
    try:
        _check(args)
        device = torch.device(
            getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AnalysisError(f"--device {device}: CUDA is not available on this machine")
        written = args.run(args, device)
        if args.wandb_project:
            group = Path(args.sweep_dir).name if args.command == "compare" else "analysis"
            log_to_wandb(written, args.wandb_project, group, name=f"{args.command}")
    except (*USER_ERRORS, AnalysisError, HydraException, OSError) as err:
        print(f"{PROGRAM}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    for path in written:
        print(path)
    return 0
