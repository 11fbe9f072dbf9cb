"""Read the records of an offline W&B run file (LevelDB-style log of protobuf records) for assertions."""
from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7  # ':W&B', 2-byte magic, 1-byte version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_record(path: str | Path):
    """The RunRecord (run_group, job_type, config) of an offline run file."""
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def summary(path: str | Path) -> dict[str, str]:
    """The last value written for each summary key (JSON-encoded strings)."""
    found = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            found.update({u.key or "/".join(u.nested_key): u.value_json for u in r.summary.update})
    return found
