"""resvae-eval's numbers: a model evaluated image by image (resvae.models.evaluation, as in
validation and test), each quantity averaged with its standard error over the images
(std / sqrt(n)), bits/dim where it is a code length, and the posterior diagnostics. Any
non-finite value fails the evaluation (EvaluationError, exit code 1): no average hides it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from resvae.models.base import LatentModel
from resvae.models.diagnostics import ACTIVE_THRESHOLD, PosteriorStats
from resvae.models.evaluation import evaluate_batch
from resvae.models.hvae_objective import ACTIVE_GROUP_NATS, active_groups
from resvae.models.likelihoods import bits_per_dim


class EvaluationError(RuntimeError):
    """The model gives non-finite numbers (weights, losses, reconstructions): no average is
    reported. Not an input error: exit code 1."""


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
            scored = evaluate_batch(objective, x, iw_samples if use_iw else 0)  # as validation and test
            values = dict(scored.per_image)
            values.setdefault("penalty", torch.zeros_like(values["loss"]))  # a weight penalty in the loss
            if posterior:
                values["elbo"] = values["recon"] + values["kl"]
                _check(index, start, split, "the posterior mean", scored.mu)
                _check(index, start, split, "the posterior log-variance", scored.logvar)
                stats.update(scored.mu, scored.logvar)
            for name in QUANTITIES.keys() & values.keys():
                _check(index, start, split, QUANTITIES[name], values[name])
            _check(index, start, split, "the reconstruction", scored.reconstruction)
            psnr_all.update(scored.reconstruction, scored.target)
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
        if hasattr(objective, "group_kl"):  # a hierarchical VAE: KL and activity per latent group
            per_group = objective.group_kl(diag["kl_per_dim"])
            result["kl_per_group"] = [float(v) for v in per_group]
            result["active_groups"] = active_groups(per_group)
            result["active_group_threshold"] = ACTIVE_GROUP_NATS
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
