"""The Python API: the CLI's pipelines as functions, DataFrames in and out (long format; pandas or pyarrow).

    import lstm_dist
    cfg = lstm_dist.load_config("conf/demo.yaml", overrides=["train.epochs=3"])
    result = lstm_dist.run(cfg, data=df)              # the pipeline, as `lstm-dist run`
    cv = lstm_dist.backtest(cfg, data=df, windows=3)  # the per-cutoff table, as `lstm-dist backtest`
    fc = lstm_dist.forecast("models:/lstm_demo@champion", history_df, tracking_uri=result.tracking_uri)

A DataFrame given as `data` is written once into the work dir as Parquet, named by the hash of its content
(`<work_dir>/inputs/<sha256>.parquet`), and `data.path` points at it: caching, lineage and the registered
model's data tags work as for a file. User mistakes raise the exceptions whose messages the CLI prints
(ConfigError, DataError, TrackingError, WorkflowError, PredictError); nothing here exits the process.
With `lstm_dist.cli`, the only module that imports pipelines/.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_dist.config import PipelineConfig, from_dict, merge, parse_overrides
from lstm_dist.config import load_config as _load_yaml
from lstm_dist.storage import Store, save_resolved

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from lstm_dist.pipelines.train import PipelineSummary

INPUTS_DIR = "inputs"  # <work_dir>/inputs/<sha256>.parquet: DataFrames given to run() and backtest()
ConfigLike = PipelineConfig | str | os.PathLike
DataLike = Any  # a pandas DataFrame, a pyarrow Table, or a path / URI (file, directory, glob)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """The config of a YAML file with dotted `key=value` overrides applied, resolved as the CLI resolves it
    (relative paths made absolute from the current directory, the MLflow tracking URI pinned).

    Raises ConfigError naming the bad key or value, as `lstm-dist run CONFIG key=value` prints it."""
    return _load_yaml(path, overrides or []).resolved()


def run(
    cfg: ConfigLike,
    data: DataLike = None,
    *,
    force: set[str] | None = None,
    allow_below_baseline: bool = False,
    progress=print,
) -> PipelineSummary:
    """Run the training pipeline, as `lstm-dist run`: ingest -> shard -> [tune] -> train -> evaluate ->
    [final_fit] -> register, each step cached under `workflow.work_dir`. Starts (or joins) Ray.

    `cfg`: a config from `load_config`, or a YAML path. `data`: a long-format pandas DataFrame or pyarrow
    Table (written once to `<work_dir>/inputs/<sha256>.parquet`), or a path / URI; None keeps `data.path`
    (or the sample data) of the config. `force`: step names to rerun with the steps using their output.
    `allow_below_baseline`: crown the model even if it does not beat the seasonal naive forecast.
    `progress`: called with each progress line (default: print).

    Returns the run's summary: `metrics` (test_*), `model_uri`, `version`, `alias`, `run_id` (the MLflow
    run), `tracking_uri`, `steps`."""
    from lstm_dist.pipelines.train import run as run_pipeline

    cfg = _prepare(cfg, data, ["tracking.allow_below_baseline=true"] if allow_below_baseline else [])
    save_resolved(cfg)
    return run_pipeline(cfg, force=set(force or ()), progress=progress)


def backtest(
    cfg: ConfigLike,
    data: DataLike = None,
    *,
    windows: int | None = None,
    step: int | None = None,
    refit_every: int | None = None,
    progress=print,
) -> pd.DataFrame:
    """Rolling-origin backtest, as `lstm-dist backtest`: at each of the last `windows` cutoffs, train on the
    rows up to it only, forecast the horizon after it, and score the model against naive, seasonal naive,
    AutoETS and AutoTheta. Needs a local `workflow.work_dir`. Starts (or joins) Ray.

    `data` as for `run`. `windows`, `step` (0 = the horizon), `refit_every` override `backtest.*`.
    Returns the table: a row per (fold, forecaster) and the overall rows (`fold == "all"`), with MASE,
    sMAPE, MAE, RMSE; `table.attrs` holds `run_id` (MLflow), `csv` (its copy under `<work_dir>/backtest/`)
    and `forecasts` (the forecasts of every fold, each forecaster a column)."""
    from lstm_dist.pipelines.backtest import run as run_backtest

    flags = {"windows": windows, "step": step, "refit_every": refit_every}
    cfg = _prepare(cfg, data, [f"backtest.{k}={v}" for k, v in flags.items() if v is not None])
    save_resolved(cfg)
    summary = run_backtest(cfg, progress=progress)
    table = summary.table
    table.attrs.update(run_id=summary.run_id, csv=str(summary.csv), forecasts=summary.forecasts)
    return table


def forecast(
    model: str,
    history: DataLike,
    *,
    as_of: str | pd.Timestamp | None = None,
    future: DataLike = None,
    tracking_uri: str | None = None,
    config: ConfigLike | None = None,
) -> pd.DataFrame:
    """Forecast every series of `history` with a registered model, in this process (no Ray): the rows that
    `lstm-dist predict` writes for the same input, as a DataFrame (series, timestamp, step, targets and,
    for quantile/gaussian models, interval columns), sorted by series and step.

    `model`: `models:/<name>@<alias>` or `models:/<name>/<version>`. `history`: raw long-format rows
    (pandas DataFrame, pyarrow Table, or a file / directory / glob / URI read with the model's own column
    names). `as_of`: forecast from this cutoff (rows after it are not input). `future`: known-future
    columns (series, timestamp, `data.future_cols`) over the horizon, same kinds as `history`.
    `tracking_uri`: the MLflow store; default $MLFLOW_TRACKING_URI, else the store of `config`."""
    from lstm_dist.predict import PredictError, in_file_order, load_forecaster
    from lstm_dist.registry import Registry, RegistryError
    from lstm_dist.tracking import store_uri

    if config is not None and not isinstance(config, PipelineConfig):
        config = load_config(config)
    uri = store_uri(tracking_uri, config)
    if uri is None:
        raise PredictError(
            "forecast: give tracking_uri= (e.g. sqlite:///runs/demo/mlflow.db), set MLFLOW_TRACKING_URI, or config="
        )
    try:
        files = Registry(uri).download(model)
    except RegistryError as exc:
        raise PredictError(f"forecast: {exc}") from None
    rows = _frame(history, manifest=files.manifest)
    known = _frame(future, manifest=files.manifest) if future is not None else None
    out = load_forecaster(files.weights, files.manifest).forecast(rows, as_of=as_of, future=known)
    return in_file_order(out, json.loads(files.manifest.read_text())["data_config"]["series_col"])


# ---------------------------------------------------------------------------------------------


def _prepare(cfg: ConfigLike, data: DataLike, overrides: list[str]) -> PipelineConfig:
    """The resolved config with `overrides` applied and `data.path` pointing at `data` (written first when it
    is a DataFrame or Table)."""
    cfg = (cfg if isinstance(cfg, PipelineConfig) else _load_yaml(cfg)).resolved()
    update = parse_overrides(overrides)
    if isinstance(data, str | os.PathLike):
        update = merge(update, {"data": {"path": str(data)}})
    elif data is not None:
        path = _write_input(_table(data), work_dir=cfg.workflow.work_dir)
        update = merge(update, {"data": {"path": path, "format": "parquet"}})
    if not update:
        return cfg
    return from_dict(merge(cfg.model_dump(mode="json"), update), source="lstm_dist.api").resolved()


def _table(data: Any) -> pa.Table:
    """A pyarrow Table of `data`: a pandas DataFrame (its columns; the index is not data) or a pyarrow Table."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, pa.Table):
        return data
    raise TypeError(
        f"data: expected a pandas DataFrame, a pyarrow Table or a path, got {type(data).__name__}; "
        "give the rows in long format (one row per series and timestamp)"
    )


