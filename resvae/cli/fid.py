"""FID for resvae-eval --fid: a model's prior samples against a split's real images.

The Fréchet Inception Distance (Heusel et al. 2017) is torchmetrics' `FrechetInceptionDistance`
on torch-fidelity's InceptionV3 (the TensorFlow weights of the original FID, ported; its
2048-d pool features). The weights are downloaded on first use into torch hub's cache,
`$TORCH_HOME/hub/checkpoints/` (default `~/.cache/torch/hub/checkpoints/`; `inception_weights_path`
says where), and read from there afterwards. Without them and without internet the evaluation
stops before it starts with one line (InceptionWeightsError, an input error: exit code 2).

Both image sets go to the feature extractor as uint8 [0, 255]: the real images as stored, the
samples (float in [0, 1]) rounded as a PNG of them would be. Tests pass a small feature module
instead (`feature=`), so that they need no download.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import torch

from resvae.cli.scores import EvaluationError
from resvae.run.errors import one_line

INCEPTION_DIMS = 2048  # the pool features of the original FID (torchmetrics also offers 64, 192, 768)
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's name; eval.json's fid_feature is NAME/dims


class InceptionWeightsError(ValueError):
    """The Inception weights are neither cached nor to be had: a problem of the environment, not
    of the model (exit code 2)."""


class Sampler(Protocol):
    """What FID needs of a model: resvae.models.inference.Inference."""

    @property
    def device(self) -> torch.device: ...

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------- the weights
def inception_url() -> str:
    """Where torch-fidelity (and so torchmetrics) fetches its InceptionV3 weights from."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return str(URL_INCEPTION_V3)


def inception_weights_path() -> Path:
    """The cached weights file: torch hub's checkpoint folder (`$TORCH_HOME/hub/checkpoints`,
    default `~/.cache/torch/hub/checkpoints`), the file name of the URL, as
    `torch.hub.load_state_dict_from_url` (torch-fidelity's own download) keeps it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(inception_url()).path).name


def download(url: str, dest: Path) -> None:
    """torch hub's download: into a temporary file beside `dest`, moved there when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), progress=sys.stderr.isatty())


def inception_weights() -> Path:
    """The Inception weights file, downloaded first if it is not cached yet. Raises
    InceptionWeightsError (one line) when it cannot be had."""
    path = inception_weights_path()
    if path.is_file():
        return path
    url = inception_url()
    try:
        download(url, path)
    except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
        raise InceptionWeightsError(
            f"FID needs the Inception weights ({url}) and cannot download them: {one_line(err)} "
            f"(not cached at {path}; run once with internet, or copy the file there)"
        ) from err
    print(f"FID: downloaded the Inception weights to {path}", file=sys.stderr, flush=True)
    return path


def inception_metric(image_shape: tuple[int, ...], dims: int = INCEPTION_DIMS) -> tuple[Any, str]:
    """(torchmetrics' FrechetInceptionDistance on the cached Inception weights, with the network's
    `dims`-d features, their name)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(image_shape) != 3 or image_shape[0] != 3:
        raise ValueError(f"FID's Inception network takes RGB images [3, H, W], these are {list(image_shape)}")
    path = inception_weights()
    try:  # a plain state dict loads safely; torch-fidelity then reads it again without weights_only
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InceptionWeightsError(
            f"the cached Inception weights {path} cannot be read ({type(err).__name__}: "
            f"{one_line(err)[:200]}): delete the file to download it again"
        ) from err
    metric = FrechetInceptionDistance(feature=dims, normalize=False, feature_extractor_weights_path=str(path))
    return metric, f"{INCEPTION_NAME}/{dims}"


def fid_metric(feature: torch.nn.Module | int, image_shape: tuple[int, ...]) -> tuple[Any, str]:
    """(the metric, the name of its features): an int picks the Inception network's features of
    that size, a module maps uint8 images [B, C, H, W] to features [B, d] (named `ClassName/d`)."""
    if isinstance(feature, int):
        return inception_metric(image_shape, feature)
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=feature, normalize=False, input_img_size=tuple(image_shape))
    dims = int(metric.real_features_sum.numel())
    return metric, f"{type(feature).__name__}/{dims}"


# ---------------------------------------------------------------------------------- the distance
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 [0, 255], rounded as torchvision's save_image does."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def sample_fid(
    model: Sampler,
    real_images: torch.Tensor,
    n_samples: int,
    *,
    batch_size: int,
    seed: int = 0,
    feature: torch.nn.Module | int = INCEPTION_DIMS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """FID of `n_samples` prior samples of `model` at temperature 1 against the first
    min(n_samples, N) of `real_images` (uint8 [N, C, H, W]), on the model's device, `batch_size`
    images at a time. The samples are drawn from one CPU generator seeded with `seed`.
    `feature`: the features compared (see fid_metric; default the original FID's).
    Returns eval.json's `fid`, `fid_samples`, `fid_real_images` and `fid_feature`."""
    n_real = min(n_samples, int(real_images.shape[0]))
    if n_samples < 2 or n_real < 2:
        raise ValueError(
            f"FID needs at least 2 samples and 2 real images (a covariance), got {n_samples} samples "
            f"and {real_images.shape[0]} real images"
        )
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    device = model.device
    metric, name = fid_metric(feature, tuple(real_images.shape[1:]))
    metric = metric.to(device)
    total = math.ceil(n_real / batch_size) + math.ceil(n_samples / batch_size)
    done = 0
    for start in range(0, n_real, batch_size):
        metric.update(real_images[start : min(start + batch_size, n_real)].to(device), real=True)
        done += 1
        if progress is not None:
            progress(done, total)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n_samples, batch_size):
        images = model.sample(min(batch_size, n_samples - start), 1.0, generator=generator)
        if not bool(torch.isfinite(images).all()):
            raise EvaluationError(
                f"the prior samples {start}..{start + images.shape[0] - 1} are not finite: no FID is reported"
            )
        metric.update(to_uint8(images).to(device), real=False)
        done += 1
        if progress is not None:
            progress(done, total)
    value = float(metric.compute())
    if not math.isfinite(value):
        raise EvaluationError(f"the FID is not finite ({value}): the features' covariances are degenerate")
    return {"fid": value, "fid_samples": n_samples, "fid_real_images": n_real, "fid_feature": name}
