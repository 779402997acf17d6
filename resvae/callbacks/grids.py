"""Sample and reconstruction grids at each validation, as PNG files and logger images.

Samples decode the same prior noise every time (drawn once from `seed`), and reconstructions
use the same validation images, so grids from different epochs can be compared directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import make_grid, save_image

from resvae.run.io import atomic_write


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """images [N, C, H, W] in [0, 1] -> one PNG grid, written atomically."""
    grid = make_grid(images.float().cpu().clamp(0, 1), nrow=nrow, padding=2)
    return atomic_write(path, lambda f: save_image(grid, f, format="png"))


class SampleGrids(L.Callback):
    def __init__(
        self,
        n_samples: int = 64,
        n_recon: int = 32,
        temperatures: Sequence[float] = (1.0,),
        every_n_epochs: int = 1,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        if n_samples < 1 or n_recon < 1 or every_n_epochs < 1:
            raise ValueError("callbacks.sample_grids: n_samples, n_recon and every_n_epochs must be >= 1")
        if not temperatures or any(t <= 0 for t in temperatures):
            raise ValueError(f"sample temperatures must be > 0, got {list(temperatures)}")
        self.n_samples, self.n_recon = n_samples, n_recon
        self.temperatures = tuple(float(t) for t in temperatures)
        self.every_n_epochs, self.seed, self.dirpath = every_n_epochs, seed, dirpath
        self._noise: torch.Tensor | None = None
        self._images: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self._noise = torch.randn((self.n_samples, *pl_module.latent_shape), generator=generator)

    def _fixed_images(self, trainer: L.Trainer) -> torch.Tensor | None:
        if self._images is None and hasattr(trainer.datamodule, "val_images"):
            self._images = trainer.datamodule.val_images(self.n_recon).clone()
        return self._images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # the Nth epoch, counted from 1 as in the log and summary.json
        if trainer.sanity_checking or not trainer.is_global_zero or epoch % self.every_n_epochs:
            return
        root = Path(self.dirpath or trainer.default_root_dir)
        nrow = 8
        noise, model = self._noise.to(pl_module.device), pl_module.inference
        samples = torch.cat([model.decode(model.latent_from_noise(noise, t)) for t in self.temperatures])
        written = {"samples": save_grid(samples, root / "samples" / f"epoch_{epoch:03d}.png", nrow)}
        images = self._fixed_images(trainer)
        if images is not None:
            recon = model.reconstruct(images)
            pairs = torch.stack([images.float().cpu() / 255, recon.cpu()], dim=1).flatten(0, 1)
            written["recon"] = save_grid(pairs, root / "recon" / f"epoch_{epoch:03d}.png", nrow * 2)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, path in written.items():
                    caption = f"epoch {epoch}" + (
                        f", T={', '.join(map(str, self.temperatures))}"
                        if key == "samples"
                        else ", originals left, reconstructions right"
                    )
                    logger.log_image(key=key, images=[str(path)], caption=[caption], step=trainer.global_step)
