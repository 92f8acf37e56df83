"""The MLflow pyfunc forecaster: raw history in (long format), forecasts in original units out.

The logged model holds the trained network (`model.pt`) and the shard manifest (scalers, feature
definitions, column roles, lookback/horizon), so `mlflow.pyfunc.load_model(...)` in a fresh process,
or `mlflow models serve`, needs only this package installed: no work dir, no shards.

Input: rows of (timestamp, series, targets, covariates[, future covariates][, static columns]) with the input's column
names, at least `lookback` rows per series (plus the warm-up of lags/moving averages); other columns are
ignored (the signature lists only the used ones). When the model uses known-future covariates, each series
also carries its next `horizon` rows with the targets left empty: those rows are the known future, not
history. `params={"as_of": T}` forecasts from the cutoff T instead of the end: rows after T are not
input (with known-future covariates they give the future values). In Python,
`ForecastModel.forecast(history, as_of=..., future=...)` also takes the future rows as their own frame.
Output: one row per (series, forecast step) with the point forecast per target and, for quantile/gaussian
models, `<target>_q0.1`-style interval columns. `log_forecaster` logs (and registers) it from a run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from lstm_dist.config import PipelineConfig
from lstm_dist.data.errors import DataError
from lstm_dist.data.manifest import Manifest
from lstm_dist.models.saved import MODEL_FILE, load_model, model_file
from lstm_dist.registry import EVAL_KEY_TAG, MANIFEST_FILE, Registry
from lstm_dist.tracking import Tracker

HELDOUT_ARTIFACT = "heldout_model"  # the evaluated model's weights when `model` was refit on all rows
PREDICT_PARAMS = {"as_of": ""}  # the pyfunc's params schema: "" = forecast from the end of the history


class ForecastModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: `predict(history_df)` -> one row per (series, forecast step)."""

    def load_context(self, context) -> None:
        self.load_artifacts(context.artifacts)

    def load_artifacts(self, artifacts: dict[str, str]) -> None:
        self.net = load_model(artifacts["model"])
        # The held-out model of a refit version: what promotion scores (the refit one trained on the test rows).
        self.heldout_net = load_model(artifacts[HELDOUT_ARTIFACT]) if artifacts.get(HELDOUT_ARTIFACT) else None
        # Read the file directly: the artifact copy has no _SUCCESS marker beside it (Manifest.load wants one).
        self.manifest = Manifest.model_validate_json(Path(artifacts["manifest"]).read_text())

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.forecast(model_input, as_of=(params or {}).get("as_of") or None)

    def __getstate__(self) -> dict:
        # Weights and manifest travel as artifact files, not inside the pickled Python object.
        return {}

    @torch.no_grad()
    def forecast(
        self, history: pd.DataFrame, as_of: str | pd.Timestamp | None = None, future: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Forecast the `horizon` steps after the last observed row of each series in `history`.

        `as_of`: forecast from this cutoff instead: rows after it are not input (the forecast starts at the
        first step after it). `future`: rows of (series, timestamp, future columns) over the horizon, for a
        model with known-future covariates; without it they come from the rows of `history` after the
        cutoff or after each series' last observed target."""
        from lstm_dist.data.inference import make_inference_batch
        from lstm_dist.data.transforms import original_units

        m = self.manifest
        history, future = resolve_inputs(history, m, as_of=as_of, future=future)
        batch = make_inference_batch(history, manifest=m, future=future)
        fut = torch.from_numpy(batch["future"]) if batch["future"].shape[-1] else None
        series = torch.from_numpy(np.maximum(batch["series"], 0))  # unknown series (-1): embedding of series 0
        static = torch.from_numpy(batch["static"]) if batch["static"].shape[-1] else None  # from the history rows
        out = self.net.predict(torch.from_numpy(batch["x"]), future=fut, series=series, static=static)  # [S, H, T, P]
        stats = {"loc": batch["target_loc"], "scale": batch["target_scale"], "lam": batch["target_lambda"]}
        point = original_units(self.net.point(out).numpy(), batch["series"], m, **stats)  # [S, H, T]
        num_series, horizon = point.shape[:2]
        times = batch["horizon_ts"].astype("datetime64[s]").astype("datetime64[ns]")  # [S, H] on the calendar grid
        tz = m.frequency().tz
        stamps = (
            times.reshape(-1) if tz == "UTC" else pd.DatetimeIndex(times.reshape(-1)).tz_localize("UTC").tz_convert(tz)
        )
        cfg = m.data_config
        frame: dict[str, np.ndarray] = {
            cfg.get("series_col", "series_id"): np.repeat(np.asarray(batch["series_names"], dtype=object), horizon),
            cfg.get("timestamp_col", "timestamp"): stamps,  # naive UTC, or local time with data.timezone
            "step": np.tile(np.arange(1, horizon + 1), num_series),
        }
        for t, name in enumerate(m.target_cols):
            frame[name] = point[:, :, t].reshape(-1)
        for label, values in (self.net.interval(out) or {}).items():
            values = original_units(values.numpy(), batch["series"], m, **stats)  # [S, H, T]
            for t, name in enumerate(m.target_cols):
                frame[f"{name}_{label}"] = values[:, :, t].reshape(-1)
        return pd.DataFrame(frame)


def log_forecaster(
    tracker: Tracker,
    *,
    checkpoint_dir: Path,
    shard_dir: Path,
    input_example: pd.DataFrame,
    registered_name: str | None,
    version_tags: dict[str, Any] | None = None,
    heldout_checkpoint: Path | None = None,
    description: str = "",
) -> tuple[str, str | None]:
    """Log the pyfunc forecaster (network + scalers + feature definitions); returns (model URI, version).

    `heldout_checkpoint`: when the logged network was refit on all rows, the evaluated (held-out) model's
    checkpoint, kept as artifact `heldout_model`: promotion re-scores a champion with it.
    `description`: the registered version's description (its model card).

    With `registered_name`, registration is idempotent per evaluation: a version already registered
    from the same `lstm_dist.evaluate_key` tag is returned instead of registering a duplicate (a rerun
    after a crash between registration and promotion)."""
    from mlflow.models import infer_signature

    registry = Registry(tracker.uri)
    version_tags = {k: str(v) for k, v in (version_tags or {}).items()}
    if registered_name and EVAL_KEY_TAG in version_tags:
        existing = registry.find_version(registered_name, tag=EVAL_KEY_TAG, value=version_tags[EVAL_KEY_TAG])
        if existing is not None:
            return f"models:/{registered_name}/{existing.version}", str(existing.version)
    artifacts = {"model": str(model_file(checkpoint_dir)), "manifest": str(Path(shard_dir) / MANIFEST_FILE)}
    if heldout_checkpoint is not None:
        artifacts[HELDOUT_ARTIFACT] = str(model_file(heldout_checkpoint))
    python_model = ForecastModel()
    python_model.load_artifacts(artifacts)
    output_example = python_model.forecast(input_example)
    # Logged into the active (pipeline) run, which start_pipeline_run opened with the fluent API.
    with _quiet_model_logging():
        signature = infer_signature(input_example, output_example, params=PREDICT_PARAMS)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts=artifacts,
            signature=signature,
            input_example=input_example,
            pip_requirements=_pip_requirements(),
        )
    if not registered_name:
        return info.model_uri, None
    files = {MODEL_FILE: artifacts["model"], MANIFEST_FILE: artifacts["manifest"]}
    version = registry.register(
        info.model_uri, registered_name, tags=version_tags, files=files, description=description
    )
    return f"models:/{registered_name}/{version}", version


