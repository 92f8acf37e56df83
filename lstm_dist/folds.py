"""Rolling-origin backtest: cutoffs, the input truncated at each cutoff, forecasts from a cutoff, the table.

For each of the last N cutoffs (S steps apart, the last leaving exactly one horizon after it) the model is
trained on the input truncated at that cutoff: every row after cutoff + horizon is removed, and the last
horizon rows become the test part (`data.test_size = horizon`), so training (train + validation parts)
only ever sees rows up to the cutoff. Its test split then holds exactly one window per series, whose origin
is the cutoff; the model forecasts it, and the statsforecast baselines are fitted on the same rows up to
the same cutoff. pipelines/backtest.py runs the cached steps; this module holds the pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lstm_dist.config import ConfigError, PipelineConfig
from lstm_dist.evaluate import ETS, MODEL, NAIVE, POINT_METRICS, SNAIVE, THETA, add_baselines, model_frame, score
from lstm_dist.tables import render_table

FORECASTERS = (MODEL, NAIVE, SNAIVE, ETS, THETA)


def cutoff_ends(history: pd.DataFrame, *, windows: int, step: int, horizon: int) -> pd.DataFrame:
    """One row per (fold, series): `fold` 1..windows (oldest first), `cutoff` (last observed time) and `end`
    (cutoff + horizon, the last row kept), counted in each series' own rows from its end."""
    rows = []
    for uid, g in history.groupby("unique_id", sort=True):
        ds = g["ds"].to_numpy()
        for fold in range(1, windows + 1):
            pos = len(ds) - 1 - horizon - (windows - fold) * step
            if pos < 0:
                raise ConfigError(
                    f"series '{uid}' has {len(ds)} rows: too short for backtest.windows={windows} x "
                    f"backtest.step={step} plus horizon {horizon}; lower backtest.windows or backtest.step"
                )
            rows.append({"fold": fold, "unique_id": uid, "cutoff": ds[pos], "end": ds[pos + horizon]})
    return pd.DataFrame(rows)


def read_input(cfg: PipelineConfig, files: list[str]) -> pd.DataFrame:
    """Every input row in the long layout (timestamp as UTC datetime, series name, value columns)."""
    from lstm_dist.data.readers import Notes, normalize, read_raw, value_columns

    parts = []
    for locator in files:
        names, codes, ts, values = normalize(
            read_raw(locator, cfg=cfg.data), cfg=cfg.data, source=locator, notes=Notes()
        )
        frame = pd.DataFrame(values, columns=value_columns(cfg.data))
        frame.insert(0, series_col(cfg), np.asarray(names, dtype=object)[codes])
        frame.insert(0, cfg.data.timestamp_col, ts.astype("datetime64[s]"))
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def series_col(cfg: PipelineConfig) -> str:
    return cfg.data.series_col if cfg.data.layout == "long" else "series_id"


def truncate(raw: pd.DataFrame, ends: pd.DataFrame, *, cfg: PipelineConfig, path: Path) -> Path:
    """Write the rows of `raw` up to each series' `end` (one fold of `cutoff_ends`) as a Parquet file."""
    end = raw[series_col(cfg)].map(dict(zip(ends["unique_id"], ends["end"], strict=True)))
    kept = raw[raw[cfg.data.timestamp_col] <= end.to_numpy()]
    path.parent.mkdir(parents=True, exist_ok=True)
    kept.sort_values([series_col(cfg), cfg.data.timestamp_col]).to_parquet(path, index=False)
    return path


def fold_config(cfg: PipelineConfig, *, path: Path) -> PipelineConfig:
    """The pipeline config of one fold: its truncated input, the last horizon as the test part."""
    data = cfg.data.model_copy(
        update={
            "path": str(path),
            "format": "parquet",
            "sample": None,
            "layout": "long",
            "series_col": series_col(cfg),
            "wide_series_cols": [],
            "test_size": float(cfg.data.horizon),
        }
    )
    return cfg.model_copy(update={"data": data})


def fold_frame(model, shard_dir: str, *, model_shards: str | None = None) -> pd.DataFrame:
    """The model's forecast of the one test window per series of a fold's shards (from its cutoff).

    `model_shards`: the shards the model was trained on when they are another fold's (refit_every > 1): the
    windows are then re-scaled into that model's units (promotion.RescaledWindows)."""
    from lstm_dist.data.manifest import Manifest
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.evaluate import target_history
    from lstm_dist.promotion import RescaledWindows

    ds = WindowDataset(shard_dir, split="test")
    history = target_history(shard_dir, ds.manifest)
    if model_shards is not None and Path(model_shards) != Path(shard_dir):
        ds = RescaledWindows(ds, Manifest.load(model_shards))
    return model_frame(model, ds, history=history)


def score_folds(frame: pd.DataFrame, history: pd.DataFrame, *, season: int) -> pd.DataFrame:
    """Metrics per fold and overall: rows (fold | 'all', forecaster), columns MASE, sMAPE, MAE, RMSE.

    `frame` holds every fold's forecasts with a `fold` column and the baselines; scores are per
    (series, cutoff) with the MASE scale from the history up to each cutoff, then averaged."""
    models = [m for m in FORECASTERS if m in frame and frame[m].notna().all()]
    per = score(frame, history, season=season, models=models, by_cutoff=True)
    folds = frame[["unique_id", "cutoff", "fold"]].drop_duplicates()
    per = per.merge(folds, on=["unique_id", "cutoff"], how="left")
    rows = []
    for fold, part in [*per.groupby("fold"), ("all", per)]:
        means = part.groupby("metric")[models].mean()
        for m in models:
            rows.append({"fold": str(fold), "forecaster": m, **{k: float(means.loc[k, m]) for k in POINT_METRICS}})
    return pd.DataFrame(rows)


def with_baselines(frame: pd.DataFrame, history: pd.DataFrame, *, season: int, slow_history: int = 0) -> pd.DataFrame:
    """The backtest's baselines: all four on every fold (folds are few), fitted up to each cutoff (AutoETS and
    AutoTheta on the last `slow_history` rows before it, 0: all)."""
    return add_baselines(frame, history, season=season, slow_on="all", slow_history=slow_history)


def table_text(table: pd.DataFrame) -> str:
    wide = table.pivot(index="forecaster", columns="fold", values="mase").reindex(
        [m for m in FORECASTERS if m in set(table["forecaster"])]
    )
    overall = table[table["fold"] == "all"].set_index("forecaster")[list(POINT_METRICS)]
    return (
        render_table(
            ["forecaster", *map(str, wide.columns)],
            [list(row) for row in wide.itertuples()],
            title="MASE per cutoff (fold 1 = oldest) and overall:",
        )
        + "\n\n"
        + render_table(
            ["forecaster", *overall.columns],
            [list(row) for row in overall.itertuples()],
            title="overall, mean over (series, cutoff) (sMAPE in %):",
        )
    )
