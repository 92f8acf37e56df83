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
    """Pack series (in index order) into shards of at most about `rows_per_shard` stored rows.

    A series that fits in a shard is stored whole: it joins the current shard if there is room left, else
    it starts the next one. A longer series gets shards of its own, cut into near-equal pieces, each storing
    `window - 1` extra rows after its core (the halo) so every window starting in the core lies inside the
    piece. The shard size is raised where needed so the halo stays under ~5% of it.

    No shard mixes part of a series with another series, so a shard's contents depend only on the series
    it holds: an incremental ingest can keep a shard when those are unchanged (`plan_around`). The price
    is a shard left part-empty where the next series does not fit in it.
    """
    halo = window - 1
    cap = max(rows_per_shard, int(np.ceil(halo / HALO_SHARE)))
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    for series, n in enumerate(int(x) for x in lengths):
        if n <= cap:
            if used + n > cap:
                shards.append(current)
                current, used = [], 0
            current.append(Piece(series, 0, n, n))
            used += n
            continue
        if current:
            shards.append(current)
            current, used = [], 0
        # Cores of at most cap - halo rows each tile [0, n); each piece but the last adds the halo.
        num_pieces = int(np.ceil(n / (cap - halo)))
        bounds = np.linspace(0, n, num_pieces + 1).round().astype(np.int64)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            shards.append([Piece(series, int(start), min(int(stop) + halo, n), int(stop))])
    if current:
        shards.append(current)
    return shards


def plan_around(
    lengths: list[int] | np.ndarray, *, kept: list[list[Piece]], rows_per_shard: int, window: int
) -> list[tuple[list[Piece], int | None]]:
    """Plan shards for all series while keeping the `kept` shards of a previous shard set exactly as they were.

    Returns (pieces, k) per shard: k indexes `kept` for a shard to reuse, None for one to write. The kept
    shards must hold whole series (every piece of each of their series). The others are packed by
    `plan_shards`, one run of consecutive series indices at a time (a run ends at a kept shard), so a
    changed series never moves a series of another run. Shards are ordered by their first (series, row),
    which puts every window at the same dense index as in a full rebuild; only the cut between shards may
    differ (at most one partly filled shard per run).

    Why so simple: packing all series afresh in index order (`plan_shards`) lets a change in one series
    shift the cut of every later shard, so nothing could be reused; keeping a previous shard only when all
    its series are unchanged needs no other bookkeeping, and a series changed again next time only ever
    rewrites the shards of its own run.
    """
    num_series = len(lengths)
    covered: dict[int, list[Piece]] = {}
    for pieces in kept:
        for p in pieces:
            covered.setdefault(p.series, []).append(p)
    for series, pieces in covered.items():  # whole series only: their cores tile [0, length)
        cores = sorted((p.row_start, p.core_stop) for p in pieces)
        assert cores[0][0] == 0 and cores[-1][1] == int(lengths[series]), (series, cores)
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:], strict=False)), (series, cores)

    planned: list[tuple[list[Piece], int | None]] = [(pieces, k) for k, pieces in enumerate(kept)]

    def pack(run: list[int]) -> None:
        for shard in plan_shards([lengths[i] for i in run], rows_per_shard=rows_per_shard, window=window):
            planned.append(([Piece(run[p.series], p.row_start, p.row_stop, p.core_stop) for p in shard], None))

    run: list[int] = []
    for series in range(num_series):
        if series in covered:
            pack(run)
            run = []
        else:
            run.append(series)
    pack(run)
    planned.sort(key=lambda item: (item[0][0].series, item[0][0].row_start))
    return planned


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
