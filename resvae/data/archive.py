"""Read the canonical CIFAR-10 python layout (`cifar-10-batches-py`) into uint8 arrays.

Accepts any number of images per batch file (the shared 932-image subset included) and checks
what it reads: a missing, truncated or malformed file is a DatasetError that names the file
and the fix, never a traceback from deep inside pickle or numpy.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGE_SHAPE = (3, 32, 32)


class DatasetError(RuntimeError):
    """The dataset is missing or unreadable."""


def find_batches_folder(root: str | Path) -> Path | None:
    """`root/cifar-10-batches-py`, or `root` itself if it holds the batch files."""
    root = Path(root).expanduser()
    for folder in (root / FOLDER, root):
        if (folder / TEST_FILE).is_file() or (folder / TRAIN_FILES[0]).is_file():
            return folder
    return None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images uint8 [N, 3, 32, 32], labels int64 [N])."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # a corrupt pickle can raise almost anything: EOF, Overflow, Memory...
        raise DatasetError(
            f"{path} is truncated or not a CIFAR-10 batch ({type(err).__name__}: {err}); "
            "replace it with the file from cifar-10-python.tar.gz"
        ) from err
    if isinstance(entry, dict):  # files re-saved after loading with encoding="bytes" have bytes keys
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if not isinstance(entry, dict) or "data" not in entry:
        raise DatasetError(f"{path} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry.get("labels", entry.get("fine_labels", [])), dtype=np.int64)
    flat = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != flat:
        raise DatasetError(
            f"{path}: 'data' must be uint8 of shape [N, {flat}], got {data.dtype} {list(data.shape)}"
        )
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def read_cifar10(folder: Path) -> dict[str, np.ndarray]:
    """All batches present in `folder` -> {"train": [N,3,32,32], "test": [M,3,32,32]} (uint8).

    Training batches 1-5 are read where present (a subset may ship fewer); the test batch is
    required.
    """
    train_paths = [folder / name for name in TRAIN_FILES if (folder / name).is_file()]
    if not train_paths:
        raise DatasetError(f"{folder} has no data_batch_* files")
    if not (folder / TEST_FILE).is_file():
        raise DatasetError(f"{folder} has no {TEST_FILE}")
    train = np.concatenate([read_batch(p)[0] for p in train_paths])
    test = read_batch(folder / TEST_FILE)[0]
    return {"train": train, "test": test}


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write uint8 images [N, 3, 32, 32] as a canonical batch file (for tests and tools)."""
    labels = np.zeros(len(images), dtype=np.int64) if labels is None else labels
    entry = {
        "batch_label": path.name,
        "labels": [int(v) for v in labels],
        "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
        "filenames": [f"{i}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
