"""Forecast accuracy as the field measures it, in original units, next to statsforecast baselines.

Everything is scored from one long frame (`unique_id, ds, cutoff, step, y, <forecaster>...`): one row per
forecast window (series, cutoff), step and target. `cutoff` is the last observed time of the window (its
forecast origin). The model's rows come from `model_frame`; `add_baselines` adds naive, seasonal naive
(every window) and AutoETS / AutoTheta (fitted on the history up to the origin, or its last N rows); `score` hands the
frame to utilsforecast (MASE with the in-sample seasonal-naive scale, sMAPE, MAE, RMSE, pinball loss and
interval coverage), per series, then averaged over series as `utilsforecast.evaluation.evaluate` does.
The evaluate step and the backtest both score this frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lstm_dist.data import transforms
from lstm_dist.data.frequency import season_lengths
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.transforms import original_units
from lstm_dist.models import Forecaster
from lstm_dist.tables import format_number, render_table

MODEL, NAIVE, SNAIVE, ETS, THETA = "model", "naive", "snaive", "ets", "theta"
LABELS = {MODEL: "model", NAIVE: "naive (last value)", SNAIVE: "seasonal naive", ETS: "AutoETS", THETA: "AutoTheta"}
POINT_METRICS = ("mase", "smape", "mae", "rmse")
LAST = "last_"  # metrics on the last test window of each series only (where ETS and Theta are fitted)


def season_of(source: Any) -> int:
    """Season length in steps of a DataConfig, a Manifest or a manifest's `data_config` dict.

    The one place that decides it: a manifest's resolved season, else data.seasonality, else the default of
    data.freq (lstm_dist.data.frequency)."""
    if isinstance(source, Manifest):
        return source.season_length
    if isinstance(source, dict):
        value, freq = source.get("seasonality"), source.get("freq")
    else:
        value, freq = source.seasonality, source.freq
    if value is None and not freq:
        raise ValueError("data.seasonality is unset and data.freq too: set either (the season follows the freq)")
    return season_lengths(value, freq)[0]


# ---------------------------------------------------------------------------------------------
# Frames


def target_history(shard_dir: str | Path, manifest: Manifest | None = None) -> pd.DataFrame:
    """Every row of every series' targets in original units: `unique_id, ds, y` (sorted), from the shards."""
    from lstm_dist.data.shards import open_shard

    m = manifest or Manifest.load(shard_dir)
    loc, scale = m.target_loc_scale(np.arange(m.num_series))  # [S, T]
    ts_parts: dict[int, list[np.ndarray]] = {}
    y_parts: dict[int, list[np.ndarray]] = {}
    for shard in m.shards:
        opened = open_shard(Path(shard_dir) / shard.file)
        for seg in shard.segments:
            skip = max(0, -seg.row_start)  # start padding (rows before the series' first) is no history
            rows = slice(seg.offset + skip, seg.offset + seg.row_stop - seg.row_start)
            ts_parts.setdefault(seg.series, []).append(np.asarray(opened.ts[rows]))
            y_parts.setdefault(seg.series, []).append(np.asarray(opened.features[rows, : m.num_targets]))
    frames = []
    for s in sorted(ts_parts):
        ts, first = np.unique(np.concatenate(ts_parts[s]), return_index=True)  # halo rows appear twice
        y = np.concatenate(y_parts[s])[first] * scale[s] + loc[s]  # [N, T] scaler undone
        lam = transforms.series_lambdas(m, np.array([s]))[0]
        y = transforms.inverse(y, lam, kind=transforms.kind_of(m))  # [N, T] original units
        for t in range(m.num_targets):
            frames.append(pd.DataFrame({"unique_id": _uid(m, s, t), "ds": _time(ts), "y": y[:, t].astype(np.float64)}))
    return pd.concat(frames, ignore_index=True)


def _uid(m: Manifest, series: int, target: int) -> str:
    name = m.series[series].name
    return name if m.num_targets == 1 else f"{name}:{m.target_cols[target]}"


def _time(unix_s: np.ndarray) -> np.ndarray:
    return np.asarray(unix_s, dtype=np.int64).astype("datetime64[s]").astype("datetime64[ns]")