def _write_input(table: pa.Table, *, work_dir: str) -> str:
    """Write `table` as `<work_dir>/inputs/<sha256 of its content>.parquet` unless that file exists, and
    return its locator. Schema metadata (pandas' index notes) is not content: the same rows from pandas
    or pyarrow are the same file. Written under a temporary name and renamed on a local disk."""
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata(None).combine_chunks()
    store = Store(work_dir)
    final = store.join(INPUTS_DIR, f"{_content_hash(table)}.parquet")
    if store.exists(final):
        return final
    store.mkdir(store.join(INPUTS_DIR))
    if not store.local:  # one PUT: an object appears whole or not at all
        pq.write_table(table, store.inner(final), filesystem=store.fs)
        return final
    tmp = Path(f"{final}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # a concurrent writer of the same content writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _content_hash(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream (schema and values), streamed into the hash (no copy)."""
    import pyarrow as pa

    digest = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(digest, mode="w"), table.schema) as writer:
        writer.write_table(table)
    return digest.hash.hexdigest()


class _HashSink:
    """A write-only file object that feeds what is written to sha256."""

    closed = False

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data) -> int:
        self.hash.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _frame(data: DataLike, *, manifest: Path) -> pd.DataFrame:
    """Raw rows as pandas: a DataFrame as it is, a Table converted, a path read as `lstm-dist predict` reads it."""
    import pandas as pd

    from lstm_dist.predict import read_history

    if isinstance(data, str | os.PathLike):
        return read_history(str(data), manifest_path=manifest)
    return data if isinstance(data, pd.DataFrame) else _table(data).to_pandas()


def read_metadata(path: str) -> dict[str, str]:
    """The model name, version, URI and run recorded in a forecast file written by `lstm-dist predict`."""
    from lstm_dist.predict import read_metadata as read

    return read(path)
