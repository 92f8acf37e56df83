"""Windows read back from shards equal windows built naively from the raw data, for random shapes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_dist.config import DataConfig
from lstm_dist.data.ingest import ingest
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.synthetic import generate_sample
from lstm_dist.data.windows import WindowDataset

pytestmark = pytest.mark.usefixtures("ray_local")


def _steps(size: float, n: int) -> int:
    return int(round(size * n)) if size < 1 else int(size)


def split_of(first: int, last: int, val_start: int, test_start: int) -> str | None:
    """The split whose rows hold every target row `first..last` of a window, or None when it straddles two."""
    if last < val_start:
        return "train"
    if first >= test_start:
        return "test"
    if first >= val_start and last < test_start:
        return "val"
    return None


def naive_windows(
    raw: pd.DataFrame,
    *,
    cols: list[str],
    num_targets: int,
    lookback: int,
    horizon: int,
    stride: int,
    val_size: float,
    test_size: float,
    split: str,
) -> dict[str, np.ndarray]:
    """A plain Python loop over every window of every series, with its own split and scaler arithmetic."""
    xs, ys, series, t0s, hours = [], [], [], [], []
    for idx, (_, g) in enumerate(sorted(raw.groupby("series_id"), key=lambda kv: kv[0])):
        g = g.sort_values("timestamp")
        v = g[cols].to_numpy(np.float64)
        n = len(v)
        test_start = n - _steps(test_size, n)
        val_start = test_start - _steps(val_size, n)
        mean, std = v[:val_start].mean(axis=0), v[:val_start].std(axis=0)
        z = (v - mean) / std
        ts = g["timestamp"].astype("datetime64[s]").astype(np.int64).to_numpy()
        starts = []
        for s in range(n - lookback - horizon + 1):
            first, last = s + lookback, s + lookback + horizon - 1  # target rows
            if split_of(first, last, val_start, test_start) == split:
                starts.append(s)
        for s in starts[::stride]:
            xs.append(z[s : s + lookback])
            ys.append(z[s + lookback : s + lookback + horizon, :num_targets])
            series.append(idx)
            t0s.append(ts[s + lookback])
            hours.append(ts[s : s + lookback + horizon])
    return {
        "x": np.array(xs).reshape(-1, lookback, len(cols)),
        "y": np.array(ys).reshape(-1, horizon, num_targets),
        "series": np.array(series, dtype=np.int64),
        "t0": np.array(t0s, dtype=np.int64),
        "ts": np.array(hours).reshape(-1, lookback + horizon),
    }


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_series=st.integers(1, 3),
    num_steps=st.integers(200, 320),
    lookback=st.integers(1, 30),
    horizon=st.integers(1, 10),
    stride=st.integers(1, 4),
    rows_per_shard=st.integers(16, 400),
    val_size=st.sampled_from([0.2, 0.25, 40]),
    test_size=st.sampled_from([0.2, 45]),
    seed=st.integers(0, 1000),
)
def test_windows_equal_naive(
    num_series, num_steps, lookback, horizon, stride, rows_per_shard, val_size, test_size, seed
):
    raw = generate_sample(num_series=num_series, num_steps=num_steps, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.parquet"
        pq.write_table(raw, path)
        cfg = DataConfig(
            path=str(path),
            lookback=lookback,
            horizon=horizon,
            stride=stride,
            rows_per_shard=rows_per_shard,
            val_size=val_size,
            test_size=test_size,
            covariate_cols=["temperature"],
            calendar_features=["hour"],
        )
        manifest, report = ingest(cfg, out_dir=str(Path(tmp) / "shards"))
        assert report.num_series == num_series
        for split in ("train", "val", "test"):
            ds = WindowDataset(str(Path(tmp) / "shards"), split=split)
            want = naive_windows(
                raw.to_pandas(),
                cols=["target", "temperature"],
                num_targets=1,
                lookback=lookback,
                horizon=horizon,
                stride=stride,
                val_size=val_size,
                test_size=test_size,
                split=split,
            )
            assert len(ds) == len(want["x"]) == manifest.totals.windows[split]
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(ds))  # random order: batches cross shards
            got = ds.batch(order)
            hour = (want["ts"][order] % 86400) / 3600
            np.testing.assert_allclose(got["x"][..., :2], want["x"][order], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["x"][..., 2], np.sin(2 * np.pi * hour[:, :lookback] / 24), atol=1e-6)
            np.testing.assert_allclose(got["x"][..., 3], np.cos(2 * np.pi * hour[:, :lookback] / 24), atol=1e-6)
            np.testing.assert_allclose(got["y"], want["y"][order], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got["future"][..., 0], np.sin(2 * np.pi * hour[:, lookback:] / 24), atol=1e-6)
            np.testing.assert_array_equal(got["series"], want["series"][order])
            np.testing.assert_array_equal(got["t0"], want["t0"][order])
            assert got["x"].dtype == np.float32 and got["y"].dtype == np.float32


def test_batch_shapes_views_and_inverse(tmp_path):
    cfg = DataConfig(sample={"num_series": 3, "num_steps": 300}, lookback=24, horizon=6, rows_per_shard=100)
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"), work_dir=str(tmp_path))
    ds = WindowDataset(str(tmp_path / "shards"), split="train")
    assert (ds.num_features, ds.num_targets, ds.num_future, ds.num_series) == (1, 1, 0, 3)
    assert ds.lookback == 24 and ds.horizon == 6 and isinstance(ds.manifest, Manifest)
    b = ds.batch(np.array([0, len(ds) - 1]))
    assert b["x"].shape == (2, 24, 1) and b["y"].shape == (2, 6, 1) and b["future"].shape == (2, 6, 0)
    # Shards are memory-mapped views, not copies.
    shard = ds._shards[0]
    assert not shard.features.flags.owndata and not shard.features.flags.writeable
    # Inverse scaling recovers the raw targets.
    raw = generate_sample(num_series=3, num_steps=300, seed=0).to_pandas()
    loc, scale = manifest.target_loc_scale(b["series"])
    y = b["y"] * scale[:, None, :] + loc[:, None, :]  # [B, H, T]
    last = raw[raw.series_id == manifest.series[int(b["series"][1])].name].target.to_numpy()
    start = np.searchsorted(
        raw[raw.series_id == manifest.series[int(b["series"][1])].name]
        .timestamp.astype("datetime64[s]")
        .astype(np.int64),
        b["t0"][1],
    )
    np.testing.assert_allclose(y[1, :, 0], last[start : start + 6], rtol=1e-5)
    with pytest.raises(IndexError):
        ds.batch(np.array([len(ds)]))


def test_incomplete_dir_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    from lstm_dist.data.errors import DataError

    with pytest.raises(DataError, match="not complete"):
        WindowDataset(str(tmp_path), split="train")


def test_t0_and_calendar_on_an_irregular_grid(tmp_path):
    """missing=drop leaves holes: t0 and calendar features must come from the real timestamps."""
    df = generate_sample(num_series=2, num_steps=200, seed=3).to_pandas()
    df.loc[[5, 6, 50, 230], "target"] = np.nan
    df.to_csv(tmp_path / "in.csv", index=False)
    cfg = DataConfig(
        path=str(tmp_path / "in.csv"),
        lookback=8,
        horizon=3,
        missing="drop",
        calendar_features=["hour"],
        rows_per_shard=60,
    )
    manifest, report = ingest(cfg, out_dir=str(tmp_path / "s"))
    assert report.counts["missing_rows_dropped"] == 4
    for split in ("train", "val", "test"):
        ds = WindowDataset(str(tmp_path / "s"), split=split)
        b = ds.batch(np.random.default_rng(0).permutation(len(ds)))
        hour = (b["t0"] % 86400) / 3600
        np.testing.assert_allclose(b["future"][:, 0, 0], np.sin(2 * np.pi * hour / 24), atol=1e-6)
        single = ds.batch(np.arange(min(3, len(ds))))  # the one-shard path
        np.testing.assert_array_equal(single["t0"], ds.batch(np.arange(min(3, len(ds))))["t0"])
