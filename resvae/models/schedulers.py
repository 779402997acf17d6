"""Learning-rate schedules that torch does not ship: Keras 2.1's ReduceLROnPlateau (the 2018 study's).

Keras 2.1 (the study ran in February 2018) and torch count patience alike up to the first
reduction (after patience + 1 epochs without improvement) but not after it: Keras resets its
counter to 0 and then counts the reducing epoch itself (`wait = 0; ... wait += 1`), so each later
reduction comes after `patience` epochs, where torch waits patience + 1 again. With the study's
patience 25 the halvings fall at 26, 51, 76, ... epochs after the best, not 26, 52, 78.
Keras also reduces only while the rate is above `min_lr`, as torch does (up to its `eps`).
"""

from __future__ import annotations

from typing import Any

from torch.optim.lr_scheduler import ReduceLROnPlateau


class KerasReduceLROnPlateau(ReduceLROnPlateau):
    """torch's ReduceLROnPlateau with Keras 2.1's count after a reduction (see the module)."""

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        before = [group["lr"] for group in self.optimizer.param_groups]
        if epoch is None:
            super().step(metrics)
        else:
            super().step(metrics, epoch)
        if self.cooldown_counter == 0 and [g["lr"] for g in self.optimizer.param_groups] != before:
            self.num_bad_epochs = 1  # Keras: wait = 0, then wait += 1 in the same epoch
