"""Inference batches from raw history, built by the same cleaning, feature and scaling code as ingest."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa

from lstm_dist.config import DataConfig
from lstm_dist.data import scalers, statics, transforms
from lstm_dist.data.errors import DataError
from lstm_dist.data.features import calendar_features, warmup_rows
from lstm_dist.data.ingest import clean_block, with_features
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.readers import Notes, normalize, numeric_column, timestamp_column


def _config(manifest: Manifest) -> DataConfig:
    return DataConfig.model_validate(manifest.data_config)


def make_inference_batch(history: pd.DataFrame, *, manifest: Manifest, future: pd.DataFrame | None = None) -> dict:
    """Model inputs for the step after the end of each series in `history`.

    `history` is raw data in the input's format and column names (long layout: timestamp, series, targets,
    covariates, future covariates). Each series is cleaned and featured like ingest did, then its last
    `lookback` rows are scaled with its manifest stats. A series the manifest does not know is scaled with
    stats fitted on its own history (a warning says so) and gets series index -1. `future` (rows of series,
    timestamp, future columns for the `horizon` steps after each series' end) is required when the manifest
    has future covariates.

    Returns x float32 [S, L, F], future float32 [S, H, Ff], series int64 [S], series_names list[str],
    t0 int64 [S] (first forecast timestamp), horizon_ts int64 [S, H] (every forecast timestamp), target_loc /
    target_scale / target_lambda float64 [S, T], static float32 [S, Fst] (encoded static covariates read from the
    history rows) and warnings.
    """
    cfg = _config(manifest)
    horizon, freq = manifest.horizon, manifest.frequency()
    notes = Notes()
    table = pa.Table.from_pandas(history, preserve_index=False)
    names, codes, ts, values = normalize(table, cfg=cfg, source="history", notes=notes)
    static_rows = statics.read_static(table, series_col=cfg.series_col, static_cols=cfg.static_cols, source="history")
    block = clean_block(names, codes, ts, values, cfg=cfg, freq=freq, notes=notes)
    lam = _lambdas(block, manifest=manifest, cfg=cfg)  # [S, T]
    block = transforms.transform_block(block, kind=cfg.target_transform, targets=cfg.target_cols, lam=lam)
    stored = with_features(block, cfg=cfg)  # [N, Fs] unscaled, exactly as ingest computes it
    if manifest.pad_col is not None:  # the mask column, 0 on real rows, where ingest stores it
        stored = np.insert(stored, manifest.stored_cols.index(manifest.pad_col), 0.0, axis=1)
    _check_lengths(block, manifest=manifest, cfg=cfg)
    series, loc, scale, unknown = _series_stats(block, stored, manifest=manifest)  # loc/scale [S, Fs]
    messages = [*notes.warnings, *unknown]
    num_s, num_t = len(block.names), len(manifest.target_cols)
    x, ts_in = _input_windows(block, stored, loc, scale, manifest=manifest)  # [S, L, Fs], [S, L]
    horizon_ts = freq.next_steps(block.ts[block.offsets[1:] - 1], horizon)  # [S, H] on the calendar grid
    t0 = horizon_ts[:, 0]  # [S]
    calendar, holidays = list(manifest.calendar_features), manifest.holidays
    if calendar:
        x = np.concatenate([x, calendar_features(ts_in, calendar, tz=freq.tz, holidays=holidays)], axis=2)  # [S, L, F]
    num_fut = len(manifest.future_cols)
    fut = np.zeros((num_s, horizon, 0), dtype=np.float32)
    if num_fut:
        raw = _future_values(future, cfg=cfg, names=block.names, horizon_ts=horizon_ts)  # [S, H, Fu]
        fut = scalers.transform(raw, loc[:, None, -num_fut:], scale[:, None, -num_fut:]).astype(np.float32)
    elif future is not None:
        messages.append("`future` was given but the manifest has no future_cols; it is ignored")
        warnings.warn(messages[-1], stacklevel=2)
    if calendar:
        fut = np.concatenate([fut, calendar_features(horizon_ts, calendar, tz=freq.tz, holidays=holidays)], axis=2)
    return {
        "x": x,
        "future": fut,
        "series": series,
        "series_names": list(block.names),
        "t0": t0,
        "horizon_ts": horizon_ts,
        "target_loc": loc[:, :num_t],
        "target_scale": scale[:, :num_t],
        "target_lambda": lam,
        "static": np.asarray(
            [statics.encode(static_rows[n], manifest.static_encoding) for n in block.names] if cfg.static_cols else [],
            dtype=np.float32,
        ).reshape(num_s, len(manifest.static_features)),
        "warnings": messages,
    }


def _check_lengths(block, *, manifest: Manifest, cfg: DataConfig) -> None:
    """Every series has the rows its input window and derived features need (unless the model knows padding)."""
    lookback = manifest.lookback
    need = lookback + warmup_rows(lags=cfg.lags, moving_averages=cfg.moving_averages, rsi=cfg.rsi_period)
    for name, n in zip(block.names, block.lengths, strict=True):
        # With a start-padding mask the model has seen series that begin inside a window: a shorter history
        # is taken as the whole series (derived features start from what it has, as ingest computes them).
        if n < need and manifest.pad_col is None:
            raise DataError(
                f"series '{name}' has {n} rows of history after cleaning; inference needs its last {need} rows "
                f"(lookback {lookback}"
                + (f" + {need - lookback} for lags/moving averages/RSI)" if need > lookback else ")")
                + "; this model was trained without start padding (no series of its data needed it), so it "
                "cannot take a shorter history"
            )


def _series_stats(block, stored: np.ndarray, *, manifest: Manifest) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Manifest index (-1: unknown), scaler loc and scale [S, Fs] of each series, and the warnings given.

    A known series keeps its manifest stats; an unknown one takes the global stats, else stats fitted on its own
    history."""
    known = manifest.series_index()
    all_loc, all_scale = manifest.loc_scale()
    num_s = len(block.names)
    loc, scale = np.zeros((num_s, stored.shape[1])), np.ones((num_s, stored.shape[1]))
    series = np.full(num_s, -1, dtype=np.int64)
    messages = []
    for i, name in enumerate(block.names):
        if name in known:
            series[i] = known[name]
            loc[i], scale[i] = all_loc[series[i]], all_scale[series[i]]
        elif manifest.scaler_scope == "global" and len(all_loc):
            loc[i], scale[i] = all_loc[0], all_scale[0]
        else:
            rows = slice(block.offsets[i], block.offsets[i + 1])
            loc[i], scale[i] = scalers.fit(stored[rows], kind=manifest.scaler)
            msg = f"series '{name}' is not in the manifest; scaled with stats fitted on its own {block.lengths[i]} rows of history"
            warnings.warn(msg, stacklevel=3)  # the caller of make_inference_batch
            messages.append(msg)
    return series, loc, scale, messages


def _input_windows(
    block, stored: np.ndarray, loc: np.ndarray, scale: np.ndarray, *, manifest: Manifest
) -> tuple[np.ndarray, np.ndarray]:
    """The last `lookback` rows of each series, scaled (x float32 [S, L, Fs]), and their timestamps [S, L]."""
    lookback, freq = manifest.lookback, manifest.frequency()
    ends = block.offsets[1:]  # [S]
    wanted = ends[:, None] - lookback + np.arange(lookback)  # [S, L]
    rows = np.maximum(wanted, block.offsets[:-1, None])  # steps before a series' first row read that row ...
    x = scalers.transform(stored[rows], loc[:, None, :], scale[:, None, :]).astype(np.float32)  # [S, L, Fs]
    ts_in = block.ts[rows]  # [S, L]
    if manifest.pad_col is not None:  # ... and become padding as ingest stores it: values 0 (scaled), mask 1
        padding = wanted < rows  # [S, L]
        x[padding] = 0.0
        x[:, :, manifest.stored_cols.index(manifest.pad_col)] = padding
        for s in np.flatnonzero(padding.any(axis=1)):  # the grid continued backwards over the padding
            num_pad = int(padding[s].sum())
            ts_in[s, :num_pad] = freq.previous_steps(block.ts[block.offsets[s]], num_pad)
    return x, ts_in


def _lambdas(block, *, manifest: Manifest, cfg: DataConfig) -> np.ndarray:
    """Box-Cox lambdas [S, T] of the series in `block`: the manifest's, or fitted on its own history if unknown."""
    lam = np.full((len(block.names), len(cfg.target_cols)), np.nan)
    if cfg.target_transform != "boxcox":
        return lam
    known = manifest.series_index()
    new = [i for i, name in enumerate(block.names) if name not in known]
    if new:  # the same rule as the scaler of an unknown series: its own history is all there is
        sub = block.take_series(np.isin(np.arange(len(block.names)), new))
        lam[new] = transforms.fit_block(sub, kind="boxcox", targets=cfg.target_cols, train_rows=sub.lengths)
    old = [i for i, name in enumerate(block.names) if name in known]
    if old:
        lam[old] = transforms.series_lambdas(manifest, np.array([known[block.names[i]] for i in old]))
    return lam


def _future_values(
    future: pd.DataFrame | None, *, cfg: DataConfig, names: list[str], horizon_ts: np.ndarray
) -> np.ndarray:
    """float64 [S, H, Fu]: the known-future covariates of each series over its forecast horizon."""
    if future is None:
        raise DataError(
            f"the model uses known-future covariates {cfg.future_cols}; pass `future` with columns "
            f"{[cfg.series_col, cfg.timestamp_col, *cfg.future_cols]} for the {horizon_ts.shape[1]} steps after each series"
        )
    cols = [cfg.series_col, cfg.timestamp_col, *cfg.future_cols]
    missing = [c for c in cols if c not in future.columns]
    if missing:
        raise DataError(f"future: column(s) {missing} not found; it has columns {list(future.columns)}")
    table = pa.Table.from_pandas(future[cols], preserve_index=False)
    ts = timestamp_column(
        table.column(cfg.timestamp_col), name=cfg.timestamp_col, source="future", notes=Notes(), tz=cfg.timezone
    )
    vals = np.stack([numeric_column(table.column(c), name=c, source="future") for c in cfg.future_cols], axis=1)
    lookup = {(str(s), int(t)): i for i, (s, t) in enumerate(zip(future[cfg.series_col].astype(str), ts, strict=True))}
    out = np.empty((len(names), horizon_ts.shape[1], len(cfg.future_cols)))
    for i, name in enumerate(names):
        for h, t in enumerate(horizon_ts[i]):
            j = lookup.get((name, int(t)))
            if j is None:
                raise DataError(
                    f"future: no row for series '{name}' at {np.datetime64(int(t), 's')} (forecast step {h + 1})"
                )
            out[i, h] = vals[j]
    if np.isnan(out).any():
        raise DataError("future: known-future covariates must not be missing over the horizon")
    return out
