"""Metric names, in one place: what the model logs, what callbacks watch and what summary.json holds.

Keys are "<split>/<name>" (split: train, val, test); the names of the loss terms come from the
objective (`LatentObjective.metric_names`: loss, recon and, for a VAE, kl).
"""

from __future__ import annotations


def of(split: str, name: str) -> str:
    return f"{split}/{name}"


TRAIN_LOSS = of("train", "loss")
TRAIN_SKIPPED = of("train", "skipped_steps")
VAL_LOSS = of("val", "loss")  # what EarlyStopping, ModelCheckpoint and ReduceLROnPlateau watch
VAL_BPD = of("val", "bpd")
VAL_PSNR = of("val", "psnr")
VAL_SSIM = of("val", "ssim")
VAL_NONFINITE = of("val", "nonfinite_batches")
VAL_ACTIVE_UNITS = of("val", "active_units")  # Burda et al.: Cov_x(E_q[z_d]) > 0.01
VAL_KL_PER_DIM = of("val", "kl_per_dim")  # a histogram (W&B), not a scalar
VAL_KL_PER_GROUP = of("val", "kl_per_group")  # a histogram (W&B): one bin per latent group of an hvae
TEST_BPD = of("test", "bpd")
TEST_BPD_IW = of("test", "bpd_iw")
TEST_NLL_IW = of("test", "nll_iw")
TEST_NONFINITE = of("test", "nonfinite_batches")

# summary.json field <- logged metric (its latest value)
SUMMARY_FIELDS = {
    "train_loss": TRAIN_LOSS,
    "val_loss": VAL_LOSS,
    "val_bpd": VAL_BPD,
    "val_psnr": VAL_PSNR,
    "val_ssim": VAL_SSIM,
    "val_nonfinite_batches": VAL_NONFINITE,
    "val_active_units": VAL_ACTIVE_UNITS,
    "test_loss": of("test", "loss"),
    "test_bpd": TEST_BPD,
    "test_nll_iw": TEST_NLL_IW,
    "test_bpd_iw": TEST_BPD_IW,
    "test_nonfinite_batches": TEST_NONFINITE,
}
# epoch curves whose minimum over the run summary.json also keeps (the study's Table 1)
SUMMARY_MINIMA = {"min_train_loss": TRAIN_LOSS, "min_val_loss": VAL_LOSS, "min_val_bpd": VAL_BPD}
# shown on each epoch's progress line
PROGRESS = (TRAIN_LOSS, VAL_LOSS, VAL_BPD, VAL_PSNR)
# summary.json fields a dashboard compares runs by (the W&B run summary gets them), rather than
# the last epoch's values that W&B keeps by default
DASHBOARD_FIELDS = (
    "status", "network", "protocol", "depth", "layers", "width", "params", "epochs", "best_val_loss",
    "best_epoch", "min_val_bpd", "min_train_loss", "min_val_loss", "test_bpd", "test_bpd_iw",
    "images_per_second", "train_seconds", "stopped_early",
)  # fmt: skip
