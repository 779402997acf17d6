"""The hierarchical residual VAE as a LightningModule (model=hvae): latent groups at several
resolutions with learned priors p(z_g | z_<g), VDVAE style; the maths: `hvae_objective.HVAEObjective`,
the network: `resvae.nn.hvae`.

Everything else is `LatentModel`'s (the guarded step, likelihoods, checkpoints, validation and
test metrics). Validation also logs the KL of each group, `val/kl_group_<g>` (nats/image, g in
top-down order: 0 is the lowest resolution's first group), and `val/active_groups` (groups whose
mean KL exceeds `hvae_objective.ACTIVE_GROUP_NATS`).
"""

from __future__ import annotations

from resvae import metrics as keys
from resvae.models.hvae_objective import ACTIVE_GROUP_NATS, HVAEObjective, active_groups
from resvae.models.vae import VAE

VAL_ACTIVE_GROUPS = keys.of("val", "active_groups")


def val_group_key(group: int) -> str:
    return keys.of("val", f"kl_group_{group}")


class HVAE(VAE):
    """`VAE`'s options, with `free_bits` per latent group, `iw_samples` drawing the whole
    hierarchy each, and `arch` a resvae.nn.hvae.HVAEArchConfig."""

    objective_class = HVAEObjective

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.val_posterior.count:
            return
        # the whitened posterior's KL per dimension is each group's KL term (hvae_objective.py)
        per_group = self.objective.group_kl(self.val_posterior.compute()["kl_per_dim"])  # [G]
        metrics = {val_group_key(g): kl.float() for g, kl in enumerate(per_group)}
        metrics[VAL_ACTIVE_GROUPS] = float(active_groups(per_group, ACTIVE_GROUP_NATS))
        self.log_dict(metrics)
