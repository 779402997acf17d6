"""The KL per latent dimension as a W&B histogram at each validation, so a collapsing posterior
is visible on the dashboard while a sweep runs (the count of active units is logged as
`val/active_units` by the model itself). For a hierarchical VAE also `val/kl_per_group`: one bin
per latent group (top-down order) whose height is the group's KL in nats/image, so W&B's
histogram-over-steps view shows which groups carry information as training goes."""

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

        kl_per_dim = stats.compute()["kl_per_dim"]
        kl = kl_per_dim.float().cpu().numpy()
        if not np.isfinite(kl).all():  # a diverged epoch: the run fails with its own message
            return
        record = {keys.VAL_KL_PER_DIM: wandb.Histogram(kl), "trainer/global_step": trainer.global_step}
        group_kl = getattr(pl_module.objective, "group_kl", None)
        if group_kl is not None:
            per_group = group_kl(kl_per_dim).float().cpu().numpy()  # [G]
            edges = np.arange(per_group.shape[0] + 1)  # bin g spans [g, g + 1): group g
            record[keys.VAL_KL_PER_GROUP] = wandb.Histogram(np_histogram=(per_group, edges))
        for logger in wandb_loggers:
            logger.experiment.log(record)
