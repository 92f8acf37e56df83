"""Ingest end to end on a real local Ray: file layouts, atomic output, storage size, sample data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from lstm_dist.config import DataConfig
from lstm_dist.data.ingest import ingest
from lstm_dist.data.synthetic import generate_sample, write_sample
from lstm_dist.data.windows import WindowDataset

pytestmark = pytest.mark.usefixtures("ray_local")

KW = {"lookback": 16, "horizon": 4, "covariate_cols": ["temperature"], "rows_per_shard": 200}


def test_sample_is_deterministic_and_realistic(tmp_path):
    a = generate_sample(num_series=4, num_steps=500, seed=7)
    assert a.equals(generate_sample(num_series=4, num_steps=500, seed=7))
    assert not a.equals(generate_sample(num_series=4, num_steps=500, seed=8))
    assert a.schema.field("timestamp").type == pa.timestamp("s") and a.column_names == [
        "timestamp",
        "series_id",
        "target",
        "temperature",
    ]
    df = a.to_pandas()
    assert df.timestamp.iloc[0] == np.datetime64("2024-01-01T00:00:00")
    assert list(df.series_id.unique()) == ["s000", "s001", "s002", "s003"]
    one = df[df.series_id == "s000"].target.to_numpy()
    daily = np.corrcoef(one[:-24], one[24:])[0, 1]
    assert daily > 0.5  # a daily cycle
    path = write_sample(tmp_path / "x.parquet", num_series=2, num_steps=50)
    assert pq.read_table(path).num_rows == 100 and not list(tmp_path.glob(".*tmp*"))


def _split_files(raw: pa.Table, d):
    """Write the same rows as a mix of CSV and Parquet files; one series is split across two files."""
    df = raw.to_pandas()
    d.mkdir()
    a = df[df.series_id == "s000"]
    a.iloc[:150].to_csv(d / "part-a1.csv", index=False)
    a.iloc[150:].to_parquet(d / "part-a2.parquet", index=False)
    df[df.series_id == "s001"].to_parquet(d / "part-b.parquet", index=False)
    df[df.series_id.isin(["s002", "s003"])].to_csv(d / "sub-c.csv", index=False)


def test_directory_of_csv_and_parquet_equals_one_file(tmp_path):
    raw = generate_sample(num_series=4, num_steps=400, seed=2)
    pq.write_table(raw, tmp_path / "all.parquet")
    _split_files(raw, tmp_path / "dir")
    m1, r1 = ingest(DataConfig(path=str(tmp_path / "all.parquet"), **KW), out_dir=str(tmp_path / "one"))
    m2, r2 = ingest(DataConfig(path=str(tmp_path / "dir"), **KW), out_dir=str(tmp_path / "many"))
    m3, _ = ingest(DataConfig(path=str(tmp_path / "dir" / "part-*"), **KW), out_dir=str(tmp_path / "glob"))
    assert r2.num_files == 4 and r1.num_rows_read == r2.num_rows_read
    assert [s.sha256 for s in m1.shards] == [s.sha256 for s in m2.shards]
    assert m1.series == m2.series and m1.totals == m2.totals
    assert m3.num_series == 2  # the glob picks the s000 and s001 files only
    # a pyarrow.fs URI reads the same, and a Parquet file split over row groups across 3 read tasks too
    pq.write_table(raw, tmp_path / "groups.parquet", row_group_size=250)
    m4, r4 = ingest(
        DataConfig(path="file://" + str(tmp_path / "groups.parquet"), num_read_tasks=3, **KW),
        out_dir=str(tmp_path / "uri"),
    )
    assert r4.num_tasks["read"] == 3
    assert [s.sha256 for s in m4.shards] == [s.sha256 for s in m1.shards]


def test_output_is_atomic_and_storage_is_small(tmp_path):
    cfg = DataConfig(sample={"num_series": 5, "num_steps": 2000}, lookback=168, horizon=24, rows_per_shard=16)
    manifest, report = ingest(cfg, out_dir=str(tmp_path / "shards"), work_dir=str(tmp_path))
    files = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert files[0] == "_SUCCESS" and "manifest.json" in files and not list(tmp_path.glob("shards.tmp-*"))
    assert report.num_bytes <= 1.15 * report.raw_numeric_bytes, report.summary()
    assert manifest.totals.num_shards > 1  # rows_per_shard was raised to keep the halo small, not ignored
    for shard in manifest.shards:
        import hashlib

        assert hashlib.sha256((tmp_path / "shards" / shard.file).read_bytes()).hexdigest() == shard.sha256
    # re-ingest over an existing output replaces it
    manifest2, _ = ingest(cfg, out_dir=str(tmp_path / "shards"), work_dir=str(tmp_path))
    assert [s.sha256 for s in manifest2.shards] == [s.sha256 for s in manifest.shards]


def test_wide_layout_equals_long(tmp_path):
    raw = generate_sample(num_series=3, num_steps=300, seed=4)
    pq.write_table(raw, tmp_path / "long.parquet")
    wide = raw.to_pandas().pivot(index="timestamp", columns="series_id", values="target").reset_index()
    pacsv.write_csv(pa.Table.from_pandas(wide, preserve_index=False), tmp_path / "wide.csv")
    kw = {"lookback": 12, "horizon": 4}
    m1, _ = ingest(DataConfig(path=str(tmp_path / "long.parquet"), **kw), out_dir=str(tmp_path / "a"))
    m2, _ = ingest(DataConfig(path=str(tmp_path / "wide.csv"), layout="wide", **kw), out_dir=str(tmp_path / "b"))
    a = WindowDataset(str(tmp_path / "a"), split="val").batch(np.arange(10))
    b = WindowDataset(str(tmp_path / "b"), split="val").batch(np.arange(10))
    np.testing.assert_allclose(a["x"], b["x"], rtol=1e-6)
    assert [s.name for s in m1.series] == [s.name for s in m2.series]