def model_card(cfg: PipelineConfig, *, shard_dir: str | Path, scores: str, refit: bool) -> str:
    """A registered version's description (Markdown, shown by the MLflow UI): the data it was trained on, the
    config in short, its held-out scores (`scores`: the evaluation table) against the baselines, and how to
    load it. `{version}` is filled in by the registry once the version has its number."""
    name = cfg.tracking.model_name
    m = Manifest.load(shard_dir)
    source = m.data_config.get("path") or "sample data"
    last = pd.Timestamp(max(s.last_timestamp for s in m.series), unit="s")
    weights = (
        "refit on every row after evaluation (the scores are those of the evaluated model)" if refit else "evaluated"
    )
    return "\n".join(
        [
            f"**{name}**: LSTM forecaster of {', '.join(m.target_cols)}, {m.horizon} steps ahead from {m.lookback}.",
            "",
            f"- data: {m.num_series} series from `{source}`, "
            f"frequency {m.freq_alias or f'{m.freq}s'}, up to {last}; {m.totals.num_rows} rows",
            f"- weights: {weights}",
            "",
            "Config:",
            "```",
            cfg.summary(),
            "```",
            "Held-out test scores against the baselines (lower is better; MASE < 1 beats the seasonal naive):",
            "```",
            scores,
            "```",
            "Load it:",
            "```",
            f"mlflow.pyfunc.load_model('models:/{name}/{{version}}').predict(history_df)",
            f"lstm-dist predict --model models:/{name}/{{version}} --input DATA --output forecasts.parquet",
            "```",
        ]
    )


