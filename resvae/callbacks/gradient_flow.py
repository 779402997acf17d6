"""Per-block gradient norms at initialisation and during training (`callbacks=gradient_flow`).

At the start of each epoch listed in `epochs` (epoch 0's start is the initialisation) and, with
`at_end`, when fitting ends, the callback measures on a fixed batch of validation images, in
training mode, for every block (resvae.cli.analyze.network_units: encoder, then decoder):

- `param_grad_norm`: the norm of the training objective's gradient w.r.t. the block's parameters,
- `out_grad_norm`: the mean per-image norm of the gradient w.r.t. the block's output,
- `param_norm`: the norm of the block's parameters,

and writes `gradient_flow/epoch_NNN.csv` and `.png` (norm vs block index), and
`gradient_flow/gradient_flow.png` with every measured epoch, into the run folder; with a W&B
logger the plots are logged too (key `gradient_flow`). The measurement changes nothing about
training: BatchNorm statistics are restored, the random generators are left as they were, and
gradients are taken with torch.autograd.grad (parameters' .grad untouched). A measurement that
exists already (a resumed run) is not repeated.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from resvae.cli.analyze.gradients import write_gradients
from resvae.models.gradients import GRADIENT_FIELDS, gradient_profile

FOLDER = "gradient_flow"
NUMBERS = ("index", "param_grad_norm", "param_norm", "out_grad_norm")


class GradientFlow(L.Callback):
    def __init__(
        self,
        epochs: Sequence[int] = (0, 1, 2, 5, 10, 20, 50, 100),
        at_end: bool = True,
        n_images: int = 64,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        if n_images < 1 or any(e < 0 for e in epochs):
            raise ValueError("callbacks.gradient_flow: n_images must be >= 1 and epochs >= 0")
        self.epochs = sorted({int(e) for e in epochs})
        self.at_end, self.n_images, self.seed, self.dirpath = at_end, n_images, seed, dirpath

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir) / FOLDER

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch in self.epochs:
            self.measure(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and trainer.current_epoch > 0:
            self.measure(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}", again=True)

    def measure(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stem: str, again: bool = False
    ) -> None:
        """Measure and write `stem`.csv/.png (skipped when it exists, unless `again`)."""
        folder = self._folder(trainer)
        if not trainer.is_global_zero or ((folder / f"{stem}.csv").is_file() and not again):
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "val_images"):
            return
        images = datamodule.val_images(self.n_images)
        blocks = gradient_profile(pl_module, images, self.seed)
        label = stem.replace("_", " ")
        write_gradients([{"label": label, "blocks": blocks}], folder, stem, ("csv", "png"))
        written = self._write_summary(folder)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key=FOLDER, images=[str(written)], caption=[f"up to {label}"], step=trainer.global_step
                )

    def _write_summary(self, folder: Path) -> Path:
        """gradient_flow.png: every measured epoch, one line each."""
        results = []
        for path in sorted(folder.glob("epoch_*.csv")):
            with open(path, newline="") as f:
                rows = [
                    {k: (float(v) if k in NUMBERS else v) for k, v in row.items() if k in GRADIENT_FIELDS}
                    for row in csv.DictReader(f)
                ]
            results.append({"label": path.stem.replace("_", " "), "blocks": rows})
        return write_gradients(results, folder, "gradient_flow", ("png",))[0]
