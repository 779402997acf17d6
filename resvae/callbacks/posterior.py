"""The KL per latent dimension as a W&B histogram at each validation, so a collapsing posterior
is visible on the dashboard while a sweep runs (the count of active units is logged as
`val/active_units` by the model itself)."""

from __future__ import annotations

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from resvae import metrics as keys


class KLHistogram(L.Callback):
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stats = getattr(pl_module, "val_posterior", None)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or not wandb_loggers or stats is None or not stats.count:
            return
        import wandb

        kl = stats.compute()["kl_per_dim"].float().cpu().numpy()
        if not np.isfinite(kl).all():  # a diverged epoch: the run fails with its own message
            return
        for logger in wandb_loggers:
            logger.experiment.log(
                {keys.VAL_KL_PER_DIM: wandb.Histogram(kl), "trainer/global_step": trainer.global_step}
            )
