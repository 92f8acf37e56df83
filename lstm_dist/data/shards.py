"""Arrow IPC shards: contiguous scaled rows per series chunk, plus a halo so each shard yields its windows alone.

A shard file has one record batch with columns `series` int32, `timestamp` int64 (unix s) and `features`
fixed_size_list<float32>[F] — row-major, so a memory-mapped shard is one [N, F] float32 matrix and a batch of
windows is one fancy-index gather over a sliding-window view of it. Windows are never stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SHARD_SCHEMA = {"series": "int32", "timestamp": "int64", "features": "fixed_size_list<float32>[F]"}
HALO_SHARE = 0.05  # halo rows at most ~5% of a shard, so storage stays near the raw size at any lookback


@dataclass(frozen=True)
class Piece:
    """Rows [row_start, row_stop) of one series stored in a shard, owning windows that start before core_stop."""

    series: int
    row_start: int
    row_stop: int
    core_stop: int


def rows_per_shard(*, rows: int, size_mib: float, num_features: int) -> int:
    """Target rows per shard: `rows` when set, else from a size in MiB (12 bytes of index + 4 per feature per row)."""
    if rows > 0:
        return max(16, rows)
    return max(16, int(size_mib * 2**20 / (12 + 4 * num_features)))


def plan_shards(lengths: list[int] | np.ndarray, *, rows_per_shard: int, window: int) -> list[list[Piece]]:
    """Pack series (in index order) into shards of about `rows_per_shard` stored rows.

    Short series share a shard whole; a long one is cut into pieces, each storing `window - 1` extra rows
    after its core (the halo) so every window starting in the core lies inside the piece. The shard size
    is raised where needed so the halo stays under ~5% of it.
    """
    halo = window - 1
    cap = max(rows_per_shard, int(np.ceil(halo / HALO_SHARE)))
    min_core = max(1, int(np.ceil(halo * (1 - HALO_SHARE) / HALO_SHARE)))
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    for series, n in enumerate(int(x) for x in lengths):
        pos = 0
        while pos < n:
            room = cap - used
            if n - pos <= room:
                current.append(Piece(series, pos, n, n))
                used += n - pos
                pos = n
            elif room - halo >= min_core:
                core_stop = pos + room - halo
                current.append(Piece(series, pos, core_stop + halo, core_stop))
                pos = core_stop
                shards.append(current)
                current, used = [], 0
            else:
                shards.append(current)
                current, used = [], 0
    if current:
        shards.append(current)
    return shards


def shard_table(series: np.ndarray, ts: np.ndarray, features: np.ndarray, *, stored_cols: list[str]) -> pa.Table:
    """The shard as an Arrow table (one chunk per column); `features` is float32 [N, F]."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    flat = pa.array(features.reshape(-1))
    return pa.table(
        {
            "series": pa.array(series.astype(np.int32)),
            "timestamp": pa.array(ts.astype(np.int64)),
            "features": pa.FixedSizeListArray.from_arrays(flat, features.shape[1]),
        },
    ).replace_schema_metadata({"stored_cols": json.dumps(stored_cols), "timestamp_unit": "s"})


def ipc_bytes(table: pa.Table) -> pa.Buffer:
    """Uncompressed Arrow IPC file bytes (compression would defeat memory mapping)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=None):
            writer.write_batch(batch)
    return sink.getvalue()


@dataclass
class OpenShard:
    """A memory-mapped shard: numpy views straight onto the file's pages."""

    series: np.ndarray  # int32 [N]
    ts: np.ndarray  # int64 [N]
    features: np.ndarray  # float32 [N, F]
    _keepalive: object  # the record batch that owns the mapping


def open_shard(path: str | os.PathLike) -> OpenShard:
    """Memory-map a shard; nothing is copied (pages load lazily on first touch)."""
    source = pa.memory_map(str(path), "r")
    reader = pa.ipc.open_file(source)
    if reader.num_record_batches != 1:
        batch = (
            pa.Table.from_batches([reader.get_batch(i) for i in range(reader.num_record_batches)])
            .combine_chunks()
            .to_batches()[0]
        )
    else:
        batch = reader.get_batch(0)
    feats = batch.column("features")
    width = feats.type.list_size
    flat = feats.values.slice(feats.offset * width, len(feats) * width)
    return OpenShard(
        series=batch.column("series").to_numpy(zero_copy_only=True),
        ts=batch.column("timestamp").to_numpy(zero_copy_only=True),
        features=flat.to_numpy(zero_copy_only=True).reshape(len(feats), width),
        _keepalive=batch,
    )
