"""LightningDataModules whose images live on the training device as one uint8 tensor each.

`ImageDataModule` holds train / val / test uint8 arrays [N, C, H, W], moves them to the
trainer's device in `setup`, and serves `DeviceBatches` (random order, on the device). Random
horizontal flips of training images (`flip`) are part of the model's training step, so that a
captured step holds them too (resvae.models.step.TrainStep). Subclasses only say where the
arrays come from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import numpy as np
import torch

from resvae.data.archive import DatasetError, find_batches_folder, read_cifar10
from resvae.data.device_batches import DeviceBatches

VAL_SOURCES = ("train", "test")


class ImageDataModule(L.LightningDataModule):
    def __init__(
        self,
        batch_size: int = 128,
        val_batch_size: int | None = None,
        val_source: str = "train",
        val_size: int | float = 0.1,
        flip: bool = True,
        seed: int = 0,
        train_size: int | None = None,
        test_size: int | None = None,
    ) -> None:
        """train_size / test_size: use only the first this many images of each split (None: all)."""
        super().__init__()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if val_source not in VAL_SOURCES:
            raise ValueError(f"data.val_source must be one of {', '.join(VAL_SOURCES)}, got {val_source!r}")
        if val_size <= 0:
            raise ValueError(f"data.val_size must be > 0 (a count or a fraction), got {val_size}")
        for name, size in (("train_size", train_size), ("test_size", test_size)):
            if size is not None and size < 1:
                raise ValueError(f"data.{name} must be >= 1 or null (all images), got {size}")
        self.train_size, self.test_size = train_size, test_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_source, self.val_size = val_source, val_size
        self.flip, self.seed = flip, seed
        self.splits: dict[str, torch.Tensor] = {}
        self._arrays: dict[str, np.ndarray] | None = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ subclass interface
    def load_arrays(self) -> dict[str, np.ndarray]:
        """{"train": uint8 [N, C, H, W], "test": uint8 [M, C, H, W]}."""
        raise NotImplementedError

    # ------------------------------------------------------------------ Lightning hooks
    def _split(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        train, test = arrays["train"][: self.train_size], arrays["test"][: self.test_size]
        if self.val_source == "test":
            return {"train": train, "val": test, "test": test}
        n_val = int(round(self.val_size * len(train))) if self.val_size < 1 else int(self.val_size)
        if not 0 < n_val < len(train):
            raise ValueError(
                f"data.val_size={self.val_size} leaves no training or no validation images "
                f"out of {len(train)}"
            )
        order = np.random.default_rng(self.seed).permutation(len(train))
        return {"train": train[order[n_val:]], "val": train[order[:n_val]], "test": test}

    def arrays(self) -> dict[str, np.ndarray]:
        """The train / val / test splits as uint8 arrays, read once (setup moves them to the device)."""
        if self._arrays is None:
            self._arrays = {k: np.ascontiguousarray(v) for k, v in self._split(self.load_arrays()).items()}
        return self._arrays

    @property
    def fingerprint(self) -> str:
        """A hash of the images of every split: what a run was trained on, wherever it lies."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for name, array in sorted(self.arrays().items()):
                digest.update(f"{name}{array.shape}".encode())
                digest.update(array.data)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        for name, array in self.arrays().items():
            self.splits[name] = torch.from_numpy(array).to(device)
        self._arrays = None  # the device holds them now

    def _batches(self, name: str, train: bool) -> DeviceBatches:
        trainer = self.trainer
        return DeviceBatches(
            self.splits[name],
            self.batch_size if train else self.val_batch_size,
            shuffle=train,
            flip=False,  # the training step flips (see the module docstring)
            drop_last=train and len(self.splits[name]) >= self.batch_size,
            seed=self.seed,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )

    def train_dataloader(self) -> DeviceBatches:
        return self._batches("train", train=True)

    def val_dataloader(self) -> DeviceBatches:
        return self._batches("val", train=False)

    def test_dataloader(self) -> DeviceBatches:
        return self._batches("test", train=False)

    def val_images(self, n: int) -> torch.Tensor:
        """The first `n` validation images, a fixed batch for reconstruction grids."""
        if not self.splits:
            self.setup()
        return self.splits["val"][:n]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.splits["train"].shape[1:]) if self.splits else (3, 32, 32)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 from `root` (canonical `cifar-10-batches-py`), downloaded when missing if allowed."""

    def __init__(self, root: str = "data", download: bool = True, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.root = Path(root).expanduser()
        self.download = download

    def prepare_data(self) -> None:
        if find_batches_folder(self.root) is not None:
            return
        missing = (
            f"CIFAR-10 not found: no cifar-10-batches-py folder (data_batch_1..5, test_batch) "
            f"under {self.root.resolve()}."
        )
        fix = (
            " Download and extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there, "
            "or point data.root at a folder that holds it (e.g. data.root=/path/to/cifar10), "
            "or try the pipeline on generated images with data=synthetic."
        )
        if not self.download:
            raise DatasetError(missing + fix)
        from torchvision.datasets import CIFAR10  # md5-checked download and extraction

        try:
            CIFAR10(str(self.root), train=True, download=True)
        except Exception as err:  # offline, proxy, disk: all end the same way for the user
            raise DatasetError(
                f"{missing} Downloading it failed ({type(err).__name__}: {err}).{fix}"
            ) from err

    def load_arrays(self) -> dict[str, np.ndarray]:
        folder = find_batches_folder(self.root)
        if folder is None:
            self.prepare_data()
            folder = find_batches_folder(self.root)
            assert folder is not None
        return read_cifar10(folder)


def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """`n` uint8 images [n, 3, size, size]: smooth colour fields with a bright square each.

    Structured enough that a model can learn them quickly, random enough not to be memorised
    at once; deterministic in `seed`.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    side = max(2, size // 4)
    corners = torch.randint(0, size - side + 1, (n, 2), generator=g)
    colours = torch.rand(n, 3, generator=g)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y : y + side, x : x + side] = colours[i].view(3, 1, 1)
    return (images * 255).round().to(torch.uint8).numpy()


class SyntheticDataModule(ImageDataModule):
    """Generated images, for tests and smoke runs on machines without CIFAR-10."""

    def __init__(
        self, train_size: int = 512, test_size: int = 128, image_size: int = 32, **kwargs: object
    ) -> None:
        super().__init__(train_size=train_size, test_size=test_size, **kwargs)  # type: ignore[arg-type]
        if train_size < 2 or image_size < 8:
            raise ValueError("data.train_size >= 2 and data.image_size >= 8 required")
        self.image_size = image_size

    def load_arrays(self) -> dict[str, np.ndarray]:
        return {
            "train": synthetic_images(self.train_size, self.image_size, self.seed),
            "test": synthetic_images(self.test_size, self.image_size, self.seed + 1),
        }


__all__ = ["CIFAR10DataModule", "DatasetError", "ImageDataModule", "SyntheticDataModule"]