@contextmanager
def _quiet_model_logging() -> Iterator[None]:
    """Silence log_model's generic advice that does not apply here: the integer `step` column of the output
    never holds missing values, and the pickled PythonModel is a class of this package (weights are files)."""
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_logger.level
    pyfunc_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column")
            yield
    finally:
        pyfunc_logger.setLevel(level)


def _pip_requirements() -> list[str]:
    import pyarrow

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"pyarrow=={pyarrow.__version__}",
        "pandas",
        "pydantic>=2",
        "pyyaml",
    ]


def resolve_inputs(
    history: pd.DataFrame, manifest: Manifest, *, as_of=None, future: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(history, future) as the model reads them: `history` cut at `as_of`, and the known-future rows
    (`future` if given, else the rows after the cutoff and after each series' last observed target)."""
    history, after = cut_at(history, manifest, as_of=as_of)
    history, appended = split_known_future(history, manifest)
    if future is None and manifest.future_cols:
        parts = [p for p in (appended, after) if p is not None and len(p)]
        future = pd.concat(parts, ignore_index=True) if parts else None
    if future is not None and manifest.future_cols:
        check_future(history, future, manifest)
    return history, future


def cut_at(history: pd.DataFrame, manifest: Manifest, *, as_of=None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(rows up to and including `as_of`, rows after it); (history, None) without a cutoff."""
    if as_of is None or (isinstance(as_of, str) and not as_of.strip()):
        return history, None
    ts_col = manifest.data_config.get("timestamp_col", "timestamp")
    ts = pd.to_datetime(history[ts_col])
    try:
        cut = pd.Timestamp(as_of)
    except (TypeError, ValueError):
        raise DataError(f"as_of '{as_of}' is not a timestamp; give e.g. 2024-01-10T12:00:00") from None
    if ts.dt.tz is not None and cut.tz is None:
        cut = cut.tz_localize(ts.dt.tz)
    elif ts.dt.tz is None and cut.tz is not None:
        cut = cut.tz_convert("UTC").tz_localize(None)  # naive input timestamps are read as UTC
    keep = (ts <= cut).to_numpy()
    if not keep.any():
        raise DataError(f"as_of {as_of}: the input has no rows at or before it (its first row is at {ts.min()})")
    return history[keep], history[~keep]


def check_future(history: pd.DataFrame, future: pd.DataFrame, manifest: Manifest) -> None:
    """Raise a DataError naming what `future` lacks: columns, series, or rows over each series' horizon."""
    cfg = manifest.data_config
    series_col, ts_col = cfg.get("series_col", "series_id"), cfg.get("timestamp_col", "timestamp")
    long = cfg.get("layout", "long") != "wide"
    need = [*([series_col] if long else []), ts_col, *manifest.future_cols]
    missing = [c for c in need if c not in future.columns]
    if missing:
        raise DataError(
            f"future: column(s) {missing} not found (it has {list(future.columns)}); the model needs {need} "
            f"for the {manifest.horizon} steps after each series' last row"
        )
    if not long:
        return
    have = set(zip(future[series_col].astype(str), _utc(future[ts_col]).tolist(), strict=True))
    freq = manifest.frequency()
    absent: list[str] = []
    ends = pd.Series(_utc(history[ts_col])).groupby(history[series_col].astype(str).to_numpy()).max()
    for name, end in ends.items():
        steps = freq.next_steps(np.array([int(end) // 10**9]), manifest.horizon)[0]  # [H] unix seconds
        wanted = [int(t) * 10**9 for t in steps]
        gaps = [t for t in wanted if (name, t) not in have]
        if gaps:
            absent.append(f"'{name}' ({len(gaps)} of {len(wanted)} steps, first at {pd.Timestamp(gaps[0])})")
    if absent:
        raise DataError(
            f"future: no rows over the horizon for series {', '.join(absent[:5])}"
            + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            + f"; give {manifest.future_cols} for the {manifest.horizon} steps after each series' last row"
        )


def _utc(values: pd.Series) -> np.ndarray:
    """Timestamps as int64 ns since the epoch, UTC (naive input is read as UTC), for comparing two frames."""
    ts = pd.to_datetime(values)
    if ts.dt.tz is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def split_known_future(history: pd.DataFrame, manifest: Manifest) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(history, future): with known-future covariates, the rows after each series' last observed target."""
    if not manifest.future_cols:
        return history, None
    cfg = manifest.data_config
    series_col, ts_col = cfg.get("series_col", "series_id"), cfg.get("timestamp_col", "timestamp")
    observed = history[manifest.target_cols].notna().any(axis=1)
    last_observed = history[ts_col].where(observed).groupby(history[series_col]).transform("max")
    is_past = (history[ts_col] <= last_observed).to_numpy()
    past, future = history[is_past], history[~is_past]
    return past, (future if len(future) else None)


def history_from_shards(shard_dir: str | Path, *, num_series: int = 1, extra_rows: int = 0) -> pd.DataFrame:
    """Raw (unscaled) history, in the input's long layout, of the last rows of the first `num_series` series.

    Rebuilt from the shards and the manifest's scaler stats: the model's input example and the
    history the forecast plots start from. It holds `lookback` + warm-up + `extra_rows` rows per series.
    Timestamps are naive: UTC, or wall-clock time in `data.timezone` (MLflow's datetime type refuses offsets).
    """
    from lstm_dist.data import statics, transforms
    from lstm_dist.data.features import warmup_rows
    from lstm_dist.data.shards import open_shard

    m = Manifest.load(shard_dir)
    cfg = m.data_config
    need = m.lookback + extra_rows + (m.horizon if m.future_cols else 0)
    need += warmup_rows(
        lags=cfg.get("lags") or [], moving_averages=cfg.get("moving_averages") or [], rsi=cfg.get("rsi_period") or 0
    )
    raw_cols = [*m.target_cols, *m.covariate_cols, *m.future_cols]
    col_idx = [m.stored_cols.index(c) for c in raw_cols]
    loc, scale = m.loc_scale()
    parts = []
    for info in m.series[:num_series]:
        rows_ts, rows_feat = [], []
        for shard in m.shards:  # a series' segments, in row order, stop at the first one past the end
            for seg in shard.segments:
                if seg.series != info.index:
                    continue
                opened = open_shard(Path(shard_dir) / shard.file)
                skip = max(0, -seg.row_start)  # start-padding rows (row positions < 0) are no history
                sl = slice(seg.offset + skip, seg.offset + seg.row_stop - seg.row_start)
                rows_ts.append(np.asarray(opened.ts[sl]))
                rows_feat.append(np.asarray(opened.features[sl]))
        ts = np.concatenate(rows_ts)
        feats = np.concatenate(rows_feat)
        ts, first = np.unique(ts, return_index=True)  # halo rows appear in two shards
        feats, ts = feats[first][-need:], ts[-need:]
        values = feats[:, col_idx] * scale[info.index, col_idx] + loc[info.index, col_idx]
        num_t = len(m.target_cols)  # raw_cols start with the targets, stored transformed
        lam = transforms.series_lambdas(m, np.array([info.index]))[0]
        values[:, :num_t] = transforms.inverse(values[:, :num_t], lam, kind=transforms.kind_of(m))
        frame = pd.DataFrame(values.astype(np.float64), columns=raw_cols)
        frame.insert(0, cfg.get("series_col", "series_id"), info.name)
        for col, value in zip(m.static_encoding, statics.decode(info.static, m.static_encoding), strict=True):
            frame[col] = value  # static covariates travel on every history row, as in the input
        # Local wall-clock time, naive (UTC without data.timezone): how the model reads naive input, and all that
        # MLflow's datetime schema takes.
        stamps = m.frequency().to_local(ts).tz_localize(None).as_unit("ns")
        frame.insert(0, cfg.get("timestamp_col", "timestamp"), stamps)
        if m.future_cols:  # the last `horizon` rows become the known future: their targets are left empty
            frame.loc[frame.index[-m.horizon :], m.target_cols] = np.nan
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)
