"""The records of offline W&B runs, read from their .wandb files."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def wandb_records(run_dir: Path) -> list:
    """The records of the run folder's offline W&B runs, read from their .wandb files (W&B's
    LevelDB-style log of protobuf Records: a 7-byte header, then 32 KiB blocks of chunks, each
    with a 7-byte header of checksum, length and type: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, block, pos, parts = path.read_bytes(), 32768, 7, b""
        assert data[:4] == b":W&B", f"{path} is not a W&B run file"
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:  # no room for a chunk header: the block's tail is padding
                pos += left
                continue
            _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if kind == 0:  # zero padding
                pos += left
                continue
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            parts = chunk if kind in (1, 2) else parts + chunk
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(parts)
                records.append(record)
    return records


def wandb_summary(records: list) -> dict:
    """The run summary the records leave: key (nested keys joined by '/') -> last value."""
    values = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def of_type(records: list, kind: str) -> list:
    """The records of one type (`history`, `summary`, `config`, `run`, ...)."""
    return [r for r in records if r.WhichOneof("record_type") == kind]
