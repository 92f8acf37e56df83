"""Scalers: exact inverses, partial fits combine to the full fit, and stats depend on train rows only."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lstm_dist.config import DataConfig
from lstm_dist.data import scalers
from lstm_dist.data.synthetic import generate_sample


@pytest.mark.parametrize("kind", scalers.SCALER_KINDS)
def test_roundtrip_and_combine(kind):
    rng = np.random.default_rng(0)
    v = rng.normal(3.0, 2.0, (500, 3))
    v[:, 2] = 7.0  # constant column: centred, not divided by zero
    loc, scale = scalers.fit(v, kind=kind)
    assert np.all(scale > 0)
    np.testing.assert_allclose(scalers.inverse(scalers.transform(v, loc, scale), loc, scale), v)
    parts = [scalers.partial_fit(p, kind=kind) for p in np.array_split(v, 4)]
    c_loc, c_scale = scalers.combine(parts, kind=kind, num_cols=3)
    np.testing.assert_allclose(c_loc, loc, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_scale, scale, rtol=1e-10, atol=1e-12)


def test_standard_values():
    v = np.array([[1.0], [2.0], [3.0], [np.nan]])
    loc, scale = scalers.fit(v, kind="standard")
    assert loc[0] == pytest.approx(2.0) and scale[0] == pytest.approx(np.std([1, 2, 3]))
    loc, scale = scalers.fit(v, kind="minmax")
    assert (loc[0], scale[0]) == (1.0, 2.0)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(("kind", "scope"), [("standard", "series"), ("robust", "global"), ("minmax", "global")])
def test_stats_depend_on_train_rows_only(tmp_path, kind, scope):
    """Changing every value after the train part leaves all scaler stats unchanged."""
    from lstm_dist.data.ingest import ingest

    raw = generate_sample(num_series=3, num_steps=200, seed=3)
    pq.write_table(raw, tmp_path / "a.parquet")
    df = raw.to_pandas()
    pos = df.groupby("series_id").cumcount()
    df.loc[pos >= 140, ["target", "temperature"]] *= 50.0  # val/test parts start at row 140 (0.15 + 0.15)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "b.parquet")
    kw = {
        "lookback": 12,
        "horizon": 6,
        "val_size": 0.15,
        "test_size": 0.15,
        "scaler": kind,
        "scaler_scope": scope,
        "covariate_cols": ["temperature"],
    }
    ma, _ = ingest(DataConfig(path=str(tmp_path / "a.parquet"), **kw), out_dir=str(tmp_path / "sa"))
    mb, _ = ingest(DataConfig(path=str(tmp_path / "b.parquet"), **kw), out_dir=str(tmp_path / "sb"))
    assert all(s.val_start == 140 for s in ma.series)
    for sa, sb in zip(ma.series, mb.series, strict=True):
        assert sa.scaler == sb.scaler
    # And the stats are the train-part stats, not the whole series'.
    if kind == "standard":
        train = raw.to_pandas().query("series_id == @ma.series[0].name").target.to_numpy()[:140]
        assert ma.series[0].scaler["target"].loc == pytest.approx(train.mean())
        assert ma.series[0].scaler["target"].scale == pytest.approx(train.std())
