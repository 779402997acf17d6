"""What one batch of images scores: the one per-batch evaluation of validation, test and resvae-eval.

`LatentObjective.evaluate` is the part that can be compiled (plain tensors in and out); the
importance-weighted bound and the image-quality scores are added around it by `evaluate_batch`.
Every number is per image, so a caller can average it (validation, test) or keep it for standard
errors (resvae-eval). The reconstruction is the posterior mean's (the AE's code) decoded to the
likelihood's point estimate: deterministic, the usual definition behind PSNR and SSIM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from resvae.models.objectives import LatentObjective

# objective.evaluate or a compiled copy: x -> (per-image values [B, M], reconstruction, mu, logvar)
ScoresFn = Callable[
    [torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
]


@dataclass
class BatchEvaluation:
    per_image: dict[str, torch.Tensor]  # name -> [B]: metric_names, then nll_iw, psnr, ssim
    reconstruction: torch.Tensor  # [B, C, H, W] in [0, 1]
    target: torch.Tensor  # the images in [0, 1]
    mu: torch.Tensor | None
    logvar: torch.Tensor | None

    def means(self, names: tuple[str, ...]) -> torch.Tensor:
        """The batch means of `names` as one tensor [len(names)] (what DeviceMeans sums)."""
        return torch.stack([self.per_image[name].float().mean() for name in names])


@torch.no_grad()
def evaluate_batch(
    objective: LatentObjective,
    x: torch.Tensor,
    iw_samples: int = 0,
    scores: ScoresFn | None = None,
) -> BatchEvaluation:
    """The per-image numbers of one batch x in [-1, 1]: `objective.metric_names` (nats/image),
    `nll_iw` with `iw_samples` > 0 (the importance-weighted bound; a model without a posterior
    reports its loss), and the reconstruction's `psnr` and `ssim` (dB, [0, 1]). `scores` is
    `objective.evaluate` or a compiled copy of it (validation's compile_eval)."""
    values, reconstruction, mu, logvar = (scores or objective.evaluate)(x)
    per_image = dict(zip(objective.metric_names, values.unbind(1)))
    if iw_samples > 0:
        per_image["nll_iw"] = objective.nll_iw(x, iw_samples).float()
    target = (x.float() + 1) / 2
    reconstruction = reconstruction.float()
    per_image["psnr"] = peak_signal_noise_ratio(
        reconstruction, target, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )
    per_image["ssim"] = structural_similarity_index_measure(
        reconstruction, target, data_range=1.0, reduction="none"
    )
    return BatchEvaluation(per_image, reconstruction, target, mu, logvar)
