"""Tests for resvae.data: the CIFAR-10 archive reader, DeviceBatches and the datamodules.

Every archive is built here in tmp_path (canonical pickle format); nothing reads the shared data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import random
import re
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from resvae.data import (
    CIFAR10DataModule,
    DatasetError,
    DeviceBatches,
    SyntheticDataModule,
    read_cifar10,
    write_batch,
)
from resvae.data.archive import find_batches_folder, read_batch
from resvae.data.modules import synthetic_images
from tests.helpers.models import cpu_trainer

TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]


# --------------------------------------------------------------------------- helpers
def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def make_archive(
    root: Path, per_batch: int = 7, n_train_batches: int = 5, test_size: int | None = None, seed: int = 0
) -> tuple[Path, list[np.ndarray], np.ndarray]:
    """root/cifar-10-batches-py with data_batch_1..n and test_batch; returns (folder, batches, test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for i in range(n_train_batches):
        images = random_images(per_batch, seed * 100 + i)
        labels = np.arange(per_batch) % 10
        write_batch(folder / TRAIN_NAMES[i], images, labels)
        batches.append(images)
    test = random_images(per_batch if test_size is None else test_size, seed * 100 + 99)
    write_batch(folder / "test_batch", test)
    return folder, batches, test


def dump_entry(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def canonical_entry(images: np.ndarray, labels=None) -> dict:
    n = len(images)
    return {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(v) for v in (np.zeros(n) if labels is None else labels)],
        "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(n, -1),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


class Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python-2 `str` (BINSTRING), like the official CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(entry: dict) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(entry)
    # the official files were written by numpy 1.x on Python 2
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def row_hashes(images) -> list[str]:
    arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in arr]


def id_images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, 8, 8]: channels 0/1 are flat planes encoding the index (flip-invariant),
    channel 2 is random and left-right asymmetric."""
    assert n < 256 * 256
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, 8, 8, dtype=torch.uint8)
    idx = torch.arange(n)
    images[:, 0] = (idx % 256).to(torch.uint8).view(-1, 1, 1)
    images[:, 1] = (idx // 256).to(torch.uint8).view(-1, 1, 1)
    images[:, 2] = torch.randint(0, 256, (n, 8, 8), generator=g, dtype=torch.uint8)
    assert not torch.equal(images[:, 2], images[:, 2].flip(-1))
    return images


def ids_of(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0, 0, 0].long() + 256 * batch[:, 1, 0, 0].long()).tolist()


def collect(loader) -> list[torch.Tensor]:
    return [b.clone() for b in loader]


# --------------------------------------------------------------------------- 1. read_cifar10
def test_read_cifar10_shapes_content_and_order(tmp_path):
    folder, batches, test = make_archive(tmp_path, per_batch=7)
    arrays = read_cifar10(folder)
    assert set(arrays) == {"train", "test"}
    assert arrays["train"].shape == (35, 3, 32, 32) and arrays["train"].dtype == np.uint8
    assert arrays["test"].shape == (7, 3, 32, 32) and arrays["test"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["train"], np.concatenate(batches))
    np.testing.assert_array_equal(arrays["test"], test)


def test_read_cifar10_subset_layout_932_per_batch_four_batches(tmp_path):
    folder, batches, test = make_archive(tmp_path, per_batch=932, n_train_batches=4)
    arrays = read_cifar10(folder)
    assert arrays["train"].shape == (4 * 932, 3, 32, 32)
    assert arrays["test"].shape == (932, 3, 32, 32)
    np.testing.assert_array_equal(arrays["train"], np.concatenate(batches))
    np.testing.assert_array_equal(arrays["test"], test)


def test_pixel_order_is_1024_red_then_green_then_blue_row_major(tmp_path):
    # hand-written canonical vector: R plane, G plane, B plane, each 32x32 row-major
    flat = np.zeros((2, 3072), dtype=np.uint8)
    flat[0, 0:1024] = 10  # red plane
    flat[0, 1024:2048] = 20  # green plane
    flat[0, 2048:3072] = 30  # blue plane
    flat[1] = np.arange(3072) % 251
    flat[1, 5] = 255  # red, row 0, column 5
    flat[1, 32 * 3 + 7] = 254  # red, row 3, column 7
    flat[1, 2048 + 32 * 31 + 30] = 253  # blue, row 31, column 30
    entry = {"batch_label": "x", "labels": [0, 1], "data": flat, "filenames": ["a", "b"]}
    dump_entry(tmp_path / "data_batch_1", entry)
    dump_entry(tmp_path / "test_batch", entry)
    images = read_cifar10(tmp_path)["train"]
    assert (images[0, 0] == 10).all() and (images[0, 1] == 20).all() and (images[0, 2] == 30).all()
    assert images[1, 0, 0, 5] == 255
    assert images[1, 0, 3, 7] == 254
    assert images[1, 2, 31, 30] == 253
    np.testing.assert_array_equal(images[1].reshape(-1), flat[1])


def test_write_batch_is_canonical_pickle(tmp_path):
    images = random_images(3, 1)
    write_batch(tmp_path / "data_batch_1", images, np.array([3, 1, 4]))
    with open(tmp_path / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (3, 3072)
    assert entry["labels"] == [3, 1, 4]
    assert len(entry["filenames"]) == 3 and "batch_label" in entry
    np.testing.assert_array_equal(entry["data"].reshape(3, 3, 32, 32), images)


def test_read_batch_python2_str_keys_like_official_files(tmp_path):
    images = random_images(5, 2)
    raw = py2_pickle(canonical_entry(images, labels=[1, 2, 3, 4, 5]))
    # sanity: this is what the official files look like to Python 3
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    assert b"data" in pickle.loads(raw, encoding="bytes")
    (tmp_path / "data_batch_1").write_bytes(raw)
    got, labels = read_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [1, 2, 3, 4, 5]


def test_read_batch_accepts_bytes_keys(tmp_path):
    images = random_images(4, 3)
    entry = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [0, 1, 2, 3],
        b"data": images.reshape(4, -1),
        b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
    }
    dump_entry(tmp_path / "data_batch_1", entry)
    got, labels = read_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- 2. find_batches_folder
def test_find_batches_folder(tmp_path):
    folder, _, _ = make_archive(tmp_path / "root")
    assert find_batches_folder(tmp_path / "root") == folder
    assert find_batches_folder(folder) == folder
    assert find_batches_folder(str(folder)) == folder
    (tmp_path / "empty").mkdir()
    assert find_batches_folder(tmp_path / "empty") is None
    assert find_batches_folder(tmp_path / "does-not-exist") is None
    (tmp_path / "other" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "other" / "cifar-10-batches-py" / "readme.txt").write_text("nothing here")
    assert find_batches_folder(tmp_path / "other") is None


# --------------------------------------------------------------------------- 3. bad input
def test_truncated_pickle(tmp_path):
    folder, _, _ = make_archive(tmp_path)
    path = folder / "data_batch_3"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated") as info:
        read_cifar10(folder)
    assert "data_batch_3" in str(info.value)
    assert "cifar-10-python.tar.gz" in str(info.value)


def test_random_bytes_not_a_pickle(tmp_path):
    folder, _, _ = make_archive(tmp_path)
    (folder / "test_batch").write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(DatasetError, match="not a CIFAR-10 batch") as info:
        read_cifar10(folder)
    assert "test_batch" in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        # protocol-4 BINBYTES8 whose 8-byte length field is garbage -> OverflowError
        pytest.param(b"\x80\x04\x8e" + b"\xff" * 8 + b"garbage", id="huge-length-field"),
        # GLOBAL opcode naming a module that does not exist -> ModuleNotFoundError
        pytest.param(b"cnosuchmodule_xyz\nthing\n.", id="unknown-module"),
    ],
)
def test_corrupt_bytes_always_give_dataset_error(tmp_path, raw):
    (tmp_path / "data_batch_1").write_bytes(raw)
    with pytest.raises(DatasetError, match="data_batch_1"):
        read_batch(tmp_path / "data_batch_1")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (np.zeros((4, 100), dtype=np.uint8), r"\[N, 3072\].*\[4, 100\]"),
        (np.zeros((4, 3072), dtype=np.float32), "float32"),
        (np.zeros((4, 3, 32, 32), dtype=np.uint8), r"\[4, 3, 32, 32\]"),
    ],
    ids=["shape-100", "float32", "4d"],
)
def test_malformed_data(tmp_path, data, what):
    folder, _, _ = make_archive(tmp_path)
    entry = {"batch_label": "x", "labels": [0] * 4, "data": data, "filenames": ["f"] * 4}
    dump_entry(folder / "data_batch_2", entry)
    with pytest.raises(DatasetError, match="'data' must be uint8") as info:
        read_cifar10(folder)
    assert "data_batch_2" in str(info.value)
    assert re.search(what, str(info.value)), str(info.value)


def test_labels_count_mismatch(tmp_path):
    folder, _, _ = make_archive(tmp_path)
    entry = canonical_entry(random_images(6, 5))
    entry["labels"] = entry["labels"][:4]
    dump_entry(folder / "data_batch_5", entry)
    with pytest.raises(DatasetError, match="6 images but 4 labels") as info:
        read_cifar10(folder)
    assert "data_batch_5" in str(info.value)


def test_not_a_dict(tmp_path):
    folder, _, _ = make_archive(tmp_path)
    dump_entry(folder / "data_batch_1", [1, 2, 3])
    with pytest.raises(DatasetError, match="data_batch_1.*not a CIFAR-10 batch"):
        read_cifar10(folder)


def test_missing_test_batch(tmp_path):
    folder, _, _ = make_archive(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="no test_batch") as info:
        read_cifar10(folder)
    assert str(folder) in str(info.value)


def test_no_data_batch_files(tmp_path):
    folder, _, _ = make_archive(tmp_path)
    for name in TRAIN_NAMES:
        (folder / name).unlink()
    with pytest.raises(DatasetError, match="no data_batch_"):
        read_cifar10(folder)


def test_datamodule_missing_dataset_no_download(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path), download=False)
    with pytest.raises(DatasetError) as info:
        dm.setup()
    msg = str(info.value)
    assert "cifar-10-batches-py" in msg
    assert "data.root" in msg
    assert str(tmp_path.resolve()) in msg


def test_datamodule_download_failure(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True)
    with pytest.raises(DatasetError) as info:
        dm.setup()
    msg = str(info.value)
    assert calls, "the download was not attempted"
    assert "Downloading it failed" in msg and "OSError" in msg and "Name or service not known" in msg
    assert "data.root" in msg and "cifar-10-batches-py" in msg
    assert isinstance(info.value.__cause__, OSError)


def test_datamodule_does_not_download_when_present(tmp_path, monkeypatch):
    import torchvision.datasets

    def boom(*args, **kwargs):
        raise AssertionError("must not download when the batches are present")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", boom)
    make_archive(tmp_path, per_batch=932, n_train_batches=4)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True, val_size=0.1)
    dm.prepare_data()
    dm.setup()
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 4 * 932


# --------------------------------------------------------------------------- 4. splits
@pytest.fixture
def archive(tmp_path):
    folder, batches, test = make_archive(tmp_path, per_batch=8)
    return tmp_path, np.concatenate(batches), test


def cifar_dm(root, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(root=str(root), download=False, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize(("val_size", "n_val"), [(0.25, 10), (0.1, 4), (7, 7), (1, 1)])
def test_cifar_split_sizes(archive, val_size, n_val):
    root, train, test = archive
    dm = cifar_dm(root, val_size=val_size, seed=3)
    assert len(dm.splits["val"]) == n_val
    assert len(dm.splits["train"]) == len(train) - n_val
    assert torch.equal(dm.splits["test"], torch.from_numpy(test))
    assert dm.image_shape == (3, 32, 32)
    for split in dm.splits.values():
        assert split.dtype == torch.uint8


def test_cifar_split_disjoint_and_complete(archive):
    root, train, _ = archive
    dm = cifar_dm(root, val_size=0.25, seed=1)
    train_h, val_h = row_hashes(dm.splits["train"]), row_hashes(dm.splits["val"])
    assert not set(train_h) & set(val_h)
    assert sorted(train_h + val_h) == sorted(row_hashes(train))


def test_cifar_split_deterministic_in_seed(archive):
    root, _, _ = archive
    a = cifar_dm(root, val_size=0.25, seed=5)
    b = cifar_dm(root, val_size=0.25, seed=5)
    c = cifar_dm(root, val_size=0.25, seed=6)
    assert torch.equal(a.splits["val"], b.splits["val"])
    assert torch.equal(a.splits["train"], b.splits["train"])
    assert set(row_hashes(a.splits["val"])) != set(row_hashes(c.splits["val"]))


def test_cifar_val_source_test(archive):
    root, train, test = archive
    dm = cifar_dm(root, val_source="test")
    assert torch.equal(dm.splits["train"], torch.from_numpy(train))
    assert torch.equal(dm.splits["val"], torch.from_numpy(test))
    assert torch.equal(dm.splits["test"], torch.from_numpy(test))


def test_synthetic_splits():
    kw = dict(train_size=40, test_size=6, image_size=8, val_size=0.25)
    a, b, c = (SyntheticDataModule(seed=s, **kw) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert len(a.splits["val"]) == 10 and len(a.splits["train"]) == 30 and len(a.splits["test"]) == 6
    assert a.image_shape == (3, 8, 8)
    assert torch.equal(a.splits["val"], b.splits["val"]) and torch.equal(a.splits["train"], b.splits["train"])
    assert not torch.equal(a.splits["val"], c.splits["val"])
    full = synthetic_images(40, 8, 0)
    train_h, val_h = row_hashes(a.splits["train"]), row_hashes(a.splits["val"])
    assert not set(train_h) & set(val_h)
    assert sorted(train_h + val_h) == sorted(row_hashes(full))

    t = SyntheticDataModule(val_source="test", **kw)
    t.setup()
    assert torch.equal(t.splits["val"], t.splits["test"])
    assert len(t.splits["train"]) == 40


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(val_batch_size=0), "batch_size must be >= 1"),
        (dict(val_size=0), "val_size must be > 0"),
        (dict(val_size=-0.1), "val_size must be > 0"),
        (dict(val_source="x"), "val_source must be one of train, test"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CIFAR10DataModule(root=str(tmp_path), download=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        SyntheticDataModule(**kwargs)


@pytest.mark.parametrize("val_size", [40, 41, 1000, 0.001, 0.999])
def test_val_size_leaving_nothing(archive, val_size):
    root, _, _ = archive  # 40 training images
    dm = CIFAR10DataModule(root=str(root), download=False, val_size=val_size)
    with pytest.raises(ValueError, match=r"val_size=.*leaves no training or no validation images out of 40"):
        dm.setup()


def test_synthetic_invalid_sizes():
    with pytest.raises(ValueError, match="train_size"):
        SyntheticDataModule(train_size=1)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticDataModule(image_size=4)
    with pytest.raises(ValueError, match="data.test_size"):
        SyntheticDataModule(test_size=0)


@pytest.mark.parametrize("val_source", ["train", "test"])
def test_cifar_train_and_test_size_cap_each_split(archive, val_source):
    """data.train_size / data.test_size keep the first N images of each split of the archive,
    before the validation split is drawn from the (capped) training images."""
    root, train, test = archive  # 40 training and 8 test images
    dm = cifar_dm(root, train_size=20, test_size=5, val_size=4, seed=2, val_source=val_source)
    assert torch.equal(dm.splits["test"], torch.from_numpy(test[:5]))
    if val_source == "test":
        assert torch.equal(dm.splits["train"], torch.from_numpy(train[:20]))
        assert torch.equal(dm.splits["val"], torch.from_numpy(test[:5]))
    else:
        assert len(dm.splits["train"]) == 16 and len(dm.splits["val"]) == 4
        train_h, val_h = row_hashes(dm.splits["train"]), row_hashes(dm.splits["val"])
        assert not set(train_h) & set(val_h)
        assert sorted(train_h + val_h) == sorted(row_hashes(train[:20]))  # only the first 20
    # a fraction of the validation split is a fraction of the capped training images
    assert len(cifar_dm(root, train_size=20, val_size=0.25).splits["val"]) == 5
    # a cap above the split's size, or none, keeps every image
    for cap in (None, 1000):
        dm = cifar_dm(root, train_size=cap, test_size=cap, val_source="test")
        assert torch.equal(dm.splits["train"], torch.from_numpy(train))
        assert torch.equal(dm.splits["test"], torch.from_numpy(test))


@pytest.mark.parametrize("name", ["train_size", "test_size"])
@pytest.mark.parametrize("size", [0, -5])
def test_cifar_size_caps_below_one_are_rejected(tmp_path, name, size):
    with pytest.raises(ValueError, match=f"data.{name} must be >= 1") as info:
        CIFAR10DataModule(root=str(tmp_path), download=False, **{name: size})
    assert f"got {size}" in str(info.value)


# --------------------------------------------------------------------------- 5. DeviceBatches
def test_len_with_and_without_drop_last():
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    assert len(DeviceBatches(images, 3)) == 4
    assert len(DeviceBatches(images, 3, drop_last=True)) == 3
    assert len(DeviceBatches(images, 5, drop_last=True)) == 2
    assert len(DeviceBatches(images, 5)) == 2
    assert len(DeviceBatches(images, 20)) == 1
    assert len(DeviceBatches(images, 20, drop_last=True)) == 0
    assert [len(b) for b in DeviceBatches(images, 3)] == [3, 3, 3, 1]
    assert [len(b) for b in DeviceBatches(images, 3, drop_last=True)] == [3, 3, 3]


def test_no_shuffle_yields_in_order():
    images = id_images(23)
    batches = collect(DeviceBatches(images, 5))
    assert len(batches) == 5
    assert torch.equal(torch.cat(batches), images)


def test_shuffle_epoch_is_permutation_and_deterministic():
    images = id_images(64)
    epoch = {"n": 0}
    loader = DeviceBatches(images, 8, shuffle=True, drop_last=True, seed=7, epoch=lambda: epoch["n"])
    orders = {}
    for e in (0, 1, 2, 0, 1):
        epoch["n"] = e
        batches = collect(loader)
        assert len(batches) == 8 and all(len(b) == 8 for b in batches)
        ids = [i for b in batches for i in ids_of(b)]
        assert sorted(ids) == list(range(64))  # every image exactly once
        assert ids != list(range(64))  # actually shuffled
        for b in batches:  # content intact (no flip requested)
            assert torch.equal(b, images[ids_of(b)])
        if e in orders:
            assert ids == orders[e], "same epoch number must give the same order"
        orders[e] = ids
    assert orders[0] != orders[1] != orders[2] != orders[0]
    other_seed = DeviceBatches(images, 8, shuffle=True, drop_last=True, seed=8)
    assert [i for b in other_seed for i in ids_of(b)] != orders[0]


def test_flip_flips_about_half():
    images = id_images(512)
    loader = DeviceBatches(images, 64, shuffle=True, flip=True, seed=1)
    flipped = 0
    seen = []
    for batch in loader:
        for img, i in zip(batch, ids_of(batch)):
            seen.append(i)
            if torch.equal(img, images[i]):
                continue
            assert torch.equal(img, images[i].flip(-1)), "image is neither the original nor its mirror"
            flipped += 1
    assert sorted(seen) == list(range(512))
    assert 0.4 < flipped / 512 < 0.6
    unflipped = DeviceBatches(images, 64, shuffle=True, flip=False, seed=1)
    for batch in unflipped:
        assert torch.equal(batch, images[ids_of(batch)])


def test_flip_deterministic_per_epoch():
    images = id_images(64)
    a = collect(DeviceBatches(images, 16, shuffle=True, flip=True, seed=2, epoch=lambda: 4))
    b = collect(DeviceBatches(images, 16, shuffle=True, flip=True, seed=2, epoch=lambda: 4))
    c = collect(DeviceBatches(images, 16, shuffle=True, flip=True, seed=2, epoch=lambda: 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("n", [20, 21])
@pytest.mark.parametrize("shuffle", [False, True])
def test_world_size_two_disjoint_equal_shares(n, shuffle):
    images = id_images(n)
    shares = []
    for rank in (0, 1):
        loader = DeviceBatches(images, 4, shuffle=shuffle, seed=3, epoch=lambda: 2, rank=rank, world_size=2)
        ids = [i for b in loader for i in ids_of(b)]
        assert len(loader) == 3  # ceil(10 / 4)
        shares.append(ids)
    assert len(shares[0]) == len(shares[1]) == n // 2
    assert not set(shares[0]) & set(shares[1])
    assert len(set(shares[0]) | set(shares[1])) == 2 * (n // 2)


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_resume_with_load_state_dict(k):
    images = id_images(50)
    kw = dict(shuffle=True, flip=True, seed=11, epoch=lambda: 3)
    full = collect(DeviceBatches(images, 7, **kw))  # 8 batches, last one of 1 image
    assert len(full) == 8

    # direct: a fresh loader told to start at batch k
    resumed = DeviceBatches(images, 7, **kw)
    resumed.load_state_dict({"next_batch": k})
    rest = collect(resumed)
    assert len(rest) == len(full) - k
    assert all(torch.equal(x, y) for x, y in zip(rest, full[k:]))

    # round trip: interrupt after k batches, save, restore into a new loader
    if k > 0:
        first = DeviceBatches(images, 7, **kw)
        it = iter(first)
        head = [next(it).clone() for _ in range(k)]
        state = first.state_dict()
        assert state == {"epoch": 3, "next_batch": k}
        assert all(torch.equal(x, y) for x, y in zip(head, full[:k]))
        second = DeviceBatches(images, 7, **kw)
        second.load_state_dict(state)
        assert all(torch.equal(x, y) for x, y in zip(collect(second), full[k:]))


def test_resume_applies_once_and_state_resets_after_epoch():
    images = id_images(30)
    loader = DeviceBatches(images, 10, shuffle=True, seed=0)
    full = collect(loader)
    assert loader.state_dict() == {"epoch": 0, "next_batch": 0}
    loader.load_state_dict({"next_batch": 2})
    assert len(collect(loader)) == 1
    again = collect(loader)  # the following epoch starts at its beginning
    assert all(torch.equal(x, y) for x, y in zip(again, full)) and len(again) == 3


def test_state_saved_on_last_batch_resumes_into_full_next_epoch():
    images = id_images(30)
    epoch = {"n": 0}
    loader = DeviceBatches(images, 10, shuffle=True, seed=0, epoch=lambda: epoch["n"])
    state = None
    for _ in loader:
        state = loader.state_dict()  # what a checkpoint in on_train_batch_end saves
    assert state == {"epoch": 0, "next_batch": 3}
    epoch["n"] = 1
    restored = DeviceBatches(images, 10, shuffle=True, seed=0, epoch=lambda: epoch["n"])
    restored.load_state_dict(state)
    assert len(collect(restored)) == 3


def test_invalid_device_batches():
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(torch.zeros(4, 3, 8, 8), 2)
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(torch.zeros(4, 3, 8, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        DeviceBatches(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), 0)


# --------------------------------------------------------------------------- 6. synthetic_images
def test_synthetic_images():
    a = synthetic_images(16, 32, seed=0)
    b = synthetic_images(16, 32, seed=0)
    c = synthetic_images(16, 32, seed=1)
    assert a.dtype == np.uint8 and a.shape == (16, 3, 32, 32)
    assert synthetic_images(3, 8, seed=0).shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 10
    assert all(len(np.unique(img)) > 10 for img in a)  # no image is flat
    assert len(set(row_hashes(a))) == 16


# --------------------------------------------------------------------------- 7. dataloaders
def test_dataloaders_without_trainer(archive):
    root, train, _ = archive
    dm = CIFAR10DataModule(root=str(root), download=False, batch_size=4, val_batch_size=3, val_size=10)
    assert dm.trainer is None
    dm.setup()
    loader = dm.train_dataloader()
    batches = collect(loader)
    assert len(batches) == len(loader) == 30 // 4  # drop_last for training
    for batch in batches:
        assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 32, 32)
        assert batch.device.type == "cpu"
    # training batches are (possibly mirrored) training images
    train_h = set(row_hashes(dm.splits["train"])) | set(row_hashes(dm.splits["train"].flip(-1)))
    assert set(row_hashes(torch.cat(batches))) <= train_h

    val = collect(dm.val_dataloader())
    assert [len(b) for b in val] == [3, 3, 3, 1]
    assert torch.equal(torch.cat(val), dm.splits["val"])  # in order, not flipped
    assert torch.equal(torch.cat(collect(dm.test_dataloader())), dm.splits["test"])

    assert torch.equal(dm.val_images(5), dm.splits["val"][:5])
    assert torch.equal(dm.val_images(5), torch.cat(val)[:5])


def test_val_images_sets_up_on_demand():
    dm = SyntheticDataModule(train_size=20, test_size=4, image_size=8, val_size=5)
    images = dm.val_images(3)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert torch.equal(images, dm.splits["val"][:3])
    assert dm.val_images(100).shape[0] == 5


def test_train_loader_small_dataset_keeps_partial_batch():
    dm = SyntheticDataModule(train_size=8, test_size=2, image_size=8, val_size=2, batch_size=16)
    dm.setup()
    batches = collect(dm.train_dataloader())
    assert [len(b) for b in batches] == [6]


# --------------------------------------------------------------------------- resume through Lightning
class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch_idx, hashlib.sha1(batch.numpy().tobytes()).hexdigest()))
        return (self.w * batch.float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class _Interrupt(Exception):
    pass


class _SaveAndStop(L.Callback):
    def __init__(self, path: Path, epoch: int, batch: int):
        self.path, self.epoch, self.batch = path, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer.save_checkpoint(self.path)
            raise _Interrupt


def _fit(root: Path, callbacks=(), ckpt_path=None) -> list[tuple[int, int, str]]:
    dm = SyntheticDataModule(train_size=40, test_size=4, image_size=8, val_size=8, batch_size=8, seed=4)
    model = _Recorder()
    trainer = cpu_trainer(
        max_epochs=2,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=list(callbacks),
    )
    with contextlib.suppress(_Interrupt):
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def _resume_case(tmp_path, epoch, batch):
    full = _fit(tmp_path)
    assert [(e, i) for e, i, _ in full] == [(e, i) for e in range(2) for i in range(4)]
    ckpt = tmp_path / "interrupted.ckpt"
    head = _fit(tmp_path, callbacks=[_SaveAndStop(ckpt, epoch, batch)])
    tail = _fit(tmp_path, ckpt_path=str(ckpt))
    return full, head, tail


@pytest.mark.filterwarnings("ignore:.*no `validation_step`")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_lightning_resume_mid_epoch_continues_at_next_batch(tmp_path):
    full, head, tail = _resume_case(tmp_path, epoch=1, batch=1)
    assert [h for _, _, h in head + tail] == [h for _, _, h in full]
    assert [(e, i) for e, i, _ in tail] == [(1, 2), (1, 3)]


@pytest.mark.filterwarnings("ignore:.*no `validation_step`")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_lightning_resume_from_last_batch_of_epoch(tmp_path):
    full, head, tail = _resume_case(tmp_path, epoch=0, batch=3)
    assert [(e, i) for e, i, _ in tail] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert [h for _, _, h in head + tail] == [h for _, _, h in full]
