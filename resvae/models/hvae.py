"""The hierarchical residual VAE as a LightningModule (model=hvae): latent groups at several
resolutions with learned priors p(z_g | z_<g), VDVAE style; the maths: `hvae_objective.HVAEObjective`,
the network: `resvae.nn.hvae`.

Everything else is `LatentModel`'s (the guarded step, likelihoods, checkpoints, validation and
test metrics). Validation also logs the KL of each group, `val/kl_group_<g>` (nats/image, g in
top-down order: 0 is the lowest resolution's first group), and `val/active_groups` (groups whose
mean KL exceeds `hvae_objective.ACTIVE_GROUP_NATS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resvae import metrics as keys
from resvae.models.base import LatentModel, OptimizerFactory, SchedulerFactory
from resvae.models.hvae_objective import ACTIVE_GROUP_NATS, HVAEObjective, active_groups
from resvae.models.likelihoods import make_likelihood

VAL_ACTIVE_GROUPS = keys.of("val", "active_groups")


def val_group_key(group: int) -> str:
    return keys.of("val", f"kl_group_{group}")


class HVAE(LatentModel):
    def __init__(
        self,
        *,
        arch: Any,
        likelihood: str = "logistic_mixture",
        n_mix: int = 10,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        iw_samples: int = 16,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        train_step: Mapping[str, Any] | None = None,
    ) -> None:
        """arch: resvae.nn.hvae.HVAEArchConfig; beta: KL weight after warm-up (1: the ELBO);
        kl_warmup_steps: linear KL warm-up; free_bits: nats per latent group (batch mean) below
        which its KL is not pushed down; iw_samples: importance samples of test/nll_iw (each a
        sample of the whole hierarchy)."""
        pixels = make_likelihood(likelihood, n_mix)
        net = arch.build(pixels.param_channels(arch.in_channels), code_multiplier=2)
        super().__init__(
            objective=HVAEObjective(net, pixels, beta, kl_warmup_steps, free_bits),
            arch=arch,
            optimizer=optimizer,
            scheduler=scheduler,
            train_step=train_step,
            iw_samples=iw_samples,
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.objective.kl_warmup_steps:
            self.objective.kl_weight.fill_(self.objective.kl_weight_at(self.global_step))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.val_posterior.count:
            return
        # the whitened posterior's KL per dimension is each group's KL term (hvae_objective.py)
        per_group = self.objective.group_kl(self.val_posterior.compute()["kl_per_dim"])  # [G]
        metrics = {val_group_key(g): kl.float() for g, kl in enumerate(per_group)}
        metrics[VAL_ACTIVE_GROUPS] = float(active_groups(per_group, ACTIVE_GROUP_NATS))
        self.log_dict(metrics)
