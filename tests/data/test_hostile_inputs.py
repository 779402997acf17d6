"""Data files that could be turned against the user (resvae/data/archive.py): CIFAR-10 batches
that would run code are refused before any of it runs, and the official layouts still load.
(Names that would write outside the output root: tests/run/test_preflight.py.)"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from resvae.data.archive import DatasetError, UnsafeBatchError, read_batch, read_cifar10, write_batch


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_batch(path: Path, marker: Path, where: str) -> None:
    images = np.zeros((4, 3 * 32 * 32), dtype=np.uint8)
    entry = {"batch_label": "x", "labels": [0, 1, 2, 3], "data": images}
    entry[where] = RunsCode(marker)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


@pytest.mark.parametrize("where", ["data", "filenames"])
def test_a_batch_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "ran"
    hostile_batch(tmp_path / "data_batch_1", marker, where)
    with pytest.raises(
        UnsafeBatchError, match=r"refused to read .*data_batch_1.*posix\.system|refused to read .*os\.system"
    ):
        read_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


def test_a_hostile_test_batch_stops_the_whole_read(tmp_path: Path) -> None:
    write_batch(tmp_path / "data_batch_1", np.zeros((2, 3, 32, 32), np.uint8))
    hostile_batch(tmp_path / "test_batch", tmp_path / "ran", "labels")
    with pytest.raises(DatasetError, match="test_batch"):
        read_cifar10(tmp_path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_official_layouts_still_load(tmp_path: Path, protocol: int, keys: str) -> None:
    """Python 2's str keys (read as latin1 str) and bytes keys (files re-saved after loading
    with encoding='bytes'), numpy arrays in every protocol numpy writes."""
    images = np.random.default_rng(0).integers(0, 256, (5, 3 * 32 * 32), dtype=np.uint8)
    entry = {"batch_label": "b", "labels": [1, 2, 3, 4, 5], "data": images, "filenames": ["a"] * 5}
    if keys == "bytes":
        entry = {k.encode(): v for k, v in entry.items()}
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    data, labels = read_batch(tmp_path / "test_batch")
    assert np.array_equal(data.reshape(5, -1), images)
    assert labels.tolist() == [1, 2, 3, 4, 5]
