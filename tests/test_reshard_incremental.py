"""Incremental re-sharding: only shards holding a changed or new series are written, the rest are hard-linked.

The incremental shard set must read exactly like a full rebuild from scratch on the same inputs (every
window of every split at the same index), with a manifest that is complete on its own.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from lstm_dist.config import DataConfig, load_config
from lstm_dist.data.ingest import ingest
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.shards import plan_around, plan_shards
from lstm_dist.data.splits import SPLITS
from lstm_dist.data.synthetic import generate_sample
from lstm_dist.data.windows import WindowDataset
from lstm_dist.workflow import Workflow

ROOT = Path(__file__).resolve().parent.parent
# Shards of at most 240 rows: [s000 s001] [s002] [s003 cut in 3] [s004 s005], so 6 shards.
LENGTHS = {"s000": 100, "s001": 100, "s002": 100, "s003": 600, "s004": 80, "s005": 80}
KW = {"lookback": 8, "horizon": 4, "val_size": 12, "test_size": 12, "covariate_cols": ["temperature"]}
KW_SHARDS = {**KW, "rows_per_shard": 240}


def write_series(directory: Path, lengths: dict[str, int], *, bump: tuple[str, ...] = ()) -> None:
    """One file per series (CSV and Parquet alternately), its rows a function of its name and length only;
    the series in `bump` get their last target + 1."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, n) in enumerate(sorted(lengths.items())):
        part = generate_sample(num_series=1, num_steps=n, seed=zlib.crc32(name.encode())).to_pandas()
        part["series_id"] = name
        if name in bump:
            part.loc[part.index[-1], "target"] += 1.0
        if i % 2:
            part.to_parquet(directory / f"{name}.parquet", index=False)
        else:
            part.to_csv(directory / f"{name}.csv", index=False)


