"""Image data held on the training device: CIFAR-10 and a synthetic source."""

from resvae.data.archive import DatasetError, read_cifar10, write_batch
from resvae.data.device_batches import DeviceBatches
from resvae.data.modules import CIFAR10DataModule, ImageDataModule, SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "DatasetError",
    "DeviceBatches",
    "ImageDataModule",
    "SyntheticDataModule",
    "read_cifar10",
    "write_batch",
]