@torch.no_grad()
def model_frame(model: Forecaster, ds, *, history: pd.DataFrame, batch_size: int = 512) -> pd.DataFrame:
    """The model's forecasts of every window of `ds` as the long frame (original units; `y` from `history`).

    `ds` is a WindowDataset or a promotion.RescaledWindows (another model's scaling of the same windows):
    forecasts are un-scaled with `ds.manifest` (the model's), windows are placed with the data's own."""
    if len(ds) == 0:
        raise ValueError(f"the {ds.split} split has no windows; lower data.lookback/horizon or raise data.test_size")
    data = getattr(ds, "ds", ds)  # the data's WindowDataset under a RescaledWindows
    m, horizon = data.manifest, ds.horizon
    model.eval()
    parts = []
    for start in range(0, len(ds), batch_size):
        idx = np.arange(start, min(start + batch_size, len(ds)))
        b = ds.batch(idx)
        future = torch.from_numpy(b["future"]) if b["future"].shape[-1] else None
        out = model.predict(torch.from_numpy(b["x"]), future=future, series=torch.from_numpy(b["series"]))
        # original units with the model's stats (a RescaledWindows refuses another target transform)
        columns = {MODEL: original_units(model.point(out).numpy(), b["series"], ds.manifest)}  # [B, H, T]
        for label, values in (model.interval(out) or {}).items():
            columns[f"{MODEL}_{label}"] = original_units(values.numpy(), b["series"], ds.manifest)
        series = data.locate(idx)[2]  # the data's series index of each window
        parts.append(_window_rows(m, series, np.asarray(b["t0"]), columns, horizon=horizon))
    frame = pd.concat(parts, ignore_index=True)
    return _attach_actuals(frame, history)


def _window_rows(m: Manifest, series: np.ndarray, t0: np.ndarray, columns: dict[str, np.ndarray], *, horizon: int):
    """Rows (window, step, target) of forecasts [B, H, T]; ds/cutoff are filled in from the history later."""
    b, t = len(series), m.num_targets
    uid = np.array([[_uid(m, s, k) for k in range(t)] for s in series], dtype=object)  # [B, T]
    frame = {
        "unique_id": np.broadcast_to(uid[:, None, :], (b, horizon, t)).reshape(-1),
        "t0": np.broadcast_to(_time(t0)[:, None, None], (b, horizon, t)).reshape(-1),
        "step": np.broadcast_to(np.arange(1, horizon + 1)[None, :, None], (b, horizon, t)).reshape(-1),
    }
    frame.update({name: values.reshape(-1).astype(np.float64) for name, values in columns.items()})
    return pd.DataFrame(frame)


