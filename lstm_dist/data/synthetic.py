"""Bundled demo data: many hourly series with trend, daily/weekly seasonality, AR(1) noise and a covariate.

The generator is vectorised over series (a short loop over time only for the AR(1) recursions) and
deterministic for a seed, so the demo needs no download and tests can regenerate the same file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

START = np.datetime64("2024-01-01T00:00:00", "s")
HOUR_S = 3600


def _ar1(rng: np.random.Generator, *, phi: np.ndarray, sigma: np.ndarray, num_steps: int) -> np.ndarray:
    """AR(1) noise per series, [S, N]; the recursion runs over time, vectorised over series."""
    shocks = rng.standard_normal((num_steps, phi.shape[0])) * sigma  # [N, S]
    out = np.empty_like(shocks)
    prev = shocks[0] / np.sqrt(1.0 - phi**2)  # start in the stationary distribution
    out[0] = prev
    for t in range(1, num_steps):
        prev = phi * prev + shocks[t]
        out[t] = prev
    return out.T


def generate_sample(*, num_series: int, num_steps: int, seed: int = 0) -> pa.Table:
    """Multi-series hourly data in long format, sorted by (series_id, timestamp).

    Columns: `timestamp` (timestamp[s], hourly from 2024-01-01), `series_id` ("s000", ...), `target` (float64)
    and `temperature` (float64, an exogenous covariate with its own daily cycle that the target responds to).
    """
    if num_series < 1 or num_steps < 1:
        raise ValueError(f"num_series and num_steps must be >= 1, got {num_series} and {num_steps}")
    rng = np.random.default_rng(seed)
    S, N = num_series, num_steps
    hours = np.arange(N, dtype=np.float64)  # [N]
    day = 2 * np.pi * hours / 24.0
    week = 2 * np.pi * hours / (24.0 * 7)
    year = 2 * np.pi * hours / (24.0 * 365.25)

    # Temperature: a per-series climate, a daily cycle peaking mid-afternoon, a slow annual swing, weather noise.
    climate = rng.uniform(5.0, 20.0, S)[:, None]  # [S, 1]
    temp_daily = rng.uniform(3.0, 7.0, S)[:, None]
    weather = _ar1(rng, phi=np.full(S, 0.95), sigma=np.full(S, 0.6), num_steps=N)  # [S, N]
    temperature = climate + temp_daily * np.sin(day - 2 * np.pi * 9 / 24) - 8.0 * np.cos(year) + weather

    level = rng.uniform(20.0, 200.0, S)[:, None]
    trend = rng.normal(0.0, 0.2, S)[:, None] * level / max(N, 1)  # total drift of about +-20% of the level
    daily_amp = rng.uniform(0.05, 0.3, S)[:, None] * level
    daily_phase = rng.uniform(0, 2 * np.pi, S)[:, None]
    weekly_amp = rng.uniform(0.02, 0.15, S)[:, None] * level
    weekly_phase = rng.uniform(0, 2 * np.pi, S)[:, None]
    # Load-like response: demand rises as temperature moves away from a comfort point.
    temp_coef = rng.uniform(0.005, 0.03, S)[:, None] * level
    noise = _ar1(rng, phi=rng.uniform(0.5, 0.9, S), sigma=rng.uniform(0.01, 0.04, S) * level[:, 0], num_steps=N)
    target = (
        level
        + trend * hours
        + daily_amp * np.sin(day + daily_phase)
        + weekly_amp * np.sin(week + weekly_phase)
        + temp_coef * np.abs(temperature - 18.0)
        + noise
    )  # [S, N]

    width = max(3, len(str(S - 1)))
    names = pa.array([f"s{i:0{width}d}" for i in range(S)], pa.string())
    series_idx = np.repeat(np.arange(S, dtype=np.int32), N)
    # Dictionary-encode then cast: far faster than building millions of Python strings.
    series_col = pa.DictionaryArray.from_arrays(pa.array(series_idx), names).cast(pa.string())
    ts = (START + np.arange(N, dtype=np.int64) * np.timedelta64(HOUR_S, "s")).astype("datetime64[s]")
    return pa.table(
        {
            "timestamp": pa.array(np.tile(ts, S), pa.timestamp("s")),
            "series_id": series_col,
            "target": pa.array(target.reshape(-1)),
            "temperature": pa.array(temperature.reshape(-1)),
        }
    )


def write_sample(path: str | os.PathLike, **kw: int) -> Path:
    """Generate the sample (`num_series`, `num_steps`, `seed`) and write it as Parquet, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = generate_sample(**kw)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        # No dictionary encoding on floats: it only slows reading (see STACK.md).
        pq.write_table(table, tmp, use_dictionary=["series_id"])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