def all_windows(shard_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for split in SPLITS:
        ds = WindowDataset(str(shard_dir), split=split)
        out[split] = ds.batch(np.arange(len(ds)))
    return out


def inodes(shard_dir: Path) -> dict[int, str]:
    m = Manifest.load(shard_dir)
    return {os.stat(shard_dir / s.file).st_ino: s.file for s in m.shards}


def test_plan_around_keeps_shards_and_packs_the_rest_run_by_run() -> None:
    lengths = [100, 100, 100, 600, 80, 80]
    before = plan_shards(lengths, rows_per_shard=240, window=12)
    assert [[p.series for p in s] for s in before] == [[0, 1], [2], [3], [3], [3], [4, 5]]
    kept = [before[0], *before[2:]]  # series 2 changed (and grew), series 6 is new
    after = plan_around([100, 100, 230, 600, 80, 80, 50], kept=kept, rows_per_shard=240, window=12)
    assert [k for _, k in after] == [0, None, 1, 2, 3, 4, None]
    assert [[p.series for p in s] for s, _ in after] == [[0, 1], [2], [3], [3], [3], [4, 5], [6]]
    # Cores tile every series once, in (series, row) order: the windows' order of a full rebuild.
    cores = [(p.series, p.row_start, p.core_stop) for s, _ in after for p in s]
    assert cores == sorted(cores)
    for series, n in enumerate([100, 100, 230, 600, 80, 80, 50]):
        mine = [(a, b) for s, a, b in cores if s == series]
        assert mine[0][0] == 0 and mine[-1][1] == n and all(x[1] == y[0] for x, y in zip(mine, mine[1:], strict=False))


def test_incremental_equals_full_rebuild_and_links_unchanged_shards(ray_local, tmp_path: Path) -> None:
    write_series(tmp_path / "v1", LENGTHS)
    first, r1 = ingest(DataConfig(path=str(tmp_path / "v1"), **KW_SHARDS), out_dir=str(tmp_path / "a"))
    assert r1.num_shards == 6 and r1.num_changed_series is None and "reused" not in r1.summary()

    # s002 changed, s900 is new (it sorts last, so no other series' index moves).
    write_series(tmp_path / "v2", {**LENGTHS, "s900": 90}, bump=("s002",))
    cfg = DataConfig(path=str(tmp_path / "v2"), **KW_SHARDS)
    inc, r2 = ingest(cfg, out_dir=str(tmp_path / "b"), previous=str(tmp_path / "a"))
    full, _ = ingest(cfg, out_dir=str(tmp_path / "c"))
    assert "reused 5 of 7 shards (2 series changed), wrote 2" in r2.summary(), r2.summary()
    assert r2.num_tasks["write"] == 2

    # Unchanged shards are the same files (hard links), not rewritten; the changed and new ones are new files.
    old, new = inodes(tmp_path / "a"), inodes(tmp_path / "b")
    assert len(old.keys() & new.keys()) == 5
    holds = {s.file: {first.series[g.series].name for g in s.segments} for s in first.shards}
    assert {holds[old[i]].pop() for i in old.keys() - new.keys()} == {"s002"}

    # The manifest stands on its own: checksums, series (rows, stats), windows; reads like a full rebuild.
    for shard in inc.shards:
        assert hashlib.sha256((tmp_path / "b" / shard.file).read_bytes()).hexdigest() == shard.sha256
    assert inc.series == full.series and inc.totals == full.totals
    assert inc.series[2].sha256 != first.series[2].sha256 and inc.series[0].sha256 == first.series[0].sha256
    a, b = all_windows(tmp_path / "b"), all_windows(tmp_path / "c")
    for split in SPLITS:
        assert len(b[split]["x"]) > 0 and a[split].keys() == b[split].keys()
        for key in b[split]:
            np.testing.assert_array_equal(a[split][key], b[split][key], err_msg=f"{split} {key}")

    # A series that sorts first moves every index: nothing can be kept, and the report says why.
    write_series(tmp_path / "v3", {**LENGTHS, "a000": 90})
    _, r3 = ingest(
        DataConfig(path=str(tmp_path / "v3"), **KW_SHARDS), out_dir=str(tmp_path / "d"), previous=str(tmp_path / "a")
    )
    assert r3.num_reused_shards == 0 and r3.num_rewritten_series == 6, r3.summary()


def test_global_scaler_rebuilds_everything(ray_local, tmp_path: Path) -> None:
    write_series(tmp_path / "v1", LENGTHS)
    write_series(tmp_path / "v2", LENGTHS, bump=("s002",))
    kw = {**KW_SHARDS, "scaler_scope": "global"}
    ingest(DataConfig(path=str(tmp_path / "v1"), **kw), out_dir=str(tmp_path / "a"))
    _, report = ingest(
        DataConfig(path=str(tmp_path / "v2"), **kw), out_dir=str(tmp_path / "b"), previous=str(tmp_path / "a")
    )
    assert report.num_reused_shards == 0 and "full rebuild: data.scaler_scope=global" in report.summary()
    assert not inodes(tmp_path / "a").keys() & inodes(tmp_path / "b").keys()


@pytest.mark.slow
def test_shard_step_reuses_the_previous_shard_step(ray_local, tmp_path: Path) -> None:
    from lstm_dist.pipelines.train import STEPS, data_steps

    data = tmp_path / "data"
    write_series(data, LENGTHS)
    cfg = load_config(
        ROOT / "conf/debug.yaml",
        [f"data.path={data}", f"workflow.work_dir={tmp_path / 'w'}", "data.rows_per_shard=240"]
        + [f"data.{k}={v}" for k, v in KW.items() if k != "covariate_cols"],
    ).resolved()

    def shard_step(force: set[str] | None = None):
        lines: list[str] = []
        wf = Workflow(cfg.workflow.work_dir, pipeline="train", steps=STEPS, force=force, progress=lines.append)
        shard, _ = data_steps(cfg, wf, progress=lines.append)
        wf.finish()
        return shard, "\n".join(lines)

    first, _ = shard_step()
    write_series(data, LENGTHS, bump=("s004",))
    second, log = shard_step()
    assert second.key != first.key and "reused 5 of 6 shards (1 series changed; 1 unchanged series rewritten)" in log, (
        log
    )
    shared = inodes(first.local_copy() / "shards").keys() & inodes(second.local_copy() / "shards").keys()
    assert len(shared) == 5
    _, forced_log = shard_step(force={"shard"})  # a forced rerun rebuilds from scratch
    assert "reused" not in forced_log, forced_log
