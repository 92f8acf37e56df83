"""Ingest: raw CSV/Parquet -> validated, cleaned, featured, split, scaled Arrow shards + manifest.json.

Three waves of Ray tasks (nothing starts at import; the caller runs `ray.init`):
  read   one task per input file (or Parquet row-group range): validate columns and types, bucket rows by a
         stable hash of the series name;
  clean  one task per bucket: sort, dedupe, frequency grid and gaps, missing values, short series,
         target-derived features, splits, scaler stats on the train part;
  write  one task per shard: scale to float32 and serialise an Arrow IPC file.
The driver writes everything into `<out_dir>.tmp-<uuid>`, renames it to `out_dir` and writes `_SUCCESS`
last, so a failed ingest never leaves a directory that looks complete. The input is only read.

Given a `previous` shard set of the same data config, only the shards holding a changed, new or removed
series are written; the others are hard-linked from it (see `shards.plan_around` and `_reusable`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from lstm_dist.cluster import resources
from lstm_dist.config import DataConfig
from lstm_dist.data import frequency as frequencies
from lstm_dist.data import scalers, statics, transforms
from lstm_dist.data.cleaning import Block, build_block, dedupe, fill, infer_freq, merge_parts, regularize
from lstm_dist.data.errors import DataError
from lstm_dist.data.features import calendar_names, derived_features, derived_names
from lstm_dist.data.frequency import Frequency
from lstm_dist.data.integrity import check_output
from lstm_dist.data.manifest import (
    SUCCESS_FILE,
    ColumnStats,
    Manifest,
    Segment,
    SeriesInfo,
    ShardInfo,
    Totals,
)
from lstm_dist.data.readers import (
    Notes,
    Source,
    file_format,
    list_input_files,
    normalize,
    read_raw,
    value_columns,
)
from lstm_dist.data.shards import SHARD_SCHEMA, Piece, ipc_bytes, plan_around, rows_per_shard, shard_table
from lstm_dist.data.splits import (
    SPLITS,
    needs_padding,
    padded_bounds,
    rows_needed,
    shortfall,
    split_bounds,
    start_range,
    starts_in,
)
from lstm_dist.data.synthetic import write_sample
from lstm_dist.storage import filesystem as _filesystem  # storage's, under the name this module's code uses
from lstm_dist.storage import link_or_copy

Part = tuple[list[str], np.ndarray, np.ndarray, np.ndarray]  # (names, codes [N], ts [N], values [N, V])
# Fewer validation windows than this get a warning: early stopping on them is noise (one weekly series with
# data.val_size equal to the horizon has one, and stopped after 7 epochs of 8 steps: benchmarks/RESULTS.md).
FEW_VAL_WINDOWS = 20
STAGED_FILE = "part.parquet"  # the ingest step's copy of one input file (stage_file)
PAD_COL = "is_pad"  # the stored 0/1 start-padding mask column (data.start_padding), before the future covariates


@dataclass
class IngestReport:
    """What an ingest read, changed, dropped and wrote, and how long it took."""

    num_files: int = 0
    num_rows_read: int = 0
    num_series: int = 0
    num_rows: int = 0
    skipped_series: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    freq: int = 0
    """Step length in seconds (nominal for a calendar frequency)."""
    freq_alias: str = ""
    """The pandas offset alias of the frequency (`h`, `MS`, ...)."""
    freq_inferred: bool = False
    num_shards: int = 0
    num_bytes: int = 0
    raw_numeric_bytes: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    num_tasks: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    num_reused_shards: int = 0
    """Shards hard-linked (or copied) from the previous shard set instead of written."""
    num_changed_series: int | None = None
    """Series new, removed or with other rows or scaler stats than in the previous set; None: no previous set."""
    num_rewritten_series: int = 0
    """Unchanged series written again: they share a shard with a changed one, or their index moved."""
    rebuild_reason: str = ""
    """Why a previous shard set was given but nothing could be reused from it."""
    series_per_split: dict[str, int] = field(default_factory=dict)
    """Series with at least one window per split."""
    num_padded_series: int = 0
    """Series stored with start padding (data.start_padding)."""

    def summary(self) -> str:
        """A few human-readable lines."""
        shards = f"wrote {self.num_shards} shard(s)"
        if self.num_changed_series is not None and not self.rebuild_reason:
            also = f"; {self.num_rewritten_series} unchanged series rewritten" if self.num_rewritten_series else ""
            shards = (
                f"reused {self.num_reused_shards} of {self.num_shards} shards ({self.num_changed_series} series "
                f"changed{also}), wrote {self.num_shards - self.num_reused_shards}"
            )
        lines = [
            f"read {self.num_rows_read:,} rows from {self.num_files} file(s); kept {self.num_series} series, "
            f"{self.num_rows:,} rows; freq {self.freq_alias}{' (inferred)' if self.freq_inferred else ''}",
            f"{shards}, {self.num_bytes / 2**20:.1f} MiB "
            f"({self.num_bytes / max(self.raw_numeric_bytes, 1):.2f}x the raw numeric data); windows "
            + ", ".join(f"{k} {v:,}" for k, v in self.windows.items()),
            "tasks: "
            + ", ".join(f"{k} {v}" for k, v in self.num_tasks.items())
            + "; time: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]
        if self.series_per_split:
            lines.append(split_coverage(self.series_per_split, num_padded=self.num_padded_series))
        if self.rebuild_reason:
            lines.append(f"full rebuild: {self.rebuild_reason}")
        if self.counts:
            lines.append("cleaning: " + ", ".join(f"{k}={v:,}" for k, v in sorted(self.counts.items())))
        if self.skipped_series:
            shown = ", ".join(self.skipped_series[:10]) + (" ..." if len(self.skipped_series) > 10 else "")
            lines.append(f"skipped {len(self.skipped_series)} short series: {shown}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def split_coverage(series_per_split: dict[str, int], *, num_padded: int) -> str:
    """'series with windows: train 181, val 150, test 181 (120 start-padded)'."""
    text = "series with windows: " + ", ".join(f"{k} {v:,}" for k, v in series_per_split.items())
    return text + (f" ({num_padded:,} start-padded)" if num_padded else "")


# ---------------------------------------------------------------- read


def _bucket_of(names: list[str], num_buckets: int) -> np.ndarray:
    """Stable (process-independent) bucket per name, so every file sends a series to the same bucket."""
    return np.asarray([zlib.crc32(n.encode()) % num_buckets for n in names], dtype=np.int64)


def read_unit(
    locator: str, row_groups: list[int] | None, *, cfg: DataConfig, num_buckets: int
) -> tuple[list[Part], dict[str, Any]]:
    """Read and validate one file (or some of its row groups) and split its rows into buckets."""
    notes = Notes()
    source = locator
    if row_groups is None:
        table = read_raw(locator, cfg=cfg)
    else:
        fs, inner, _ = _filesystem(locator)
        pf = pq.ParquetFile(inner, filesystem=fs)
        table = pf.read_row_groups(row_groups)
        offset = sum(pf.metadata.row_group(g).num_rows for g in range(row_groups[0]))
        source = Source.part(locator, offset)  # error messages count rows from the start of the file
    names, codes, ts, values = normalize(table, cfg=cfg, source=source, notes=notes)
    order = np.lexsort((ts, codes))
    sorted_ts, sorted_codes = ts[order], codes[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(sorted_codes, minlength=len(names)))])
    freq_hist = infer_freq(sorted_ts, bounds)
    votes, example = ({}, None) if cfg.freq else _freq_votes(sorted_ts, bounds, names, tz=cfg.timezone)
    bucket_of_name = _bucket_of(names, num_buckets)
    row_bucket = bucket_of_name[codes]
    parts: list[Part] = []
    for b in range(num_buckets):
        mask = row_bucket == b
        sel = np.flatnonzero(bucket_of_name == b)
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[sel] = np.arange(len(sel))
        parts.append(([names[i] for i in sel], remap[codes[mask]], ts[mask], values[mask]))
    info = {"file": locator, "rows": len(ts), "freq_hist": freq_hist, "freq_votes": votes, "notes": notes}
    info["freq_example"] = None if example is None else (locator, *example)
    info["static"] = statics.read_static(table, series_col=cfg.series_col, static_cols=cfg.static_cols, source=source)
    return parts, info


def _freq_votes(
    sorted_ts: np.ndarray, bounds: np.ndarray, names: list[str], *, tz: str, num: int = 32, rows: int = 512
) -> tuple[dict[str, int], tuple[str, int, int] | None]:
    """({alias: series}, example) from pandas.infer_freq on the first `rows` rows of up to `num` series, spread
    evenly; example: (series, a, b), two neighbouring timestamps of a series whose frequency is unclear."""
    num_series = len(bounds) - 1
    votes: dict[str, int] = {}
    example = None
    for s in np.unique(np.linspace(0, num_series - 1, min(num, num_series)).astype(np.int64)) if num_series else []:
        ts = np.unique(sorted_ts[bounds[s] : min(bounds[s] + rows, bounds[s + 1])])  # sorted within a series
        alias = frequencies.infer_series(ts, tz=tz)
        if alias is not None:
            votes[alias] = votes.get(alias, 0) + 1
        elif example is None and len(ts) >= 3:
            steps = np.diff(ts)
            i = int(np.argmax(steps != steps.min()))  # the first step unlike the shortest one
            example = (names[s], int(ts[i]), int(ts[i + 1]))
    return votes, example


def _read_unit_task(locator: str, row_groups: list[int] | None, cfg: DataConfig, num_buckets: int) -> tuple:
    parts, info = read_unit(locator, row_groups, cfg=cfg, num_buckets=num_buckets)
    return (*parts, info)


_read_remote = ray.remote(_read_unit_task)


# ---------------------------------------------------------------- clean


def clean_block(
    names: list[str],
    codes: np.ndarray,
    ts: np.ndarray,
    values: np.ndarray,
    *,
    cfg: DataConfig,
    freq: Frequency,
    notes: Notes,
) -> Block:
    """Sort, dedupe, regularise onto the `freq` grid, fill gaps and missing values. Shared with inference."""
    block = build_block(names, codes, ts, values, notes=notes)
    block = dedupe(block, policy=cfg.duplicates, notes=notes)
    if cfg.missing != "drop":  # dropping rows leaves holes on purpose; the grid is not enforced then
        block, inserted = regularize(block, freq=freq, gaps=cfg.gaps, notes=notes)
        block = fill(block, rows=inserted, method=cfg.gaps, notes=notes, what="gap", columns=value_columns(cfg))
    everything = np.ones(len(block.ts), dtype=bool)
    return fill(block, rows=everything, method=cfg.missing, notes=notes, what="missing", columns=value_columns(cfg))


def with_features(block: Block, *, cfg: DataConfig) -> np.ndarray:
    """Stored columns float64 [N, Fs]: targets, covariates, target-derived features, future covariates."""
    num_t, num_c = len(cfg.target_cols), len(cfg.covariate_cols)
    derived = derived_features(
        block.values[:, :num_t], block.offsets, lags=cfg.lags, moving_averages=cfg.moving_averages, rsi=cfg.rsi_period
    )
    v = block.values
    return np.concatenate([v[:, : num_t + num_c], derived, v[:, num_t + num_c :]], axis=1)


def fit_series_stats(
    stored: np.ndarray, offsets: np.ndarray, val_start: np.ndarray, *, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """(loc, scale) [S, Fs], each series fitted on its own train rows [0, val_start) only."""
    num_series, width = len(offsets) - 1, stored.shape[1]
    loc, scale = np.zeros((num_series, width)), np.ones((num_series, width))
    for i in range(num_series):
        loc[i], scale[i] = scalers.fit(stored[offsets[i] : offsets[i] + val_start[i]], kind=kind)
    return loc, scale


def series_digest(ts: np.ndarray, stored: np.ndarray) -> str:
    """sha256 of one series' cleaned rows: timestamps int64 [n] and stored columns float64 [n, Fs], unscaled."""
    h = hashlib.sha256(np.asarray(stored.shape, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(ts, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(stored, dtype=np.float64).tobytes())
    return h.hexdigest()


def _check_feature_config(cfg: DataConfig) -> None:
    for key in ("lags", "moving_averages"):
        bad = [k for k in getattr(cfg, key) if k < 1]
        if bad:
            raise DataError(f"data.{key} must hold positive step counts, got {getattr(cfg, key)}")


def clean_bucket(parts: list[Part], *, cfg: DataConfig, freq: Frequency) -> tuple[dict[str, Any], dict[str, Any]]:
    """One bucket of series: clean, check lengths, add features, split, fit scaler stats (train rows only)."""
    notes = Notes()
    names, codes, ts, values = merge_parts(parts)
    empty = {"names": [], "offsets": np.zeros(1, dtype=np.int64), "ts": ts[:0], "stored": np.zeros((0, 0))}
    if len(ts) == 0:
        return empty, {"names": [], "notes": notes, "skipped": []}
    block = clean_block(names, codes, ts, values, cfg=cfg, freq=freq, notes=notes)
    kw = {"lookback": cfg.lookback, "horizon": cfg.horizon, "val_size": cfg.val_size, "test_size": cfg.test_size}
    reasons = [shortfall(int(n), **kw) for n in block.lengths]
    padded = np.array([needs_padding(int(n), **kw, start_padding=cfg.start_padding) for n in block.lengths], bool)
    short = np.array([r is not None for r in reasons], dtype=bool) & ~padded
    skipped = []
    if short.any():
        if cfg.short_series == "error":  # the driver raises, counting the short series of every bucket
            i = int(np.argmax(short))
            first = (block.names[i], int(block.lengths[i]), reasons[i], int(short.sum()))
            return empty, {"names": [], "notes": notes, "skipped": [], "too_short": first}
        skipped = [n for n, s in zip(block.names, short, strict=True) if s]
        block = block.take_series(~short)
        padded = padded[~short]
    if not block.names:
        return empty, {"names": [], "notes": notes, "skipped": skipped}
    parts = {"val_size": cfg.val_size, "test_size": cfg.test_size}
    bounds = np.array(
        [
            padded_bounds(int(n), horizon=cfg.horizon, **parts) if p else split_bounds(int(n), **parts)
            for n, p in zip(block.lengths, padded, strict=True)
        ]
    ).reshape(-1, 2)
    val_start, test_start = bounds[:, 0], bounds[:, 1]
    # The transform comes before the derived features and the scaler: both then see transformed targets.
    lam = transforms.fit_block(block, kind=cfg.target_transform, targets=cfg.target_cols, train_rows=val_start)
    block = transforms.transform_block(block, kind=cfg.target_transform, targets=cfg.target_cols, lam=lam)
    stored = with_features(block, cfg=cfg)
    summary: dict[str, Any] = {
        "names": block.names,
        "lengths": block.lengths,
        "val_start": val_start,
        "test_start": test_start,
        "first_ts": block.ts[block.offsets[:-1]],
        "last_ts": block.ts[block.offsets[1:] - 1],
        "notes": notes,
        "skipped": skipped,
        "lambda": lam,
        "pad": np.where(padded, cfg.lookback - 1, 0),
    }
    summary["sha256"] = [
        series_digest(block.ts[a:b], stored[a:b]) for a, b in zip(block.offsets[:-1], block.offsets[1:], strict=True)
    ]
    if cfg.scaler_scope == "series":
        summary["loc"], summary["scale"] = fit_series_stats(stored, block.offsets, val_start, kind=cfg.scaler)
    else:
        pos = np.arange(len(block.ts)) - np.repeat(block.offsets[:-1], block.lengths)
        train = pos < np.repeat(val_start, block.lengths)
        summary["partial"] = scalers.partial_fit(stored[train], kind=cfg.scaler)
    data = {"names": block.names, "offsets": block.offsets, "ts": block.ts, "stored": stored}
    return data, summary


def _too_short_message(name: str, num_rows: int, reason: str | None, num_short: int, cfg: DataConfig) -> str:
    if cfg.start_padding:
        need = f"at least horizon + 1 = {cfg.horizon + 1} rows (data.start_padding pads the lookback)"
        fix = "lower data.horizon"
        reason = "fewer than horizon + 1"
    else:
        kw = {"lookback": cfg.lookback, "horizon": cfg.horizon, "val_size": cfg.val_size, "test_size": cfg.test_size}
        need = (
            f"at least {rows_needed(**kw, start=num_rows)} rows for lookback {cfg.lookback} + horizon {cfg.horizon} "
            "+ validation/test parts"
        )
        fix = "set data.start_padding=true, or lower data.lookback / data.horizon / data.val_size / data.test_size"
    are = "series is" if num_short == 1 else "series are"
    return (
        f"series '{name}' is too short: {num_rows} rows, {reason}; it needs {need} ({num_short} {are} too "
        f"short). Set data.short_series=skip to leave such series out, or {fix}"
    )


def _clean_task(cfg: DataConfig, freq: Frequency, *parts: Part) -> tuple[dict[str, Any], dict[str, Any]]:
    return clean_bucket(list(parts), cfg=cfg, freq=freq)


_clean_remote = ray.remote(num_returns=2)(_clean_task)


# ---------------------------------------------------------------- write


def build_shard(
    pieces: list[tuple[int, int, int, int, int]],
    loc: np.ndarray,
    scale: np.ndarray,
    *,
    stored_cols: list[str],
    blocks: list[dict[str, Any]],
    pad_at: int | None = None,
    freq: Frequency | None = None,
) -> tuple[np.ndarray, str, int]:
    """Scale the pieces (block, local series, row_start, row_stop, global series) into one IPC file's bytes.

    `pad_at`: position of the start-padding mask column in `stored_cols` (None: no series is padded). A piece
    with row_start < 0 begins with -row_start padding rows: every value 0 in scaled units (the series'
    mean under the standard scaler), the mask 1, timestamps continuing the `freq` grid backwards."""
    series, ts, feats = [], [], []
    for p, (b, local, r0, r1, global_idx) in enumerate(pieces):
        blk = blocks[b]
        base = int(blk["offsets"][local])
        rows = slice(base + max(r0, 0), base + r1)
        raw = blk["stored"][rows]  # [n, Fs - (pad_at is not None)], unscaled
        if pad_at is not None:
            raw = np.insert(raw, pad_at, 0.0, axis=1)  # the mask is 0 on real rows (its loc 0, scale 1)
        feats.append(scalers.transform(raw, loc[p], scale[p]).astype(np.float32))  # [n, Fs]
        _check_float32(feats[-1], raw, name=blk["names"][local], stored_cols=stored_cols)
        ts.append(blk["ts"][rows])
        if r0 < 0:
            assert pad_at is not None and freq is not None, "padding rows need the mask column and the grid"
            pad = np.zeros((-r0, raw.shape[1]), dtype=np.float32)  # [P, Fs]
            pad[:, pad_at] = 1.0
            feats[-1] = np.concatenate([pad, feats[-1]])
            ts[-1] = np.concatenate([freq.previous_steps(blk["ts"][base], -r0), ts[-1]])
        series.append(np.full(r1 - r0, global_idx, dtype=np.int32))
    table = shard_table(np.concatenate(series), np.concatenate(ts), np.concatenate(feats), stored_cols=stored_cols)
    buf = ipc_bytes(table)
    data = np.frombuffer(buf, dtype=np.uint8)
    return data, hashlib.sha256(data).hexdigest(), table.num_rows


def _check_float32(scaled: np.ndarray, raw: np.ndarray, *, name: str, stored_cols: list[str]) -> None:
    """Shards hold float32: a finite value that scales beyond ±3.4e38 would be stored as inf."""
    bad = ~np.isfinite(scaled)
    if bad.any():
        i, col = np.argwhere(bad)[0]
        raise DataError(
            f"series '{name}': column '{stored_cols[col]}' holds {raw[i, col]:g}, which does not fit the float32 "
            "shards after scaling (beyond ±3.4e38); check the column for corrupt values, or rescale it in the input "
            "(or set data.scaler when it is none)"
        )


def _write_task(
    pieces: list,
    loc: np.ndarray,
    scale: np.ndarray,
    stored_cols: list[str],
    pad_at: int | None,
    freq: Frequency,
    *blocks: dict,
) -> tuple:
    return build_shard(pieces, loc, scale, stored_cols=stored_cols, blocks=list(blocks), pad_at=pad_at, freq=freq)


_write_remote = ray.remote(_write_task)


# ---------------------------------------------------------------- driver


def get_or_raise(refs: Any) -> Any:
    """ray.get that re-raises a task's DataError as itself, without the remote traceback noise."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise


def _read_units(files: list[str], *, cfg: DataConfig, target: int) -> list[tuple[str, list[int] | None]]:
    """Files to read; a lone big Parquet file is split by row groups so that several tasks read it."""
    if len(files) != 1 or file_format(files[0], cfg.format) != "parquet" or target <= 1:
        return [(f, None) for f in files]
    fs, inner, _ = _filesystem(files[0])
    try:
        num_groups = pq.ParquetFile(inner, filesystem=fs).metadata.num_row_groups
    except Exception:  # let read_raw report an unreadable file with its own message
        return [(files[0], None)]
    if num_groups < 2:
        return [(files[0], None)]
    chunks = np.array_split(np.arange(num_groups), min(target, num_groups))
    return [(files[0], [int(g) for g in c]) for c in chunks]


def stage_file(locator: str, data_cfg: dict[str, Any], out: str) -> dict[str, Any]:
    """The ingest step's Ray task: read and validate one input file, and keep it as Parquet (same columns) in
    `out` for the shard step. Here rather than with the pipeline's steps: the worker imports this module, not
    the pipelines and MLflow behind them (2-3 s of a small run's ingest step on 2 cores)."""
    cfg = DataConfig.model_validate(data_cfg)
    table = read_raw(locator, cfg=cfg)
    names, _, _, _ = normalize(table, cfg=cfg, source=locator, notes=Notes())  # raises DataError naming file/col/row
    pq.write_table(table, str(Path(out) / STAGED_FILE), use_dictionary=False)
    return {"file": locator, "staged": STAGED_FILE, "num_rows": table.num_rows, "num_series": len(names)}


def resolve_input(cfg: DataConfig, *, out_dir: Path, work_dir: str | None) -> str:
    if cfg.path is not None:
        return cfg.path
    s = cfg.sample
    assert s is not None  # DataConfig's validator guarantees path or sample
    base = Path(work_dir) if work_dir else out_dir.parent
    path = base / "sample" / f"sample_{s.num_series}x{s.num_steps}_seed{s.seed}.parquet"
    if not path.exists():
        write_sample(path, num_series=s.num_series, num_steps=s.num_steps, seed=s.seed)
    return str(path)


def _moved(piece: Piece | Segment, by: int) -> Piece:
    """The piece with its row positions moved by `by` (real rows <-> stored rows of a padded series)."""
    return Piece(piece.series, piece.row_start + by, piece.row_stop + by, piece.core_stop + by)


def _segment_windows(*, piece_start: int, core_stop: int, info: dict[str, int], cfg: DataConfig) -> dict[str, int]:
    out = {}
    for split in SPLITS:
        lo, hi = start_range(split, lookback=cfg.lookback, horizon=cfg.horizon, **info)
        out[split] = starts_in(lo, hi, stride=cfg.stride, begin=piece_start, end=core_stop)[1]
    return out


# DataConfig fields that say where the input is and how many tasks read it, not what the shards hold.
_SOURCE_FIELDS = ("path", "format", "sample", "num_read_tasks")


@dataclass
class _Reuse:
    """What an ingest takes over from a previous shard set."""

    directory: Path | None = None
    shards: list[ShardInfo] = field(default_factory=list)
    """Previous shards to keep, whole groups of shards sharing a series, in their previous order."""
    num_changed: int | None = None
    unchanged: set[str] = field(default_factory=set)
    """Names of the series whose rows and scaler stats are as before (their index may have moved)."""
    reason: str = ""


def _reusable(
    previous: str | None, *, cfg: DataConfig, freq: Frequency, stored_cols: list[str], series: list[SeriesInfo]
) -> _Reuse:
    """The shards of `previous` that hold only unchanged series, so that they can be kept as they are.

    A series is unchanged when its name, index, rows (`SeriesInfo.sha256`), split points and scaler stats
    all equal the previous ones; a shard's bytes depend on nothing else. Shards that share a series (a long
    series cut in pieces) are kept or rewritten together. A global scaler ties every shard to every series,
    so then, or when the data config, frequency or stored columns differ, nothing is reused.
    """
    if previous is None:
        return _Reuse()
    directory = Path(previous).resolve()
    if cfg.scaler_scope == "global":
        return _Reuse(reason="data.scaler_scope=global scales every series with stats of all series")
    try:
        prev = Manifest.load(directory)
    except (DataError, ValueError) as err:  # ValueError: a manifest pydantic cannot read
        return _Reuse(reason=f"the previous shard set {directory} cannot be read ({str(err).splitlines()[0]})")
    now = cfg.model_dump(mode="json", exclude=set(_SOURCE_FIELDS))
    before = {k: v for k, v in prev.data_config.items() if k not in _SOURCE_FIELDS}
    differ = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if differ:
        keys = ", ".join(f"data.{k}" for k in differ)
        return _Reuse(reason=f"the data config differs from that of the previous shard set {directory} ({keys})")
    if prev.frequency() != freq or prev.stored_cols != stored_cols:
        return _Reuse(reason=f"the frequency or stored columns differ from the previous shard set {directory}")

    by_name = {s.name: s for s in series}
    same_rows = {  # content as before (index aside)
        s.name
        for s in prev.series
        if s.sha256 is not None
        and s.name in by_name
        and s.model_dump(exclude={"index"}) == by_name[s.name].model_dump(exclude={"index"})
    }
    num_changed = len(by_name.keys() - same_rows) + len({s.name for s in prev.series} - by_name.keys())
    in_place = {s.name for s in prev.series if s.name in same_rows and s.index == by_name[s.name].index}

    # Groups of shards that share a series: union-find over the previous shards.
    parent = list(range(len(prev.shards)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_shard: dict[int, int] = {}
    for k, info in enumerate(prev.shards):
        for seg in info.segments:
            parent[root(k)] = root(first_shard.setdefault(seg.series, k))
    groups: dict[int, list[int]] = {}
    for k in range(len(prev.shards)):
        groups.setdefault(root(k), []).append(k)

    def intact(info: ShardInfo) -> bool:
        try:
            return (directory / info.file).stat().st_size == info.num_bytes
        except OSError:
            return False

    keep = sorted(
        k
        for members in groups.values()
        if all(prev.series[seg.series].name in in_place for k in members for seg in prev.shards[k].segments)
        and all(intact(prev.shards[k]) for k in members)
        for k in members
    )
    return _Reuse(
        directory=directory, shards=[prev.shards[k] for k in keep], num_changed=num_changed, unchanged=same_rows
    )


def choose_frequency(cfg: DataConfig, infos: list[dict[str, Any]], *, source: str) -> Frequency:
    """data.freq if set; else the alias most sampled series agree on (pandas.infer_freq per series), else the
    most common step between rows (series with gaps give infer_freq nothing)."""
    if cfg.freq:
        return frequencies.parse(cfg.freq, tz=cfg.timezone)
    votes: dict[str, int] = {}
    hist: dict[int, int] = {}
    for i in infos:
        for alias, n in i["freq_votes"].items():
            votes[alias] = votes.get(alias, 0) + n
        for step, n in i["freq_hist"].items():
            hist[step] = hist.get(step, 0) + n
    alias = frequencies.vote(votes)
    if alias is not None:
        return frequencies.parse(alias, tz=cfg.timezone)
    if not hist:
        raise DataError(
            f"cannot infer the frequency of '{source}': no series has two distinct timestamps; set data.freq "
            f"(a pandas offset alias, e.g. {', '.join(frequencies.COMMON_ALIASES)})"
        )
    step = max(sorted(hist), key=lambda s: hist[s])  # the most common step; ties go to the smallest
    example = next((i["freq_example"] for i in infos if i.get("freq_example")), None)
    if example is not None and any(s % step for s in hist):  # gaps are whole steps; anything else is not a grid
        file, name, a, b = example
        fits = frequencies.valid_aliases(a, b, tz=cfg.timezone)[:6]
        raise DataError(
            f"cannot infer the frequency of '{file}': series '{name}' has timestamps {np.datetime64(a, 's')} and "
            f"{np.datetime64(b, 's')} on no common grid with its other steps; set data.freq to a pandas offset "
            f"alias" + (f" (values that fit these two: {', '.join(fits)})" if fits else "")
        )
    return frequencies.from_seconds(step, tz=cfg.timezone)


def _series_infos(
    entries: list[tuple[str, int, int]],
    summaries: list[dict],
    loc: np.ndarray,
    scale: np.ndarray,
    stored_cols: list[str],
    pads: list[int],
    static_rows: dict,
    static_enc: dict,
    cfg: DataConfig,
) -> list[SeriesInfo]:
    """The manifest entry of each series (`entries`: name, bucket, position in that bucket's clean summary)."""
    series_infos = []
    for idx, (name, b, i) in enumerate(entries):
        s = summaries[b]
        series_infos.append(
            SeriesInfo(
                name=name,
                index=idx,
                num_rows=int(s["lengths"][i]),
                first_timestamp=int(s["first_ts"][i]),
                last_timestamp=int(s["last_ts"][i]),
                val_start=int(s["val_start"][i]),
                test_start=int(s["test_start"][i]),
                scaler={
                    c: ColumnStats(loc=float(loc[idx, j]), scale=float(scale[idx, j]))
                    for j, c in enumerate(stored_cols)
                },
                target_lambda=(
                    {c: float(s["lambda"][i][j]) for j, c in enumerate(cfg.target_cols)}
                    if cfg.target_transform == "boxcox"
                    else {}
                ),
                static=statics.encode(static_rows[name], static_enc) if cfg.static_cols else [],
                sha256=s["sha256"][i],
                pad=pads[idx],
            )
        )
    return series_infos


def _shard_infos(
    plan: list, results: dict[int, tuple[str, int, int]], series_infos: list[SeriesInfo], cfg: DataConfig
) -> list[ShardInfo]:
    """The manifest entry of each planned shard: its segments and their window counts per split."""
    shards = []
    for k, (pieces, _) in enumerate(plan):
        digest, num_rows, num_bytes = results[k]
        segments, offset = [], 0
        for p in pieces:
            info = series_infos[p.series]
            kw = {"num_rows": info.num_rows, "val_start": info.val_start, "test_start": info.test_start}
            kw["pad"] = info.pad
            segments.append(
                Segment(
                    series=p.series,
                    row_start=p.row_start,
                    row_stop=p.row_stop,
                    core_stop=p.core_stop,
                    offset=offset,
                    windows=_segment_windows(piece_start=p.row_start, core_stop=p.core_stop, info=kw, cfg=cfg),
                )
            )
            offset += p.row_stop - p.row_start
        totals = {sp: sum(s.windows[sp] for s in segments) for sp in SPLITS}
        shards.append(
            ShardInfo(
                file=f"shard-{k:05d}.arrow",
                num_rows=num_rows,
                num_bytes=num_bytes,
                sha256=digest,
                segments=segments,
                windows=totals,
            )
        )
    return shards


def ingest(
    cfg: DataConfig,
    *,
    out_dir: str,
    work_dir: str | None = None,
    previous: str | None = None,
    task_options: dict[str, Any] | None = None,
) -> tuple[Manifest, IngestReport]:
    """Turn the input named by `cfg` into shards + manifest.json under `out_dir` (atomically).

    `cfg.path` unset: the sample `cfg.sample` is generated under `work_dir` first. Raises `DataError` for bad
    input; then nothing complete-looking is left at `out_dir`. `previous`: a complete shard set of the same
    data config (another input), whose shards holding only unchanged series are hard-linked, not rewritten;
    the manifest describes the new set completely either way (see `IngestReport.summary` for what was kept).
    `task_options`: Ray options for every read, clean and write task, e.g. a scheduling strategy that keeps
    them on the node whose disk holds the input and `out_dir` (a URI work dir's staging dir).
    """
    opts = task_options or {}
    clock = {"start": time.perf_counter()}
    _check_feature_config(cfg)
    report = IngestReport()
    out = Path(out_dir).resolve()
    source = resolve_input(cfg, out_dir=out, work_dir=work_dir)
    files = list_input_files(source, fmt=cfg.format)
    cpus = max(1, int(resources().get("CPU", 0) or os.cpu_count() or 1))
    num_buckets = cfg.num_read_tasks or cpus
    units = _read_units(files, cfg=cfg, target=num_buckets)
    report.num_files = len(files)

    read = _read_wave(units, cfg=cfg, num_buckets=num_buckets, opts=opts, source=source)
    report.num_rows_read = sum(i["rows"] for i in read.infos)
    report.freq, report.freq_alias, report.freq_inferred = read.freq.seconds, read.freq.alias, not cfg.freq
    clock["read"] = time.perf_counter()
    block_refs, summaries = _clean_wave(read, cfg=cfg, num_buckets=num_buckets, opts=opts, report=report)
    clock["clean"] = time.perf_counter()

    layout = _layout(cfg, summaries, read.infos, source=source)
    plan, reuse = _plan(cfg, layout, freq=read.freq, previous=previous)
    tmp = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir(parents=True)
    try:
        results = _write_shards(
            plan, reuse=reuse, layout=layout, block_refs=block_refs, freq=read.freq, tmp=tmp, opts=opts
        )
        manifest = _build_manifest(cfg, layout, _shard_infos(plan, results, layout.series, cfg), freq=read.freq)
        _publish(manifest, tmp=tmp, out=out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    clock["end"] = time.perf_counter()
    _fill_report(report, cfg=cfg, manifest=manifest, notes=read.notes, layout=layout, plan=plan, reuse=reuse)
    report.num_tasks = {"read": len(units), "clean": num_buckets, "write": len(plan) - len(reuse.shards)}
    report.timings = {
        "read": clock["read"] - clock["start"],
        "clean": clock["clean"] - clock["read"],
        "write": clock["end"] - clock["clean"],
        "total": clock["end"] - clock["start"],
    }
    return manifest, report


@dataclass
class _ReadWave:
    """What the read tasks returned: per unit the refs of its parts (one per bucket, then its info dict)."""

    refs: list[list[Any]]
    infos: list[dict[str, Any]]
    notes: Notes
    freq: Frequency


def _read_wave(
    units: list[tuple[str, list[int] | None]], *, cfg: DataConfig, num_buckets: int, opts: dict, source: str
) -> _ReadWave:
    """read: one task per unit; each returns one part per bucket plus an info dict. Chooses the frequency."""
    refs = [
        _read_remote.options(num_returns=num_buckets + 1, **opts).remote(loc, rg, cfg, num_buckets) for loc, rg in units
    ]
    infos = get_or_raise([r[-1] for r in refs])
    notes = Notes()
    for i in infos:
        notes.merge(i["notes"])
    return _ReadWave(refs=refs, infos=infos, notes=notes, freq=choose_frequency(cfg, infos, source=source))


def _clean_wave(
    read: _ReadWave, *, cfg: DataConfig, num_buckets: int, opts: dict, report: IngestReport
) -> tuple[list[Any], list[dict[str, Any]]]:
    """clean: one task per bucket; the cleaned arrays stay in the object store for the writers.
    Returns (refs of the cleaned blocks, the summaries); notes and skipped series go to `read.notes`/`report`."""
    bucket_parts = [[refs[b] for refs in read.refs] for b in range(num_buckets)]
    clean_out = [_clean_remote.options(**opts).remote(cfg, read.freq, *parts) for parts in bucket_parts]
    summaries = get_or_raise([c[1] for c in clean_out])
    short = sorted((s["too_short"] for s in summaries if s.get("too_short")), key=lambda t: t[0])
    if short:
        name, num_rows, reason, _ = short[0]
        raise DataError(_too_short_message(name, num_rows, reason, sum(t[3] for t in short), cfg))
    for s in summaries:
        read.notes.merge(s["notes"])
        report.skipped_series += s["skipped"]
    report.skipped_series.sort()
    return [c[0] for c in clean_out], summaries


@dataclass
class _Layout:
    """The series of the new shard set in global order, with their stored columns, scaler stats and padding."""

    entries: list[tuple[str, int, int]]
    """(name, bucket, position in that bucket's clean summary), sorted by name: the global series index."""
    derived: list[str]
    stored_cols: list[str]
    loc: np.ndarray
    """float64 [S, Fs]"""
    scale: np.ndarray
    """float64 [S, Fs]"""
    pads: list[int]
    """Start-padding rows per series."""
    pad_at: int | None
    """Position of the padding mask in stored_cols; None when no series is padded."""
    static_enc: dict[str, dict[str, Any]]
    series: list[SeriesInfo]


def _layout(cfg: DataConfig, summaries: list[dict[str, Any]], infos: list[dict[str, Any]], *, source: str) -> _Layout:
    """Global series index, stored columns (with the padding mask where needed), scaler stats, manifest entries."""
    derived = derived_names(cfg.target_cols, lags=cfg.lags, moving_averages=cfg.moving_averages, rsi=cfg.rsi_period)
    stored_cols = [*cfg.target_cols, *cfg.covariate_cols, *derived, *cfg.future_cols]
    entries = sorted((name, b, i) for b, s in enumerate(summaries) for i, name in enumerate(s["names"]))
    if not entries:
        raise DataError(
            f"no series left to write from '{source}' (all were skipped as too short); see data.short_series"
        )
    loc, scale = _scaler_stats(cfg, summaries, entries, width=len(stored_cols))
    # The mask column exists only when some series is padded, so data without short series is stored as before.
    pads = [int(summaries[b]["pad"][i]) for _, b, i in entries]
    pad_at = None
    if any(pads):
        pad_at = len(stored_cols) - len(cfg.future_cols)  # before the future covariates, which the reader takes last
        if PAD_COL in stored_cols:
            raise DataError(f"column name '{PAD_COL}' is reserved for the start-padding mask; rename that column")
        stored_cols.insert(pad_at, PAD_COL)
        loc, scale = np.insert(loc, pad_at, 0.0, axis=1), np.insert(scale, pad_at, 1.0, axis=1)
    static_rows = statics.merge([i["static"] for i in infos], static_cols=cfg.static_cols)
    static_enc = statics.fit_encoding(
        {n: static_rows[n] for n, _, _ in entries if cfg.static_cols}, static_cols=cfg.static_cols
    )
    series = _series_infos(entries, summaries, loc, scale, stored_cols, pads, static_rows, static_enc, cfg)
    return _Layout(
        entries=entries,
        derived=derived,
        stored_cols=stored_cols,
        loc=loc,
        scale=scale,
        pads=pads,
        pad_at=pad_at,
        static_enc=static_enc,
        series=series,
    )


def _scaler_stats(
    cfg: DataConfig, summaries: list[dict[str, Any]], entries: list[tuple[str, int, int]], *, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(loc, scale) [S, width] in global series order: each series' own, or one fit over all train rows."""
    loc, scale = np.zeros((len(entries), width)), np.ones((len(entries), width))
    if cfg.scaler_scope == "global":
        partials = [s["partial"] for s in summaries if s["names"]]
        loc[:], scale[:] = scalers.combine(partials, kind=cfg.scaler, num_cols=width)
        return loc, scale
    for idx, (_, b, i) in enumerate(entries):
        loc[idx], scale[idx] = summaries[b]["loc"][i], summaries[b]["scale"][i]
    return loc, scale


def _plan(
    cfg: DataConfig, layout: _Layout, *, freq: Frequency, previous: str | None
) -> tuple[list[tuple[list[Piece], int | None]], _Reuse]:
    """Plan shards from lengths only (so the same data in any file layout gives the same shards), around the
    shards kept from a previous set. Returns (pieces, index into reuse.shards or None) per shard."""
    window = cfg.lookback + cfg.horizon
    target_rows = rows_per_shard(
        rows=cfg.rows_per_shard, size_mib=cfg.shard_size_mib, num_features=len(layout.stored_cols)
    )
    reuse = _reusable(previous, cfg=cfg, freq=freq, stored_cols=layout.stored_cols, series=layout.series)
    pads = layout.pads
    # Shards are planned over stored rows (padding first), then pieces go back to real row positions.
    kept = [[_moved(g, pads[g.series]) for g in info.segments] for info in reuse.shards]
    stored_lengths = [info.num_rows + p for info, p in zip(layout.series, pads, strict=True)]
    plan = [
        ([_moved(p, -pads[p.series]) for p in pieces], k)
        for pieces, k in plan_around(stored_lengths, kept=kept, rows_per_shard=target_rows, window=window)
    ]
    return plan, reuse


def _write_shards(
    plan: list[tuple[list[Piece], int | None]],
    *,
    reuse: _Reuse,
    layout: _Layout,
    block_refs: list[Any],
    freq: Frequency,
    tmp: Path,
    opts: dict,
) -> dict[int, tuple[str, int, int]]:
    """write: one task per new shard, kept shards linked from the previous set. {k: (sha256, rows, bytes)}."""
    where = [(b, i) for _, b, i in layout.entries]
    pending = {}
    results: dict[int, tuple[str, int, int]] = {}
    for k, (pieces, source) in enumerate(plan):
        if source is not None:
            prev = reuse.shards[source]
            assert reuse.directory is not None
            link_or_copy(reuse.directory / prev.file, tmp / f"shard-{k:05d}.arrow")
            results[k] = (prev.sha256, prev.num_rows, prev.num_bytes)
            continue
        needed = sorted({where[p.series][0] for p in pieces})
        pos = {b: j for j, b in enumerate(needed)}
        args = [(pos[where[p.series][0]], where[p.series][1], p.row_start, p.row_stop, p.series) for p in pieces]
        sel = [p.series for p in pieces]
        ref = _write_remote.options(**opts).remote(
            args, layout.loc[sel], layout.scale[sel], layout.stored_cols, layout.pad_at, freq,
            *[block_refs[b] for b in needed],
        )  # fmt: skip
        pending[ref] = k
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(done[0])
        data, digest, num_rows = get_or_raise(done[0])
        with open(tmp / f"shard-{k:05d}.arrow", "wb") as f:
            f.write(memoryview(data))
        results[k] = (digest, num_rows, len(data))
        del data
    return results


def _build_manifest(cfg: DataConfig, layout: _Layout, shards: list[ShardInfo], *, freq: Frequency) -> Manifest:
    lengths = [s.num_rows for s in layout.series]
    covered = {sp: {g.series for sh in shards for g in sh.segments if g.windows[sp]} for sp in SPLITS}
    totals = Totals(
        num_series=len(layout.series),
        num_rows=sum(lengths),
        num_stored_rows=sum(s.num_rows for s in shards),
        num_shards=len(shards),
        num_bytes=sum(s.num_bytes for s in shards),
        raw_numeric_bytes=8 * (1 + len(value_columns(cfg))) * sum(lengths),
        windows={sp: sum(s.windows[sp] for s in shards) for sp in SPLITS},
        series_per_split={sp: len(covered[sp]) for sp in SPLITS},
        num_pad_rows=sum(layout.pads),
    )
    calendar = list(cfg.calendar_features)
    stored_cols = layout.stored_cols
    return Manifest(
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        data_config=cfg.model_dump(mode="json"),
        target_cols=list(cfg.target_cols),
        covariate_cols=list(cfg.covariate_cols),
        derived_cols=layout.derived,
        future_cols=list(cfg.future_cols),
        calendar_features=calendar,
        holidays=cfg.holidays,
        stored_cols=stored_cols,
        x_features=[*stored_cols, *calendar_names(calendar)],
        future_features=[*cfg.future_cols, *calendar_names(calendar)],
        lookback=cfg.lookback,
        horizon=cfg.horizon,
        stride=cfg.stride,
        freq=freq.seconds,
        freq_alias=freq.alias,
        season_lengths=frequencies.season_lengths(cfg.seasonality, freq.alias),
        scaler=cfg.scaler,
        scaler_scope=cfg.scaler_scope,
        shard_schema=dict(SHARD_SCHEMA),
        pad_col=PAD_COL if layout.pad_at is not None else None,
        series=layout.series,
        shards=shards,
        totals=totals,
        static_features=statics.feature_names(layout.static_enc),
        static_encoding=layout.static_enc,
    )


def _publish(manifest: Manifest, *, tmp: Path, out: Path) -> None:
    """Save the manifest into `tmp`, rename `tmp` to `out` and write `_SUCCESS` last."""
    manifest.save(tmp)
    check_output(tmp, manifest)  # raising here leaves no _SUCCESS, so nothing wrong is ever cached
    if out.exists():
        shutil.rmtree(out)  # an older or incomplete output of the same step; the new one replaces it
    os.replace(tmp, out)
    (out / SUCCESS_FILE).write_text(manifest.created_at + "\n")


def _fill_report(
    report: IngestReport,
    *,
    cfg: DataConfig,
    manifest: Manifest,
    notes: Notes,
    layout: _Layout,
    plan: list[tuple[list[Piece], int | None]],
    reuse: _Reuse,
) -> None:
    """What was written and reused, and the cleaning counts and warnings."""
    totals = manifest.totals
    report.num_series = totals.num_series
    report.num_rows = totals.num_rows
    report.counts = dict(notes.counts)
    report.warnings = notes.warnings
    report.num_shards = totals.num_shards
    report.num_bytes = totals.num_bytes
    report.raw_numeric_bytes = totals.raw_numeric_bytes
    report.windows = dict(totals.windows)
    report.series_per_split = dict(totals.series_per_split)
    report.num_padded_series = sum(p > 0 for p in layout.pads)
    report.num_reused_shards = len(reuse.shards)
    report.num_changed_series = reuse.num_changed
    report.rebuild_reason = reuse.reason
    written = {layout.series[p.series].name for pieces, source in plan if source is None for p in pieces}
    report.num_rewritten_series = len(written & reuse.unchanged)
    if 0 < report.windows.get("val", 0) < FEW_VAL_WINDOWS:
        report.warnings.append(
            f"only {report.windows['val']} validation window(s): early stopping and the epoch count of the final "
            "fit rest on them, and on so few they are noise; raise data.val_size (e.g. a year of steps on one "
            "weekly series) or add series"
        )
    if report.skipped_series:
        report.warnings.append(
            f"skipped {len(report.skipped_series)} series too short for "
            + ("horizon + 1 rows" if cfg.start_padding else "lookback + horizon + hold-out")
        )