def _attach_actuals(frame: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """ds, cutoff and y of each row from the series' own rows (right on irregular grids too)."""
    pos = history.groupby("unique_id", sort=False).cumcount().rename("pos")
    hist = pd.concat([history[["unique_id", "ds"]], pos], axis=1)
    first = frame.merge(hist.rename(columns={"ds": "t0"}), on=["unique_id", "t0"], how="left", validate="many_to_one")
    if first["pos"].isna().any():
        raise ValueError("a forecast window starts at a time the series' history does not have (corrupt shards?)")
    starts = history.groupby("unique_id", sort=False).cumcount() == 0
    offset = pd.Series(np.flatnonzero(starts), index=history["unique_id"][starts].to_numpy())
    base = offset.loc[first["unique_id"]].to_numpy() + first["pos"].to_numpy().astype(np.int64)
    frame = frame.drop(columns="t0")
    frame.insert(1, "ds", history["ds"].to_numpy()[base + frame["step"].to_numpy() - 1])
    frame.insert(2, "cutoff", history["ds"].to_numpy()[base - 1])
    frame.insert(4, "y", history["y"].to_numpy()[base + frame["step"].to_numpy() - 1])
    return frame


# ---------------------------------------------------------------------------------------------
# Baselines (statsforecast)


def add_baselines(
    frame: pd.DataFrame,
    history: pd.DataFrame,
    *,
    season: int,
    slow_on: str = "last",
    n_jobs: int = 1,
    slow_history: int = 0,
) -> pd.DataFrame:
    """Naive and seasonal naive on every window of `frame`; AutoETS and AutoTheta on the last window of each
    series (`slow_on="last"`, they cost ~0.1-1 s a fit) or on every window (`"all"`), fitted in `n_jobs`
    processes on the last `slow_history` rows (0: all). Each baseline sees only the series' rows up to the
    window's cutoff. Missing forecasts (ETS/Theta elsewhere) are NaN."""
    from statsforecast.models import AutoETS, AutoTheta, Naive, SeasonalNaive

    windows = frame[["unique_id", "cutoff"]].drop_duplicates().reset_index(drop=True)
    horizon = int(frame["step"].max())
    # The seasonal naive and naive forecasts depend on the last season only: fit on that, it is exact.
    fast = _forecast_windows(
        windows, history, horizon=horizon, keep=season, models={NAIVE: Naive(), SNAIVE: SeasonalNaive(season)}
    )
    slow_windows = windows if slow_on == "all" else windows.groupby("unique_id", sort=False).tail(1)
    slow = _forecast_windows(
        slow_windows.reset_index(drop=True),
        history,
        horizon=horizon,
        keep=slow_history or None,
        models={ETS: AutoETS(season_length=season), THETA: AutoTheta(season_length=season)},
        n_jobs=n_jobs,
    )
    keys = ["unique_id", "cutoff", "step"]
    frame = frame.drop(columns=[c for c in (NAIVE, SNAIVE, ETS, THETA) if c in frame], errors="ignore")
    return frame.merge(fast, on=keys, how="left").merge(slow, on=keys, how="left")


def _forecast_windows(
    windows: pd.DataFrame,
    history: pd.DataFrame,
    *,
    horizon: int,
    keep: int | None,
    models: dict[str, Any],
    n_jobs: int = 1,
) -> pd.DataFrame:
    """statsforecast forecasts of `horizon` steps after each (unique_id, cutoff) in `windows`, each fitted on
    that series' rows up to its cutoff (the last `keep` of them when set). Integer time: one row = one step."""
    from statsforecast import StatsForecast
    from statsforecast.models import Naive

    sf = StatsForecast(models=list(models.values()), freq=1, n_jobs=n_jobs, fallback_model=Naive())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short-history notes per window; NaN forecasts say the same
        out = sf.forecast(df=_panel(windows, history, keep=keep), h=horizon)
    out = out.rename(columns={repr(model): name for name, model in models.items()})
    out = out.sort_values(["unique_id", "ds"], kind="stable")
    out["step"] = out.groupby("unique_id").cumcount() + 1
    out["cutoff"] = windows["cutoff"].to_numpy()[out["unique_id"].to_numpy()]
    out["unique_id"] = windows["unique_id"].to_numpy()[out["unique_id"].to_numpy()]
    return out[["unique_id", "cutoff", "step", *models]]


def _panel(windows: pd.DataFrame, history: pd.DataFrame, *, keep: int | None) -> pd.DataFrame:
    """One statsforecast frame with window k's series up to its cutoff (its last `keep` rows when set) as series
    k, on an integer time axis. Built from array slices: a DataFrame per window cost ~0.5 ms each."""
    by_id = {uid: (g["ds"].to_numpy(), g["y"].to_numpy()) for uid, g in history.groupby("unique_id", sort=False)}
    pieces = []
    for uid, cutoff in zip(windows["unique_id"], windows["cutoff"].to_numpy(), strict=True):
        ds, y = by_id[uid]
        end = int(np.searchsorted(ds, cutoff, side="right"))
        pieces.append(y[max(0, end - keep) if keep else 0 : end])
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # each row's window's first row in the frame
    return pd.DataFrame(
        {
            "unique_id": np.repeat(np.arange(len(pieces)), lengths),
            "ds": np.arange(int(lengths.sum())) - first,
            "y": np.concatenate(pieces) if pieces else np.empty(0),
        }
    )


# ---------------------------------------------------------------------------------------------
# Scores (utilsforecast)


def score(
    frame: pd.DataFrame, history: pd.DataFrame, *, season: int, models: list[str], by_cutoff: bool = False
) -> pd.DataFrame:
    """utilsforecast metrics per series (and per cutoff with `by_cutoff`): rows `unique_id[, cutoff], metric`,
    one column per forecaster. MASE's scale is the in-sample seasonal-naive MAE of the series' history
    before the forecast windows: up to each window's cutoff with `by_cutoff`, else up to the series' first
    cutoff (one scale per series over all its windows: the test split's windows share the train part)."""
    from functools import partial

    from utilsforecast.evaluation import evaluate
    from utilsforecast.losses import mae, mase, rmse, smape

    metrics = [partial(mase, seasonality=season), smape, mae, rmse]
    cols = ["unique_id", "ds", "y", *models]
    if by_cutoff:
        scores = evaluate(frame[[*cols, "cutoff"]], metrics=metrics, models=models, train_df=history)
    else:
        first = frame.groupby("unique_id")["cutoff"].min()
        train = history[history["unique_id"].isin(first.index)]
        train = train[train["ds"] <= train["unique_id"].map(first)]
        scores = evaluate(frame[cols], metrics=metrics, models=models, train_df=train)
    # utilsforecast's sMAPE is mean(|y - f| / (|y| + |f|)), in [0, 1]: shown in percent (0-100).
    scores.loc[scores["metric"] == "smape", models] *= 100
    return scores


def interval_scores(frame: pd.DataFrame) -> dict[str, float]:
    """Pinball loss (mean over the model's quantiles) and coverage of each central interval (q, 1 - q),
    per series then averaged; {} for a point model."""
    from utilsforecast.losses import coverage, quantile_loss

    cols = {float(c.split("_q", 1)[1]): c for c in frame if c.startswith(f"{MODEL}_q")}  # model_q0.1 -> 0.1
    qs = sorted(cols)
    if not qs:
        return {}
    pinball = [quantile_loss(frame, models={MODEL: cols[q]}, q=q)[MODEL].mean() for q in qs]
    out = {f"{MODEL}_pinball": float(np.mean(pinball))}
    for q in qs:
        partner = next((p for p in qs if np.isclose(p, 1 - q)), None)
        if q < 0.5 and partner is not None:
            level = int(round(100 * (1 - 2 * q)))
            pair = frame.rename(columns={cols[q]: f"{MODEL}-lo-{level}", cols[partner]: f"{MODEL}-hi-{level}"})
            out[f"{MODEL}_coverage{level}"] = float(coverage(pair, models=[MODEL], level=level)[MODEL].mean())
    return out


def summarize(scores: pd.DataFrame, *, prefix: str = "") -> dict[str, float]:
    """{'<prefix><forecaster>_<metric>': mean over series} from `score`'s per-series rows."""
    models = [c for c in scores.columns if c not in ("unique_id", "cutoff", "metric")]
    means = scores.groupby("metric")[models].mean()
    return {f"{prefix}{m}_{metric}": float(means.loc[metric, m]) for metric in means.index for m in models}


# ---------------------------------------------------------------------------------------------
# The evaluate step


@dataclass
class Evaluation:
    """Test metrics of the model and the baselines; `by_step` is the model's MAE per horizon step."""

    metrics: dict[str, float]
    by_step: np.ndarray
    num_windows: int
    num_last: int = 0

    def table(self) -> str:
        """Model vs baselines, side by side (MASE < 1: better than the in-sample seasonal naive)."""
        return metrics_table(self.metrics, num_windows=self.num_windows, num_last=self.num_last)


def metrics_table(m: dict[str, float], *, num_windows: int | None = None, num_last: int | None = None) -> str:
    columns = ["", "MASE", "sMAPE %", "MAE", "RMSE"]

    def rows(prefix: str, names: tuple[str, ...]) -> list[list[object]]:
        return [
            [LABELS[key], *(m.get(f"{prefix}{key}_{metric}", float("nan")) for metric in POINT_METRICS)]
            for key in names
            if f"{prefix}{key}_mae" in m
        ]

    title = f"test windows{f' ({num_windows})' if num_windows else ''}:"
    table = rows("", (MODEL, NAIVE, SNAIVE))
    if num_windows and num_windows == num_last:  # one test window a series: the last-window table is the same
        parts = [render_table(columns, table + rows(LAST, (ETS, THETA)), title=title)]
    else:
        parts = [render_table(columns, table, title=title)]
        if f"{LAST}{ETS}_mae" in m:
            title = f"last test window of each series{f' ({num_last})' if num_last else ''}:"
            parts.append(render_table(columns, rows(LAST, (MODEL, NAIVE, SNAIVE, ETS, THETA)), title=title))
    extra = {k: v for k, v in m.items() if "pinball" in k or "coverage" in k}
    if extra:
        parts.append("  ".join(f"{k} {format_number(v)}" for k, v in extra.items()))
    return "\n".join(parts)


def evaluate_model(
    model: Forecaster,
    ds,
    *,
    season: int,
    baselines: bool = True,
    history: pd.DataFrame | None = None,
    n_jobs: int = 1,
    slow_history: int = 0,
) -> Evaluation:
    """Score the model on every window of `ds` (a test split) and, with `baselines`, the statsforecast
    baselines on the same windows (ETS/Theta: last window per series, fitted in `n_jobs` processes on the last
    `slow_history` rows, 0: all); see the module docstring."""
    data = getattr(ds, "ds", ds)
    if history is None:
        history = target_history(data.shard_dir, data.manifest)
    frame = model_frame(model, ds, history=history)
    models = [MODEL]
    if baselines:
        frame = add_baselines(frame, history, season=season, n_jobs=n_jobs, slow_history=slow_history)
        models += [NAIVE, SNAIVE]
    metrics = summarize(score(frame, history, season=season, models=models))
    metrics.update(interval_scores(frame))
    num_last = 0
    if baselines:
        last = frame[frame[ETS].notna()]
        num_last = len(last[["unique_id", "cutoff"]].drop_duplicates())
        full = [MODEL, NAIVE, SNAIVE, ETS, THETA]
        metrics.update(summarize(score(last, history, season=season, models=full), prefix=LAST))
        for key in (ETS, THETA):  # their only scores: also under the plain names the table and readers use
            metrics.update({f"{key}_{metric}": metrics[f"{LAST}{key}_{metric}"] for metric in POINT_METRICS})
    by_step = (frame[MODEL] - frame["y"]).abs().groupby(frame["step"]).mean().to_numpy()
    num_windows = len(frame[["unique_id", "cutoff"]].drop_duplicates())
    return Evaluation(metrics=metrics, by_step=by_step, num_windows=num_windows, num_last=num_last)


def evaluate_checkpoint(checkpoint: str, shard_dir: str, n_jobs: int = 1, slow_history: int = 0) -> dict[str, Any]:
    """The evaluate step's work: score the best checkpoint on the test split (in the driver for small data, else
    as a Ray task, so it runs wherever the CPUs are free); the statistical baselines are fitted in `n_jobs`
    processes, AutoETS and AutoTheta on each series' last `slow_history` rows (0: all).

    Here rather than with the pipeline's steps: a Ray worker running it imports this module, not the pipelines
    and MLflow behind them."""
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.models.saved import load_model
    from lstm_dist.storage import local_copy

    model, test = load_model(local_copy(checkpoint)), WindowDataset(local_copy(shard_dir), split="test")
    # One thread, as in a one-CPU Ray task (Ray sets OMP_NUM_THREADS=1 there): a multi-threaded matmul may
    # sum in another order, and the scores must not depend on where the step ran.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        season = test.manifest.season_length
        evaluation = evaluate_model(model, test, season=season, n_jobs=n_jobs, slow_history=slow_history)
    finally:
        torch.set_num_threads(threads)
    return {
        "metrics": evaluation.metrics,
        "by_step": evaluation.by_step.tolist(),
        "num_windows": evaluation.num_windows,
        "num_last_windows": evaluation.num_last,
        "table": evaluation.table(),
    }
