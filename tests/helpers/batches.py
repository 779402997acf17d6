"""A run's batches with one non-finite batch, and a list of batches as a dataloader."""

from __future__ import annotations

import torch

BAD = 2  # the index of the non-finite batch among the batches of a run


def batches() -> list[torch.Tensor]:
    """Five batches of 4 images in [0, 1] (float); batch BAD is NaN, so its loss and gradients are."""
    g = torch.Generator().manual_seed(1)
    out = [torch.rand(4, 3, 8, 8, generator=g) for _ in range(5)]
    out[BAD] = torch.full_like(out[BAD], float("nan"))
    return out


class Batches:
    """A list of batches as a dataloader (iterable, with a length) for Trainer.fit."""

    def __init__(self, items: list[torch.Tensor]) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
