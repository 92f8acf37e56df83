"""manifest.json: everything a reader needs to turn Arrow shards into windows and back into original units.

Written last inside the temp directory of an ingest, so a manifest next to `_SUCCESS` always describes a
complete shard set.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from lstm_dist.data.errors import DataError
from lstm_dist.data.frequency import Frequency, from_seconds, parse, season_lengths
from lstm_dist.data.splits import Split, start_range, starts_in

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SUCCESS_FILE = "_SUCCESS"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ColumnStats(_Model):
    loc: float
    """Subtracted before scaling (mean, min or median)."""
    scale: float
    """Divisor after centring (std, max-min or IQR); 1 for constant columns."""


class SeriesInfo(_Model):
    name: str
    """Series identifier as in the input."""
    index: int
    """Dense integer index (sorted by name), the `series` value of batches and the embedding id."""
    num_rows: int
    """Rows after cleaning."""
    first_timestamp: int
    """Unix seconds of the first row."""
    last_timestamp: int
    """Unix seconds of the last row."""
    val_start: int
    """Row position where the validation part starts (train is rows [0, val_start))."""
    test_start: int
    """Row position where the test part starts."""
    scaler: dict[str, ColumnStats]
    """Scaler stats per stored column, fitted on rows [0, val_start) only."""
    target_lambda: dict[str, float] = Field(default_factory=dict)
    """Box-Cox lambda per target (data.target_transform=boxcox), fitted on rows [0, val_start); else empty."""
    static: list[float] = Field(default_factory=list)
    """Encoded static covariates (Manifest.static_features order); empty without data.static_cols."""
    sha256: str | None = None
    """Checksum of the series' cleaned rows (timestamps + stored columns, before scaling): an incremental
    ingest keeps a shard only where every series in it has the same checksum as before. None in manifests
    written before it existed (those are never reused)."""
    pad: int = 0
    """Padding rows stored before row 0 (data.start_padding; 0 for a series long enough without): its windows
    may start at rows -pad .. -1. Row positions here and in segments count real rows; padding rows are < 0."""


class Segment(_Model):
    series: int
    """Series index."""
    row_start: int
    """First stored row, in the series' own row positions."""
    row_stop: int
    """One past the last stored row (includes the halo)."""
    core_stop: int
    """This shard owns the windows starting in [row_start, core_stop)."""
    offset: int
    """Row of the shard file where this segment begins."""
    windows: dict[str, int]
    """Windows owned per split, at the manifest's stride."""


class ShardInfo(_Model):
    file: str
    """File name inside the shard directory."""
    num_rows: int
    """Rows in the file."""
    num_bytes: int
    """File size."""
    sha256: str
    """Checksum of the file."""
    segments: list[Segment]
    """Series chunks stored in this shard, in file order."""
    windows: dict[str, int]
    """Windows owned per split."""

    @property
    def series(self) -> list[int]:
        return [s.series for s in self.segments]


class Totals(_Model):
    num_series: int
    num_rows: int
    """Rows of all series after cleaning."""
    num_stored_rows: int
    """Rows in the shards (halo rows counted twice)."""
    num_shards: int
    num_bytes: int
    """Bytes of all shard files."""
    raw_numeric_bytes: int
    """8 bytes per timestamp and per numeric input value: the yardstick for storage overhead."""
    windows: dict[str, int]
    series_per_split: dict[str, int] = Field(default_factory=dict)
    """Series with at least one window per split (a short series may have train windows only)."""
    num_pad_rows: int = 0
    """Padding rows stored before short series (included in num_stored_rows, not in num_rows)."""


