"""resvae-eval: evaluate any checkpoint on a data split and write eval.json.

Usage::

    resvae-eval outputs/smoke/default                        # a run folder: its best.ckpt (else last.ckpt)
    resvae-eval outputs/depth_sweep/multirun                 # a sweep folder: every run folder in it
    resvae-eval path/to/x.ckpt --split val --iw-samples 100 --out x-eval.json
    python -m resvae.cli.evaluate RUN --device cpu --batch-size 50 --seed 1

Per image, then averaged with the standard error over images (std / sqrt(n)): the negative ELBO
(nats/image and bits/dim), the importance-weighted NLL bound with K samples, the reconstruction
PSNR and SSIM of the posterior-mean reconstruction, and for a VAE the posterior diagnostics
(active units, KL per latent dimension). The numbers are a function of the checkpoint, the split,
K, the batch size and `--seed` (see `batch_seed`); the run's data config (`.hydra/config.yaml`)
says which images the split holds, read from the data root that resvae/cli/data_root.py picks (as
resvae-analyze and resvae-sample do; one line on stderr says which and why). What it computes and
how to read eval.json: docs/evaluate.md.

Exit codes: 0 all evaluated; 1 an evaluation failed (non-finite weights or values), or any run
of a sweep failed; 2 an error of the input (missing path, no or bad checkpoint, missing data,
bad option), printed as one line `resvae-eval: error: ...`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from resvae.cli.args import add_run_options, nonnegative_int, positive_int
from resvae.cli.data_root import (
    DataRoot,
    check_fingerprint,
    describe,
    reads_files,
    resolve_data_root,
    run_folder,
    with_root,
)
from resvae.data import DatasetError
from resvae.models.base import LatentModel
from resvae.models.diagnostics import ACTIVE_THRESHOLD, PosteriorStats
from resvae.models.likelihoods import bits_per_dim
from resvae.run.checkpoints import CHECKPOINT_TAG, CheckpointError, read_checkpoint
from resvae.run.errors import USER_ERRORS, one_line
from resvae.run.io import atomic_write_json

PROG = "resvae-eval"
SPLITS = ("test", "val", "train")
CHECKPOINT_NAMES = ("best.ckpt", "last.ckpt")  # a run folder's checkpoint, in order of preference
EVAL_FILE = "eval.json"
INPUT_ERRORS: tuple[type[BaseException], ...] = (*USER_ERRORS, OSError)


class EvaluationError(RuntimeError):
    """The model gives non-finite numbers (weights, losses, reconstructions): no average is
    reported. Not an input error: exit code 1."""


# ---------------------------------------------------------------------------------- what to evaluate
@dataclass
class Target:
    """One checkpoint to evaluate (or a run folder whose checkpoint is still to be found)."""

    label: str  # how the output names it: the run folder (or the checkpoint) as the user wrote it
    run_dir: Path | None
    checkpoint: Path | None = None

    def resolve_checkpoint(self) -> Path:
        if self.checkpoint is None:
            assert self.run_dir is not None
            self.checkpoint = find_checkpoint(self.run_dir)
        return self.checkpoint


def is_run_dir(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir()


def find_checkpoint(run_dir: Path) -> Path:
    """The run folder's checkpoints/best.ckpt, else checkpoints/last.ckpt (last first where the run
    tests its final weights, test_weights=last); refused where the run
    validated but no epoch had a finite val/loss (a diverged run: its last weights are not a
    result, and a tool would only fail on them later)."""
    if not (run_dir / "checkpoints" / CHECKPOINT_NAMES[0]).is_file() and (diverged := _diverged(run_dir)):
        raise CheckpointError(
            f"{run_dir} has no best.ckpt: no epoch had a finite val/loss ({diverged}); to look at its "
            f"last weights anyway, pass {run_dir / 'checkpoints' / CHECKPOINT_NAMES[1]}"
        )
    for name in CHECKPOINT_NAMES[::-1] if _tests_last(run_dir) else CHECKPOINT_NAMES:
        path = run_dir / "checkpoints" / name
        if path.is_file():
            return path
    others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    hint = f" (it holds {', '.join(others)}: pass one of them)" if others else ""
    raise CheckpointError(
        f"no checkpoint in {run_dir / 'checkpoints'}: neither best.ckpt nor last.ckpt{hint}"
    )


def _tests_last(run_dir: Path) -> bool:
    """The run's config says test_weights=last (the 2018 study's protocol: the final weights)."""
    try:
        return OmegaConf.load(run_dir / ".hydra" / "config.yaml").get("test_weights") == "last"
    except Exception:  # no or unreadable config: the default, best.ckpt
        return False


def _diverged(run_dir: Path) -> str | None:
    """summary.json's error when the run failed with no finite validation loss, else None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") == "failed" and summary.get("best_val_loss") is None and summary.get("epochs"):
        return str(summary.get("error") or "the run failed")
    return None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to: RUN/checkpoints/x.ckpt -> RUN (resvae.cli.data_root)."""
    return run_folder(checkpoint)


def run_dirs_below(root: Path) -> list[Path]:
    """Every run folder (one with checkpoints/) below `root`, not looking inside run folders."""
    found: list[Path] = []
    for folder, subdirs, _ in os.walk(root):
        here = Path(folder)
        if here != root and is_run_dir(here):
            found.append(here)
            subdirs[:] = []
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "wandb")
    return sorted(found)


def targets_of(path: Path) -> tuple[list[Target], bool]:
    """(the checkpoints that `path` names, whether it is a sweep folder)."""
    if path.is_file():
        return [Target(str(path), run_dir_of(path), path)], False
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist: pass a checkpoint file, a run folder or a sweep folder"
        )
    if is_run_dir(path):
        return [Target(str(path), path)], False
    runs = run_dirs_below(path)
    if not runs:
        raise CheckpointError(
            f"{path} is neither a run folder (it has no checkpoints/ folder) nor a sweep folder "
            "(no run folder with checkpoints/ below it)"
        )
    return [Target(str(run), run) for run in runs], True


# ---------------------------------------------------------------------------------- the run's data
def run_config(target: Target, config_file: Path | None) -> DictConfig:
    """The run's composed config: --config, else RUN/.hydra/config.yaml, else summary.json's."""
    candidates = [config_file] if config_file else []
    if target.run_dir is not None:
        candidates.append(target.run_dir / ".hydra" / "config.yaml")
    for path in candidates:
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as err:
                raise ValueError(f"cannot read the run config {path}: {' '.join(str(err).split())}") from err
            if not isinstance(cfg, DictConfig):
                raise ValueError(f"the run config {path} is not a mapping")
            return cfg
        if path == config_file:
            raise ValueError(f"--config {path} does not exist")
    if target.run_dir is not None and (target.run_dir / "summary.json").is_file():
        try:
            summary = json.loads((target.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
            return OmegaConf.create(summary["config"])
    where = target.run_dir or (target.checkpoint.parent if target.checkpoint else Path("."))
    raise ValueError(
        f"no run config for {target.label}: {where}/.hydra/config.yaml is missing (and so is "
        "summary.json's config); pass --config FILE, the .hydra/config.yaml of the run that "
        "wrote the checkpoint"
    )


@dataclass
class SplitImages:
    images: torch.Tensor  # uint8 [N, C, H, W] on the CPU
    held_out: bool
    note: str | None  # why the split is not held out
    val_source: str | None
    data_line: str = ""  # where the images come from and why (resvae.cli.data_root.describe)
    warning: str | None = None  # they are not the images the run was trained on


def load_split(
    cfg: DictConfig,
    split: str,
    root: DataRoot | None = None,
    checkpoint_info: dict[str, Any] | None = None,
) -> SplitImages:
    """The images of `split` as the run's `data` config defines them (same sizes, same
    validation hold-out, same seed), read from `root` (resvae.cli.data_root.resolve_data_root; None:
    the config's own data.root). Never downloads: missing data is a DatasetError. With the
    checkpoint's resvae entry, images other than the run's give a warning (SplitImages.warning)."""
    from hydra.utils import instantiate

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if "data" not in cfg or not isinstance(cfg.data, DictConfig):
        raise ValueError("the run config has no data node")
    data: dict[str, Any] = OmegaConf.to_container(cfg.data, resolve=True)  # type: ignore[assignment]
    target = str(data.get("_target_", ""))
    if not target.startswith("resvae.data."):
        raise ValueError(
            f"the run's data config targets {target or 'nothing'!r}, not one of resvae's data modules "
            "(resvae.data.*): refusing to import it"
        )
    if root is None:
        root = DataRoot(Path(str(data.get("root", "."))), "run", "from the run's config")
    elif root.source == "option" and not reads_files(data):
        print(f"{PROG}: note: --data-root ignored: the run's data ({target}) reads no files", file=sys.stderr)
    data = with_root(data, root)
    module = instantiate(data)
    try:
        warning = check_fingerprint(module, checkpoint_info or {})  # reads the images
        module.setup()
    except DatasetError as err:
        raise DatasetError(f"{one_line(err)} (data.root {root.why}; pass --data-root DIR)") from err
    val_source = data.get("val_source")
    if split == "test" and val_source != "test":
        held_out, note = True, None
    elif split == "test":
        held_out = False
        note = (
            "data.val_source=test: the run validated on the test split (it chose best.ckpt and "
            "stopped training)"
        )
    elif split == "val":
        held_out = False
        note = "the validation split chose best.ckpt and stopped training" + (
            " (data.val_source=test: it is the test split)" if val_source == "test" else ""
        )
    else:
        held_out, note = False, "the training split fitted the weights"
    return SplitImages(module.splits[split].cpu(), held_out, note, val_source, describe(data, root), warning)


# ---------------------------------------------------------------------------------- the numbers
def batch_seed(seed: int, index: int) -> int:
    """The global RNG seed of batch `index`: all randomness of the evaluation (the ELBO's
    reparameterisation noise and the importance samples, drawn with torch.randn_like in
    objectives.py) comes from it, so the numbers do not depend on the process or on what ran
    before."""
    return seed * 1_000_003 + index


def mean_and_se(values: torch.Tensor) -> tuple[float, float | None]:
    """Mean and standard error (sample std / sqrt(n)) of per-image values; SE None for n < 2."""
    values = values.double()
    n = values.numel()
    se = float(values.std(correction=1) / math.sqrt(n)) if n >= 2 else None
    return float(values.mean()), se


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


QUANTITIES = {  # per-image values, as error messages name them
    "loss": "the loss (negative ELBO, or the AE's reconstruction NLL)",
    "recon": "the reconstruction NLL",
    "kl": "the KL",
    "nll_iw": "the importance-weighted NLL",
    "elbo": "the negative ELBO",
    "penalty": "the weight penalty",
}


def _check(index: int, start: int, split: str, name: str, values: torch.Tensor) -> None:
    bad = ~torch.isfinite(values.detach()).flatten(1).all(1) if values.dim() > 1 else ~torch.isfinite(values)
    if bool(bad.any()):
        raise EvaluationError(
            f"batch {index} (images {start}..{start + values.shape[0] - 1} of the {split} split): "
            f"{name} is not finite for {int(bad.sum())} of {values.shape[0]} images; no average is reported"
        )


@torch.no_grad()
def evaluate_images(
    model: LatentModel,
    images: torch.Tensor,
    *,
    iw_samples: int,
    batch_size: int,
    seed: int = 0,
    split: str = "test",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The evaluation numbers of `model` on `images` (uint8 [N, C, H, W]): per-image values
    averaged, with standard errors. Raises EvaluationError on any non-finite value. The
    caller's global RNG state is restored afterwards."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    from torchmetrics.image import PeakSignalNoiseRatio

    n = images.shape[0]
    if n < 1:
        raise ValueError(f"the {split} split holds no images")
    if iw_samples < 0 or batch_size < 1:
        raise ValueError("--iw-samples must be >= 0 and --batch-size >= 1")
    bad = nonfinite_weights(model)
    if bad:
        raise EvaluationError(
            f"the checkpoint's weights are not finite ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
            "the model diverged; evaluate an earlier checkpoint"
        )
    model.eval()
    objective = model.objective
    posterior = objective.has_posterior
    use_iw = posterior and iw_samples > 0
    device = model.device
    names = ["loss", "recon", *(["kl", "elbo"] if posterior else []), *(["nll_iw"] if use_iw else [])]
    names += ["penalty", "psnr", "ssim"]
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    psnr_all = PeakSignalNoiseRatio(data_range=1.0).to(device)  # val/psnr's definition: one MSE
    stats = PosteriorStats()
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    batches = math.ceil(n / batch_size)
    with torch.random.fork_rng(devices=devices):
        for index in range(batches):
            start = index * batch_size
            batch = images[start : start + batch_size]
            torch.manual_seed(batch_seed(seed, index))
            x = model.to_input(batch)
            terms = objective(x)
            values = {"loss": terms.loss, "recon": terms.recon}
            penalty = getattr(terms, "penalty", None)  # a weight penalty inside the loss
            values["penalty"] = torch.zeros_like(terms.loss) if penalty is None else penalty
            if posterior:
                values["kl"] = terms.kl
                values["elbo"] = terms.recon + terms.kl
                mu, logvar = objective.posterior(x)
                _check(index, start, split, "the posterior mean", mu)
                _check(index, start, split, "the posterior log-variance", logvar)
                stats.update(mu, logvar)
            if use_iw:
                values["nll_iw"] = objective.nll_iw(x, iw_samples)
            for name, value in values.items():
                _check(index, start, split, QUANTITIES[name], value)
            recon = model.reconstruct(batch)
            _check(index, start, split, "the reconstruction", recon)
            target = (x.float() + 1) / 2
            psnr_all.update(recon, target)
            values["psnr"] = peak_signal_noise_ratio(
                recon, target, data_range=1.0, reduction="none", dim=(1, 2, 3)
            )
            values["ssim"] = structural_similarity_index_measure(
                recon, target, data_range=1.0, reduction="none"
            )
            for name in per_image:
                per_image[name].append(values[name].detach().double().cpu())
            if progress is not None:
                progress(index + 1, batches)
    cat = {name: torch.cat(chunks) for name, chunks in per_image.items()}
    dims = int(math.prod(images.shape[1:]))
    result: dict[str, Any] = {"n_images": n, "image_dims": dims, "batches": batches}
    result["loss_nats"], result["loss_nats_se"] = mean_and_se(cat["loss"])
    result["recon_nats"], result["recon_nats_se"] = mean_and_se(cat["recon"])
    result["penalty_nats"] = float(cat["penalty"].mean())
    if posterior:
        result["elbo_nats"], result["elbo_nats_se"] = mean_and_se(cat["elbo"])
        result["kl_nats"], result["kl_nats_se"] = mean_and_se(cat["kl"])
    else:
        result.update(elbo_nats=None, elbo_nats_se=None, kl_nats=None, kl_nats_se=None)
    if use_iw:
        result["nll_iw_nats"], result["nll_iw_se"] = mean_and_se(cat["nll_iw"])
        result["iw_gap_nats"], result["iw_gap_se"] = mean_and_se(cat["elbo"] - cat["nll_iw"])
    else:
        result.update(nll_iw_nats=None, nll_iw_se=None, iw_gap_nats=None, iw_gap_se=None)
    result["iw_samples"] = iw_samples if use_iw else None
    # bits/dim of the bound on -log p(x): the negative ELBO (VAE), else the loss
    bound, bound_se = (
        (result["elbo_nats"], result["elbo_nats_se"])
        if posterior
        else (result["loss_nats"], result["loss_nats_se"])
    )
    result["bpd"], result["bpd_se"] = _bpd(bound, dims), _bpd(bound_se, dims)
    result["bpd_iw"], result["bpd_iw_se"] = _bpd(result["nll_iw_nats"], dims), _bpd(result["nll_iw_se"], dims)
    result["psnr"] = float(psnr_all.compute())
    result["psnr_per_image"], result["psnr_per_image_se"] = mean_and_se(cat["psnr"])
    result["ssim"], result["ssim_se"] = mean_and_se(cat["ssim"])
    result["latent_dim"] = int(math.prod(model.latent_shape))
    if posterior:
        diag = stats.compute()
        result["active_units"] = diag["active_units"]
        result["active_threshold"] = ACTIVE_THRESHOLD
        result["mu_variance_per_dim"] = [float(v) for v in diag["mu_variance"]]  # type: ignore[union-attr]
        result["kl_per_dim"] = [float(v) for v in diag["kl_per_dim"]]  # type: ignore[union-attr]
    else:
        result.update(active_units=None, active_threshold=None, mu_variance_per_dim=None, kl_per_dim=None)
    return {k: _finite_or_none(v) for k, v in result.items()}


def _bpd(nats: float | None, dims: int) -> float | None:
    return None if nats is None else float(bits_per_dim(torch.tensor(nats, dtype=torch.float64), dims))


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity (a perfect reconstruction has an infinite PSNR)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def bpd_refusal(model: LatentModel, info: dict[str, Any]) -> str | None:
    """Why bits/dim is not a code length of the data for this model, or None when it is."""
    if model.bpd_is_likelihood and info.get("valid_bpd", True) is True:
        return None
    if not model.objective.has_posterior:
        return (
            "an autoencoder's loss is the reconstruction NLL of a deterministic code, not a bound "
            "on -log p(x)"
        )
    if not model.likelihood.valid_bpd:
        return (
            f"the {model.likelihood.name} loss is not a normalised likelihood of the 8-bit pixel "
            "levels (bpd_is_likelihood is false), so its bits/dim is not a code length"
        )
    return "the checkpoint marks its bits/dim as not a likelihood (valid_bpd is false)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- one checkpoint
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def deterministic_kernels() -> None:
    """cuDNN picks the same convolution algorithms in every process (no benchmark autotuning)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _progress(label: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label}: batch {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


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
        progress=_progress(target.label),
    )
    # said once the numbers exist: a failed evaluation stays one error line (which names the root
    # when the data is missing)
    report_data(data, "" if target.label == str(args.path) else f"{target.label}: ")  # a sweep's run
    refused = bpd_refusal(model, info)
    if refused is not None:
        numbers.update(bpd=None, bpd_se=None, bpd_iw=None, bpd_iw_se=None)
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
        "seconds": round(time.perf_counter() - started, 3),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = args.out or ((target.run_dir or checkpoint.parent) / EVAL_FILE)
    atomic_write_json(out, result)
    result["eval_json"] = str(out)
    return result


def report_data(data: SplitImages, prefix: str = "") -> None:
    """The tools' line on stderr saying where the images came from (stdout keeps the results),
    and the warning when they are not the run's."""
    print(f"{prefix}{data.data_line}", file=sys.stderr, flush=True)
    if data.warning:
        print(f"{prefix}{data.warning}", file=sys.stderr, flush=True)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# ---------------------------------------------------------------------------------- output
def _pm(value: float | None, se: float | None, fmt: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:{fmt}} ± {se:{fmt}}" if se is not None else f"{value:{fmt}} ± n/a"


def summary_line(label: str, r: dict[str, Any]) -> str:
    """One line per checkpoint, e.g. `RUN: test bpd 5.123 ± 0.004 (ELBO), 5.101 ± 0.004 (IW, K=100),
    PSNR 21.3, SSIM 0.62, active units 31/256`."""
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
    line = f"{label}: " + ", ".join(parts)
    if not r["held_out"]:
        line += f" [not held out: {r['held_out_note']}]"
    return line


# ---------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate checkpoints (ELBO and importance-weighted NLL in nats and bits/dim, "
        "PSNR, SSIM, active units, KL per latent dimension) and write eval.json.",
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
    add_run_options(p)
    p.add_argument("--out", type=Path, help="write the results here (default: RUN/eval.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        device = pick_device(args.device)
        targets, sweep = targets_of(args.path)
        if sweep and args.out is not None:
            raise ValueError(f"--out names one file but {args.path} is a sweep folder of {len(targets)} runs")
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
