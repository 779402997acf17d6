"""Read the canonical CIFAR-10 python layout (`cifar-10-batches-py`) into uint8 arrays.

Accepts any number of images per batch file (a subset with fewer images per batch included) and
checks what it reads: a missing, truncated or malformed file is a DatasetError that names the
file and the fix, never a traceback from deep inside pickle or numpy.

The batches are pickles, and a plain `pickle.load` runs whatever a file asks for. They are read
with an unpickler that builds only what the official files hold (dicts, lists, str/bytes, ints
and numpy arrays); a file that asks for anything else is refused before anything of it runs.
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


class UnsafeBatchError(DatasetError):
    """A batch file asks the unpickler for something the official files never hold."""


# What numpy arrays pickle to (numpy 1.x and 2.x module names), and the bytes of a file written
# by Python 3 with protocol 2 (`_codecs.encode`). Nothing else is ever built.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5's out-of-band-capable arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeBatchError(f"{module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid: object) -> object:
        raise UnsafeBatchError(f"persistent id {pid!r}")


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
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except UnsafeBatchError as err:
        raise UnsafeBatchError(
            f"refused to read {path}: it asks to build {err}, which a CIFAR-10 batch never holds and "
            "which could run code; nothing of it was run. Replace it with the file from "
            "cifar-10-python.tar.gz"
        ) from None
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