class Manifest(_Model):
    format_version: int = FORMAT_VERSION
    created_at: str
    data_config: dict[str, Any]
    """The DataConfig that produced the shards (model_dump)."""
    target_cols: list[str]
    covariate_cols: list[str]
    """Past-only covariates from the input."""
    derived_cols: list[str] = Field(default_factory=list)
    """Past-only features derived from the targets (lags, moving averages, RSI)."""
    future_cols: list[str]
    """Known-future covariates from the input."""
    calendar_features: list[str]
    """Calendar features, computed from timestamps when batches are read (never stored)."""
    holidays: str = ""
    """The public holiday calendar of the `holiday` calendar feature (data.holidays); empty without it."""
    stored_cols: list[str]
    """Column order of the float32 `features` matrix of each shard."""
    x_features: list[str]
    """Feature order of `x`: targets, covariates, derived, future covariates, calendar sin/cos."""
    future_features: list[str]
    """Feature order of `future`: future covariates, then calendar sin/cos."""
    lookback: int
    horizon: int
    stride: int
    freq: int
    """Sampling period in seconds; for a calendar frequency (months, business days) its average length, for display
    only: timestamps come from `frequency()`, never from `t + k * freq`."""
    scaler: str
    scaler_scope: str
    shard_schema: dict[str, str]
    """Arrow type of each shard column."""
    pad_col: str | None = None
    """Stored 0/1 column that is 1 on start-padding rows (a model input); None when no series is padded."""
    series: list[SeriesInfo]
    shards: list[ShardInfo]
    totals: Totals
    static_features: list[str] = Field(default_factory=list)
    """Names of the encoded static covariates (data.static_cols): `col` for numbers, `col=level` per text level."""
    static_encoding: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per static column, how it is encoded (see lstm_dist.data.statics), for series seen only at inference."""

    freq_alias: str = ""
    """The pandas offset alias of the sampling frequency (`h`, `MS`, `W-SUN`); empty in older manifests (then `freq` s)."""

    season_lengths: list[int] = Field(default_factory=list)
    """Season lengths in steps (data.seasonality, or the frequency's defaults); the first is the primary.
    Empty in older manifests (see `season_length`)."""

    _stats: tuple[np.ndarray, np.ndarray] | None = PrivateAttr(default=None)

    @property
    def num_targets(self) -> int:
        return len(self.target_cols)

    @property
    def num_features(self) -> int:
        return len(self.x_features)

    @property
    def num_future(self) -> int:
        return len(self.future_features)

    @property
    def num_series(self) -> int:
        return len(self.series)

    def segment_starts(self, seg: Segment, split: Split, *, stride: int | None = None) -> tuple[int, int]:
        """(first, count) of the window starts of `split` owned by `seg` (rows of its series), at `stride`
        (default: the manifest's)."""
        info = self.series[seg.series]
        lo, hi = start_range(
            split,
            num_rows=info.num_rows,
            val_start=info.val_start,
            test_start=info.test_start,
            lookback=self.lookback,
            horizon=self.horizon,
            pad=info.pad,
        )
        return starts_in(lo, hi, stride=stride or self.stride, begin=seg.row_start, end=seg.core_stop)

    def real_steps(self, x: np.ndarray) -> np.ndarray:
        """bool [..., L]: which input steps of `x` [..., L, F] are real rows, not start padding (all True
        when no series is padded). Baselines and histories built from windows must skip the others."""
        if self.pad_col is None:
            return np.ones(x.shape[:-1], dtype=bool)
        return x[..., self.x_features.index(self.pad_col)] < 0.5

    def frequency(self) -> Frequency:
        """The grid of the data: alias and timezone, with its step arithmetic."""
        tz = self.data_config.get("timezone") or "UTC"
        return parse(self.freq_alias, tz=tz) if self.freq_alias else from_seconds(self.freq, tz=tz)

    @property
    def season_length(self) -> int:
        """The primary season in steps: the seasonal-naive baseline's and the MASE scale's."""
        if self.season_lengths:
            return self.season_lengths[0]
        return season_lengths(self.data_config.get("seasonality"), self.frequency().alias)[0]

    def series_index(self) -> dict[str, int]:
        """Series name -> index."""
        return {s.name: s.index for s in self.series}

    def loc_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale), each float64 [S, len(stored_cols)]: the scaler of every stored column per series."""
        if self._stats is None:
            loc = np.array([[s.scaler[c].loc for c in self.stored_cols] for s in self.series], dtype=np.float64)
            scale = np.array([[s.scaler[c].scale for c in self.stored_cols] for s in self.series], dtype=np.float64)
            shape = (len(self.series), len(self.stored_cols))
            self._stats = (loc.reshape(shape), scale.reshape(shape))
        return self._stats

    def target_loc_scale(self, series_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(loc [S, T], scale [S, T]) of the targets of the given series: original = scaled * scale + loc."""
        loc, scale = self.loc_scale()
        idx = np.asarray(series_idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.series)):
            raise DataError(
                f"series index out of range 0..{len(self.series) - 1}: {idx[(idx < 0) | (idx >= len(self.series))][:5]}"
            )
        num_t = len(self.target_cols)  # targets are the first stored columns
        return loc[idx, :num_t], scale[idx, :num_t]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write manifest.json into `directory` (temp name, then rename)."""
        path = Path(directory) / MANIFEST_FILE
        tmp = path.with_name(f".{MANIFEST_FILE}.tmp-{uuid.uuid4().hex}")
        tmp.write_text(self.model_dump_json(indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Manifest:
        """Read manifest.json of a shard directory; refuses a directory without `_SUCCESS` (an unfinished ingest)."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not (directory / SUCCESS_FILE).exists():
            raise DataError(
                f"shard directory '{directory}' is not complete (no {SUCCESS_FILE} marker); "
                "run the ingest step again (lstm-dist data ingest)"
            )
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(
                f"shard directory '{directory}' has no {MANIFEST_FILE}; run the ingest step again"
            ) from None
        if raw.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: format_version {raw.get('format_version')} is not supported (this code reads "
                f"{FORMAT_VERSION}); run the ingest step again"
            )
        return cls.model_validate(raw)
