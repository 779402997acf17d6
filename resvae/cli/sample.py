"""resvae-sample: image grids of a checkpoint: prior samples, reconstructions, interpolations.

Usage::

    resvae-sample outputs/smoke/default                      # a run folder: its best.ckpt (else last.ckpt)
    resvae-sample path/to/x.ckpt --out grids --temperatures 1.0 0.7 --n 64 --seed 1
    python -m resvae.cli.sample RUN --interpolations 0 --n-recon 0   # prior samples only: no data needed

Writes into `--out` (default: RUN/samples_eval/), each PNG atomically:

- `samples_T<t>.png` for each temperature t: `--n` images decoded from the prior (for the AE,
  from its fitted Gaussian of the codes) with the latent noise scaled by t, `--nrow` per row.
  t = 0 decodes the prior's mean; for a hierarchical VAE t may be one value per latent group in
  top-down order (`--temperatures 1,1,0.8,0.6`: VDVAE's per-layer temperatures).
  Every temperature decodes the same noise, so the grids differ only by the temperature.
- `reconstructions.png`: `--n-recon` images of `--split` (chosen at random by the seed) and
  their posterior-mean reconstructions in two-row bands: a row of `--nrow` originals, below it
  the row of their reconstructions (a last, partial band is filled with black tiles).
- `interpolations.png`: `--interpolations` rows, one per random pair of images (a, b) of
  `--split`; each row is a, then `--steps` decoded latents (1 - s) z_a + s z_b for s evenly
  spaced from 0 to 1 (z: the posterior mean, or the AE's code), then b.

A line on stderr says each grid is written (on a terminal one updating line). Everything random
comes from `--seed` through explicit generators: the same checkpoint, seed and
options give byte-identical files. Exit codes as resvae-eval's (2: an error of the input).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from resvae.callbacks.grids import save_grid
from resvae.cli.args import add_run_options, nonnegative_int, positive_int, progress_printer
from resvae.cli.data_root import SPLITS, load_split, report_data, resolve_data_root
from resvae.cli.scores import EvaluationError, nonfinite_weights
from resvae.cli.targets import (
    INPUT_ERRORS,
    Target,
    deterministic_kernels,
    open_targets,
    run_config,
)
from resvae.models.inference import Inference, Temperature
from resvae.run.checkpoints import CHECKPOINT_TAG, read_checkpoint
from resvae.run.errors import one_line

PROG = "resvae-sample"
OUT_DIR = "samples_eval"
SAMPLES, RECON, INTERP = 0, 1, 2  # the generator streams of one seed


def generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one kind of grid: the grids do not depend on each other's options."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


def temperature_name(t: Temperature) -> str:
    return f"samples_T{t:g}.png" if isinstance(t, float) else f"samples_T{','.join(f'{v:g}' for v in t)}.png"


def prior_grid(model: Inference, out: Path, t: Temperature, n: int, nrow: int, seed: int) -> Path:
    images = model.sample(n, t, generator=generator(seed, SAMPLES))  # the same noise at each t
    return save_grid(images, out / temperature_name(t), nrow)


def reconstruction_grid(
    model: Inference, images: torch.Tensor, out: Path, n: int, nrow: int, seed: int
) -> Path:
    """Originals (uint8 [N, C, H, W]) above their reconstructions, in bands of `nrow`."""
    order = torch.randperm(images.shape[0], generator=generator(seed, RECON))[:n]
    originals = images[order]
    recon = model.reconstruct(originals).float().cpu()
    originals = originals.float() / 255
    tiles = []
    for start in range(0, originals.shape[0], nrow):
        for part in (originals[start : start + nrow], recon[start : start + nrow]):
            pad = nrow - part.shape[0]
            tiles += [part, torch.zeros((pad, *part.shape[1:]))] if pad else [part]
    return save_grid(torch.cat(tiles), out / "reconstructions.png", nrow)


def interpolation_grid(
    model: Inference, images: torch.Tensor, out: Path, pairs: int, steps: int, seed: int
) -> Path:
    """One row per pair (a, b): a, `steps` decodings of the latent line from z_a to z_b, b."""
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"interpolations need at least 2 images in the split, it holds {n}")
    g = generator(seed, INTERP)
    if n >= 2 * pairs:
        a, b = torch.randperm(n, generator=g)[: 2 * pairs].chunk(2)
    else:  # few images: pairs may repeat, but a != b
        a = torch.randint(n, (pairs,), generator=g)
        b = (a + torch.randint(1, n, (pairs,), generator=g)) % n
    za, zb = model.encode(images[a]), model.encode(images[b])
    s = torch.linspace(0, 1, steps, device=za.device).view(1, steps, *[1] * (za.dim() - 1))
    z = (1 - s) * za.unsqueeze(1) + s * zb.unsqueeze(1)  # [pairs, steps, ...]
    decoded = model.decode(z.flatten(0, 1)).float().cpu().unflatten(0, (pairs, steps))
    rows = torch.cat([images[a].float().unsqueeze(1) / 255, decoded, images[b].float().unsqueeze(1) / 255], 1)
    return save_grid(rows.flatten(0, 1), out / "interpolations.png", steps + 2)


def sample_target(target: Target, args: argparse.Namespace, device: torch.device) -> list[Path]:
    from resvae.models.loading import load_model

    checkpoint = target.resolve_checkpoint()
    model = load_model(checkpoint, device)
    bad = nonfinite_weights(model)
    if bad:
        raise EvaluationError(
            f"{checkpoint}: the weights are not finite ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
            "the model diverged; use an earlier checkpoint"
        )
    out = args.out or ((target.run_dir or checkpoint.parent) / OUT_DIR)
    images = None
    if args.n_recon or args.interpolations:
        cfg = run_config(target, args.config)
        root = resolve_data_root(args.data_root, target.run_dir or checkpoint, args.config)
        data = load_split(cfg, args.split, root, read_checkpoint(checkpoint)[CHECKPOINT_TAG])
        report_data(data)
        images = data.images
        model.check_data_shape(SimpleNamespace(image_shape=tuple(images.shape[1:])))
    inference = model.inference
    grids = [partial(prior_grid, inference, out, t, args.n, args.nrow, args.seed) for t in args.temperatures]
    if images is not None and args.n_recon:
        grids.append(partial(reconstruction_grid, inference, images, out, args.n_recon, args.nrow, args.seed))
    if images is not None and args.interpolations:
        pairs = args.interpolations
        grids.append(partial(interpolation_grid, inference, images, out, pairs, args.steps, args.seed))
    show = progress_printer(target.label, unit="grid")
    written = []
    for grid in grids:
        written.append(grid())
        show(len(written), len(grids))
    return written


def _temperature(text: str) -> Temperature:
    """`0.8`, or per latent group of a hierarchical VAE in top-down order: `1,0.8,0.6`."""
    values = [float(part) for part in text.split(",")]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite and >= 0, got {text}")
    return values[0] if len(values) == 1 else tuple(values)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write PNG grids of prior samples, reconstructions and latent interpolations.",
    )
    p.add_argument("path", metavar="CKPT", type=Path, help="a checkpoint file or a run folder")
    p.add_argument("--out", type=Path, help=f"output folder (default: RUN/{OUT_DIR}/)")
    p.add_argument(
        "--temperatures",
        type=_temperature,
        nargs="+",
        default=[1.0, 0.8, 0.6],
        help="prior std multipliers, one grid each (0: the prior mean); for model=hvae a value may "
        "give one per latent group, top-down: 1,1,0.8,0.6",
    )
    p.add_argument("--n", type=positive_int, default=64, help="prior samples per temperature (default 64)")
    p.add_argument("--n-recon", type=nonnegative_int, default=32, help="images to reconstruct (0: none)")
    p.add_argument("--interpolations", type=nonnegative_int, default=8, help="image pairs (0: none)")
    p.add_argument("--steps", type=positive_int, default=10, help="decoded points per interpolation")
    p.add_argument("--nrow", type=positive_int, default=8, help="images per row of the sample grids")
    p.add_argument("--split", choices=SPLITS, default="test", help="images to reconstruct and interpolate")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    add_run_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        device, targets, _ = open_targets(args.path, args.device, one_run=True)
        deterministic_kernels()
        written = sample_target(targets[0], args, device)
    except INPUT_ERRORS as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except EvaluationError as err:
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
