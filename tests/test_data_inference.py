"""Inference batches equal the training windows that end at the same row, built from raw history."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from lstm_dist.config import DataConfig
from lstm_dist.data.errors import DataError
from lstm_dist.data.inference import make_inference_batch
from lstm_dist.data.ingest import ingest
from lstm_dist.data.synthetic import generate_sample
from lstm_dist.data.transforms import original_units
from lstm_dist.data.windows import WindowDataset

pytestmark = pytest.mark.usefixtures("ray_local")

L, H = 24, 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inf")
    raw = generate_sample(num_series=3, num_steps=300, seed=5)
    pq.write_table(raw, tmp / "raw.parquet")
    cfg = DataConfig(
        path=str(tmp / "raw.parquet"),
        lookback=L,
        horizon=H,
        covariate_cols=["temperature"],
        calendar_features=["hour", "weekday"],
        lags=[3],
        moving_averages=[4],
        rsi_period=5,
    )
    manifest, _ = ingest(cfg, out_dir=str(tmp / "shards"))
    return tmp / "shards", manifest, raw.to_pandas()


def test_batch_equals_last_test_window(shards):
    out, manifest, raw = shards
    ds = WindowDataset(str(out), split="test")
    last = np.concatenate([np.flatnonzero(ds.window_series() == s)[-1:] for s in range(3)])  # last window per series
    want = ds.batch(last)
    # history: every row before the forecast origin of those windows
    cut = {manifest.series[s].name: t for s, t in zip(want["series"], want["t0"], strict=True)}
    ts = raw.timestamp.astype("datetime64[s]").astype(np.int64)
    history = raw[ts < raw.series_id.map(cut)]
    got = make_inference_batch(history, manifest=manifest)
    assert got["series_names"] == [s.name for s in manifest.series]
    np.testing.assert_array_equal(got["series"], want["series"])
    np.testing.assert_array_equal(got["t0"], want["t0"])
    np.testing.assert_allclose(got["x"], want["x"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["future"], want["future"], atol=1e-6)
    # inverse of the scaled truth is the raw truth
    y = original_units(want["y"], want["series"], manifest)  # [S, H, T]
    first = raw[(raw.series_id == "s000") & (ts >= cut["s000"])].target.to_numpy()[:H]
    np.testing.assert_allclose(y[0, :, 0], first, rtol=1e-5)
    q = original_units(np.repeat(want["y"][..., None], 3, axis=-1), want["series"], manifest)  # [S, H, T, Q]
    np.testing.assert_allclose(q[..., 1], y, rtol=1e-6)


def test_unknown_series_and_short_history(shards):
    _, manifest, raw = shards
    new = raw[raw.series_id == "s001"].assign(series_id="brand_new")
    with pytest.warns(UserWarning, match="'brand_new' is not in the manifest"):
        got = make_inference_batch(new, manifest=manifest)
    assert got["series"].tolist() == [-1]
    assert abs(float(got["x"][0, :, 0].mean())) < 3  # scaled with its own stats
    with pytest.raises(
        DataError, match=r"series 's000' has 20 rows of history after cleaning; inference needs its last 29 rows"
    ):
        make_inference_batch(raw[raw.series_id == "s000"].head(20), manifest=manifest)
