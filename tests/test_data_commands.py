"""`data ingest` / `data inspect` functions, no leakage across splits, several targets."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from lstm_dist.config import DataConfig, PipelineConfig
from lstm_dist.data.commands import ingest_command, inspect_command
from lstm_dist.data.errors import DataError
from lstm_dist.data.ingest import ingest
from lstm_dist.data.synthetic import generate_sample
from lstm_dist.data.windows import WindowDataset

pytestmark = pytest.mark.usefixtures("ray_local")


def test_ingest_and_inspect_commands(tmp_path):
    cfg = PipelineConfig(
        data=DataConfig(sample={"num_series": 2, "num_steps": 300}, lookback=24, horizon=6),
        workflow={"work_dir": str(tmp_path)},
    )
    manifest, report, text = ingest_command(cfg)
    assert (tmp_path / "data" / "shards" / "_SUCCESS").exists()
    assert "windows: train" in text and "s000" in text
    out = inspect_command(str(tmp_path / "data" / "shards"), verify=True)
    assert "checksums: all shards match" in out
    (tmp_path / "data" / "shards" / manifest.shards[0].file).write_bytes(b"corrupt")
    with pytest.raises(DataError, match=rf"{manifest.shards[0].file} has 7 bytes.*--force shard"):
        inspect_command(str(tmp_path / "data" / "shards"), verify=True)


def test_no_leakage(tmp_path):
    """Train windows touch only train rows; val/test targets lie only in their part; stats use train rows."""
    raw = generate_sample(num_series=2, num_steps=400, seed=9)
    pq.write_table(raw, tmp_path / "r.parquet")
    L, H = 20, 5
    cfg = DataConfig(path=str(tmp_path / "r.parquet"), lookback=L, horizon=H, val_size=60, test_size=0.2, stride=3)
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "s"))
    ts = raw.column("timestamp").cast("int64").to_numpy().reshape(2, 400)  # [S, N]
    for split in ("train", "val", "test"):
        ds = WindowDataset(str(tmp_path / "s"), split=split)
        b = ds.batch(np.arange(len(ds)))
        for s, t0 in zip(b["series"], b["t0"], strict=True):
            info = manifest.series[s]
            first_target = int(np.searchsorted(ts[s], t0))
            last_target = first_target + H - 1
            if split == "train":
                assert last_target < info.val_start  # inputs come before targets, so all of it is train
            elif split == "val":
                assert info.val_start <= first_target and last_target < info.test_start
            else:
                assert info.test_start <= first_target and last_target < info.num_rows
    assert all((s.val_start, s.test_start) == (260, 320) for s in manifest.series)


def test_several_targets_and_future_covariates(tmp_path):
    raw = generate_sample(num_series=2, num_steps=300, seed=1).to_pandas()
    raw["load2"] = raw.target * 2 + 1
    raw["price_plan"] = np.sin(np.arange(len(raw)))
    raw.to_parquet(tmp_path / "r.parquet", index=False)
    cfg = DataConfig(
        path=str(tmp_path / "r.parquet"),
        target_cols=["target", "load2"],
        covariate_cols=["temperature"],
        future_cols=["price_plan"],
        calendar_features=["hour"],
        lookback=12,
        horizon=4,
    )
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "s"))
    ds = WindowDataset(str(tmp_path / "s"), split="test")
    b = ds.batch(np.arange(5))
    assert manifest.x_features == ["target", "load2", "temperature", "price_plan", "hour_sin", "hour_cos"]
    assert manifest.future_features == ["price_plan", "hour_sin", "hour_cos"]
    assert b["x"].shape == (5, 12, 6) and b["y"].shape == (5, 4, 2) and b["future"].shape == (5, 4, 3)
    # the future block of window i is the x row of the same time in a later window
    loc, scale = manifest.target_loc_scale(b["series"])
    assert loc.shape == (5, 2)
    np.testing.assert_allclose(
        b["y"][..., 1] * scale[:, None, 1] + loc[:, None, 1],
        2 * (b["y"][..., 0] * scale[:, None, 0] + loc[:, None, 0]) + 1,
        rtol=1e-4,
    )
