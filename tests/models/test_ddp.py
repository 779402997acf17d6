"""Data-parallel training on the CPU: two gloo ranks (Lightning's ddp_spawn) train ONE model.

The step's backward goes through LightningModule.manual_backward, so DDP's reducer averages the
gradients: after a few steps both ranks hold the same parameters and optimizer state, and these
match one process trained on the global batch (both ranks' halves together).

The model is an AE with GroupNorm: deterministic (no reparameterisation noise, which each rank
would draw differently from a single process) and without BatchNorm, whose statistics are per
rank on a CPU (SyncBatchNorm needs a GPU; trainer=ddp sets sync_batchnorm for GPUs). The AE's
running code fit is a per-rank buffer for the same reason (DDP broadcasts rank 0's at each
forward), so it is left out of the comparisons.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist

from resvae.models import AE
from resvae.nn import ArchConfig
from tests.helpers.models import cpu_trainer

STEPS, PER_RANK = 4, 4
PER_RANK_BUFFERS = ("objective.code_mean", "objective.code_var")
LOGGED = ("train/loss", "val/loss", "val/recon")  # epoch means: of the whole split on every rank


def group_norm_ae() -> AE:
    torch.manual_seed(0)
    return AE(
        arch=ArchConfig(depth=28, width=2, latent_dim=4, image_size=8, norm="group"),
        likelihood="logistic_mixture",
        n_mix=2,
        # SGD, not Adam: Adam's first steps move each weight by about lr * sign(gradient), which
        # turns float-rounding differences of near-zero gradients into differences of lr
        optimizer=partial(torch.optim.SGD, lr=1e-2, momentum=0.9),
    )


class RankShards:
    """STEPS global batches of 2 * PER_RANK images; under DDP each rank yields its half."""

    def __len__(self) -> int:
        return STEPS

    def __iter__(self):
        g = torch.Generator().manual_seed(3)
        images = torch.randint(0, 256, (STEPS, 2 * PER_RANK, 3, 8, 8), generator=g, dtype=torch.uint8)
        if not (dist.is_available() and dist.is_initialized()):
            return iter(list(images))
        rank = dist.get_rank()
        return iter([batch[rank * PER_RANK : (rank + 1) * PER_RANK] for batch in images])


class SaveState(L.Callback):
    """Each rank writes its parameters, buffers and optimizer state to `folder/rank<r>.pt`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        state.update({f"logged.{k}": trainer.callback_metrics[k].clone() for k in LOGGED})
        for i, s in trainer.optimizers[0].state_dict()["state"].items():
            state.update({f"opt.{i}.{name}": torch.as_tensor(v).clone() for name, v in s.items()})
        torch.save(state, Path(self.folder) / f"rank{trainer.global_rank}.pt")


def train(folder: str, devices: int) -> None:
    trainer = cpu_trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        callbacks=[SaveState(folder)],
    )
    trainer.fit(group_norm_ae(), train_dataloaders=RankShards(), val_dataloaders=RankShards())


@pytest.mark.slow
def test_two_gloo_ranks_train_one_model_like_a_single_process_on_the_global_batch() -> None:
    with tempfile.TemporaryDirectory() as ddp, tempfile.TemporaryDirectory() as single:
        train(ddp, devices=2)
        train(single, devices=1)
        r0, r1 = (torch.load(Path(ddp) / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        one = torch.load(Path(single) / "rank0.pt", weights_only=True)
    assert int(r0["step.skipped"]) == 0 and any(k.startswith("opt.") for k in r0)  # momentum buffers
    shared = [k for k in r0 if k not in PER_RANK_BUFFERS and not k.startswith(("step.means", "logged."))]
    drifted = [k for k in shared if not torch.equal(r0[k], r1[k])]
    assert not drifted, f"the ranks differ (independent replicas): {drifted}"
    start = group_norm_ae().state_dict()
    params = [k for k in shared if k in start and r0[k].is_floating_point()]
    momenta = [k for k in shared if k.startswith("opt.")]
    moved = norm(one, params, start)
    assert moved > 0.1, "nothing trained"
    # The all-reduce sums in another order: equal up to float rounding, measured over the whole
    # model (a bias in front of GroupNorm has a zero gradient up to rounding noise, so per-tensor
    # relative errors of such tensors mean nothing).
    assert norm(r0, params, one) < 1e-3 * moved
    assert norm(r0, momenta, one) < 1e-3 * norm(one, momenta)
    # each rank saw half of every batch; the logged epoch means are the ranks' sums added up, so
    # both ranks log (and their schedulers and checkpoints act on) the single process's numbers
    for key in LOGGED:
        assert torch.equal(r0[f"logged.{key}"], r1[f"logged.{key}"]), key
        torch.testing.assert_close(r0[f"logged.{key}"], one[f"logged.{key}"], rtol=1e-4, atol=0, msg=key)


def norm(a: dict, keys: list[str], b: dict | None = None) -> float:
    """The 2-norm of a[keys] - b[keys] (or of a[keys]) as one vector."""
    return float(torch.cat([(a[k] - (b[k] if b else 0)).flatten() for k in keys]).norm())


def test_a_captured_step_under_ddp_is_refused_in_one_line() -> None:
    torch.manual_seed(0)
    model = AE(arch=ArchConfig(depth=28, width=2, latent_dim=4), train_step={"capture": "cuda_graph"})
    with pytest.raises(ValueError, match="capture=cuda_graph cannot run under DDP") as err:
        model.check_trainer("32-true", world_size=2)
    assert "model.train_step.capture=none" in str(err.value) and "\n" not in str(err.value)
    model.check_trainer("32-true", world_size=1)  # one process: capture is fine
    AE(arch=ArchConfig(depth=28, width=2, latent_dim=4)).check_trainer("32-true", world_size=2)  # eager DDP
