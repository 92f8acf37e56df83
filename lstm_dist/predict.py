"""Batch prediction from a registered model: forecasts of every series to one Parquet file.

    lstm-dist predict --model models:/lstm_demo@champion --input data/ --output forecasts.parquet
    lstm-dist predict ... --as-of 2024-03-01T00:00 --future weather.csv   (a cutoff; known-future covariates)

The model comes first: the URI is resolved to a version and its two files (weights, manifest) downloaded
(kept in the user's cache and checked against the registry's checksums, see registry.py), so a wrong URI
fails before anything starts. The input is read with the model's own data config (column names, layout).
Up to IN_PROCESS_MAX_SERIES series are forecast in this process, as `lstm_dist.forecast` does; more (or
`--ray`, or an explicit `--num-tasks`) are split into contiguous groups of series, one Ray task each. Both
run the same `ForecastModel.forecast` as `mlflow.pyfunc.load_model(...).predict(...)`, so the file is the
same either way. The file's metadata records the model name, version, URI and run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from lstm_dist.cluster import resources
from lstm_dist.data.readers import COLUMN_FIELDS
from lstm_dist.models.saved import MODEL_FILE
from lstm_dist.registry import MANIFEST_FILE, ModelFiles, Registry, RegistryError
from lstm_dist.storage import filesystem
from lstm_dist.version import __version__

META_PREFIX = "lstm_dist."
# Above this many series, batch prediction spreads them over Ray tasks; below, starting Ray costs more
# (seconds) than forecasting them in this process.
IN_PROCESS_MAX_SERIES = 1000


class PredictError(ValueError):
    """A user mistake in a predict call (model URI, input, output); the message says how to fix it."""


def load_forecaster(weights: str | os.PathLike, manifest: str | os.PathLike):
    """The pyfunc model class, loaded from the two files (what MLflow's loader does with the artifacts)."""
    from lstm_dist.serving import ForecastModel

    model = ForecastModel()
    model.load_artifacts({"model": str(weights), "manifest": str(manifest)})
    return model


def read_history(source: str, *, manifest_path: str | os.PathLike) -> pd.DataFrame:
    """All rows of the input (file, directory, glob or URI) as raw history, read with the model's data config."""
    from lstm_dist.config import DataConfig
    from lstm_dist.data.readers import list_input_files, read_raw

    data = json.loads(Path(manifest_path).read_text())["data_config"]
    # Only what reading needs (column names, layout): the rest of an older model's config need not validate today.
    cfg = DataConfig.model_validate({**{k: data[k] for k in COLUMN_FIELDS if k in data}, "path": source})
    frames = [read_raw(f, cfg=cfg).to_pandas() for f in list_input_files(source)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def split_series(history: pd.DataFrame, *, series_col: str, num_parts: int) -> list[pd.DataFrame]:
    """Contiguous groups of whole series (sorted by name), at most `num_parts`, none empty."""
    names = sorted(history[series_col].astype(str).unique())
    if not names:
        return []
    key = history[series_col].astype(str)
    parts = []
    size = -(-len(names) // max(1, min(num_parts, len(names))))
    for start in range(0, len(names), size):
        parts.append(history[key.isin(names[start : start + size])])
    return parts


def predict(
    *,
    model_uri: str,
    source: str,
    output: str,
    tracking_uri: str,
    num_tasks: int = 0,
    as_of: str | None = None,
    future: str | None = None,
    use_ray: bool = False,
    start_ray: Callable[[], Any] | None = None,
    progress=print,
) -> dict[str, Any]:
    """Forecast every series of `source` with the model; write `output` (Parquet).

    `as_of`: forecast from this cutoff (rows after it are not input). `future`: a file of known-future
    columns (series, timestamp, future columns) over the horizon; a model with known-future covariates
    needs it unless the input carries those rows itself (after the cutoff, or with empty targets).
    In this process up to IN_PROCESS_MAX_SERIES series, unless `use_ray` or `num_tasks`; otherwise over
    Ray tasks (`num_tasks`, 0 = the cluster's CPU count), after calling `start_ray()` (connects to Ray)."""
    started = time.perf_counter()
    try:
        files = Registry(tracking_uri).download(model_uri)
    except RegistryError as exc:
        raise PredictError(f"--model {exc}") from None
    progress(f"[predict] {model_uri} -> {files.name} v{files.version}")
    manifest = json.loads(files.manifest.read_text())
    series_col = manifest["data_config"]["series_col"]
    history = read_history(source, manifest_path=files.manifest)
    known = read_history(future, manifest_path=files.manifest) if future else None
    history, known = _cut_and_check(history, known, manifest_path=files.manifest, as_of=as_of, future=future)
    wide = manifest["data_config"].get("layout") == "wide"  # one frame holds every series: one task
    many = not wide and history[series_col].nunique() > IN_PROCESS_MAX_SERIES
    if use_ray or num_tasks or many:
        if start_ray is not None:
            start_ray()
        frames = _on_ray(files, history, known, series_col=series_col, num_tasks=num_tasks, wide=wide)
        tasks, where = len(frames), f"from {len(frames)} task(s)"
    else:
        frames = [load_forecaster(files.weights, files.manifest).forecast(history, future=known)]
        tasks, where = 0, "in this process"
    forecast = in_file_order(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), series_col)
    meta = {
        **files.metadata(),
        "input": source,
        **({"as_of": str(as_of)} if as_of else {}),
        **({"future": future} if future else {}),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "lstm_dist_version": __version__,
        "num_series": str(forecast[series_col].nunique() if series_col in forecast else 0),
    }
    write_parquet(forecast, output, metadata=meta)
    seconds = time.perf_counter() - started
    progress(
        f"[predict] {meta['num_series']} series x {manifest['horizon']} steps {where} in {seconds:.1f}s -> {output}"
    )
    return {"rows": len(forecast), "tasks": tasks, "seconds": seconds, **meta}


def in_file_order(forecast: pd.DataFrame, series_col: str) -> pd.DataFrame:
    """Forecast rows as the forecast file holds them: by series, then horizon step (stable)."""
    order = [c for c in (series_col, "step") if c in forecast.columns]
    return forecast.sort_values(order, kind="stable").reset_index(drop=True)


def _on_ray(
    files: ModelFiles, history: pd.DataFrame, known: pd.DataFrame | None, *, series_col: str, num_tasks: int, wide: bool
) -> list[pd.DataFrame]:
    """The forecasts of contiguous groups of series, one Ray task each (Ray must be initialised)."""
    import ray

    if wide:
        parts = [history]
    else:
        wanted = num_tasks or max(1, int(resources().get("CPU", 1)))
        parts = split_series(history, series_col=series_col, num_parts=wanted)
    task = ray.remote(num_cpus=1)(_forecast_task)  # made here: importing this module does not import Ray
    weights = ray.put(files.weights.read_bytes())
    manifest_text = ray.put(files.manifest.read_text())
    refs = [task.remote(weights, manifest_text, part, _same_series(known, part, series_col)) for part in parts]
    return ray.get(refs)


def _cut_and_check(
    history: pd.DataFrame, known: pd.DataFrame | None, *, manifest_path: Path, as_of: str | None, future: str | None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The input cut at `as_of`, and the known-future rows, checked on the driver so that a missing column,
    series or row is one clear error (not one per Ray task)."""
    from lstm_dist.data.errors import DataError
    from lstm_dist.data.manifest import Manifest
    from lstm_dist.serving import resolve_inputs

    manifest = Manifest.model_validate_json(Path(manifest_path).read_text())
    try:
        history, known = resolve_inputs(history, manifest, as_of=as_of, future=known)
    except DataError as exc:
        where = f"--future {future}: " if future and str(exc).startswith("future") else ""
        raise PredictError(f"{where}{exc}") from None
    if manifest.future_cols and known is None:
        cfg = manifest.data_config
        raise PredictError(
            f"the model uses known-future covariates {manifest.future_cols}: pass --future FILE (CSV/Parquet) with "
            f"columns {[cfg['series_col'], cfg['timestamp_col'], *manifest.future_cols]} for the {manifest.horizon} "
            "steps after each series' last row"
        )
    if not manifest.future_cols and future:
        warnings.warn(
            f"--future {future}: the model has no known-future covariates; the file is not used", stacklevel=2
        )
        known = None
    return history, known


def _same_series(known: pd.DataFrame | None, part: pd.DataFrame, series_col: str) -> pd.DataFrame | None:
    """The known-future rows of the series in `part` (every row for a wide layout, without a series column)."""
    if known is None or series_col not in known.columns or series_col not in part.columns:
        return known
    return known[known[series_col].astype(str).isin(set(part[series_col].astype(str)))]


def _forecast_task(
    weights: bytes, manifest_text: str, history: pd.DataFrame, future: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Forecast one group of series (the model is rebuilt from the object store's bytes, once per task)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MODEL_FILE).write_bytes(weights)
        (Path(tmp) / MANIFEST_FILE).write_text(manifest_text)
        model = load_forecaster(Path(tmp) / MODEL_FILE, Path(tmp) / MANIFEST_FILE)
    return model.forecast(history, future=future)


def write_parquet(frame: pd.DataFrame, output: str, *, metadata: dict[str, str]) -> None:
    """Write `frame` with `lstm_dist.*` keys in the file's metadata; temp name + rename on local disks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {f"{META_PREFIX}{k}".encode(): str(v).encode() for k, v in metadata.items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    if "://" in output:
        fs, inner, _ = filesystem(output)
        pq.write_table(table, inner, filesystem=fs)
        return
    path = Path(output).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_metadata(path: str) -> dict[str, str]:
    """The `lstm_dist.*` metadata of a forecast file (model version and URI, input, time)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode()[len(META_PREFIX) :]: v.decode() for k, v in meta.items() if k.decode().startswith(META_PREFIX)}
