"""The data steps of the pipelines on a real local Ray: one ingest per input file, cached by content.

Changing one input file re-reads only that file (and re-shards); touching a file without changing it
reruns nothing; a bad file fails its own ingest and leaves nothing complete behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lstm_dist.config import load_config
from lstm_dist.data.synthetic import generate_sample
from lstm_dist.storage import SUCCESS
from lstm_dist.workflow import CACHED, DONE, Workflow

ROOT = Path(__file__).resolve().parent.parent


def split_sample(directory: Path, *, num_series: int = 4, num_steps: int = 300) -> list[Path]:
    """The sample data set as two Parquet files, half of the series in each."""
    table = generate_sample(num_series=num_series, num_steps=num_steps, seed=0).to_pandas()
    names = sorted(table["series_id"].unique())
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, part in enumerate((names[: num_series // 2], names[num_series // 2 :])):
        path = directory / f"part-{i}.parquet"
        table[table["series_id"].isin(part)].to_parquet(path, index=False)
        files.append(path)
    return files


def data_steps(cfg):
    from lstm_dist.pipelines.train import STEPS, data_steps

    wf = Workflow(cfg.workflow.work_dir, pipeline="train", steps=STEPS, progress=lambda _: None)
    shard, lineage = data_steps(cfg, wf, progress=lambda _: None)
    wf.finish()
    ingest = {r.label: r for r in wf.results if r.name == "ingest"}
    return ingest, shard, lineage


@pytest.mark.slow
def test_only_the_changed_file_is_ingested_again(ray_local, tmp_path: Path) -> None:
    files = split_sample(tmp_path / "data")
    cfg = load_config(
        ROOT / "conf/debug.yaml", [f"data.path={tmp_path / 'data'}", f"workflow.work_dir={tmp_path / 'w'}"]
    ).resolved()

    ingest, shard, lineage = data_steps(cfg)
    assert sorted(ingest) == ["part-0.parquet", "part-1.parquet"]
    assert {r.state for r in ingest.values()} == {DONE} and shard.state == DONE
    assert (shard.local_copy() / "shards" / "manifest.json").exists() and (shard.local_copy() / SUCCESS).exists()
    assert not (shard.local_copy() / "inputs").exists()  # the hard links to the ingested files are gone

    # Touched, not changed: nothing reruns.
    future = time.time() + 100
    os.utime(files[0], (future, future))
    again, shard2, lineage2 = data_steps(cfg)
    assert {r.state for r in again.values()} == {CACHED} and shard2.state == CACHED
    assert lineage2["fingerprint"] == lineage["fingerprint"]

    # One byte flipped in a cached shard: the shard step is rebuilt (same key), not trained on.
    from lstm_dist.data.integrity import verify_shards

    shard_file = sorted((shard.local_copy() / "shards").glob("*.arrow"))[0]
    data = bytearray(shard_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    assert verify_shards(shard.local_copy() / "shards")
    _, rebuilt, _ = data_steps(cfg)
    assert rebuilt.state == DONE and rebuilt.key == shard.key
    assert verify_shards(rebuilt.local_copy() / "shards") == []

    # One file changed: only it is read again, then the shards are rebuilt.
    frame = pq.read_table(files[1]).to_pandas()
    frame.loc[frame.index[-1], "target"] += 1.0
    frame.to_parquet(files[1], index=False)
    third, shard3, lineage3 = data_steps(cfg)
    assert third["part-0.parquet"].state == CACHED and third["part-0.parquet"].key == ingest["part-0.parquet"].key
    assert third["part-1.parquet"].state == DONE and third["part-1.parquet"].key != ingest["part-1.parquet"].key
    assert shard3.state == DONE and shard3.key != shard.key
    assert lineage3["fingerprint"] != lineage["fingerprint"]


@pytest.mark.slow
def test_a_bad_file_names_itself_and_leaves_nothing_complete(ray_local, tmp_path: Path) -> None:
    from lstm_dist.data.errors import DataError

    split_sample(tmp_path / "data")
    (tmp_path / "data" / "part-2.csv").write_text("timestamp,series_id,target,temperature\n2024-01-01 00:00,x,oops,1\n")
    cfg = load_config(
        ROOT / "conf/debug.yaml", [f"data.path={tmp_path / 'data'}", f"workflow.work_dir={tmp_path / 'w'}"]
    ).resolved()
    with pytest.raises(DataError, match="part-2.csv.*'target'.*oops"):
        data_steps(cfg)
    assert list((tmp_path / "w").rglob(SUCCESS)) == []  # the step commits all of its files or none
    assert (tmp_path / "data" / "part-2.csv").read_text().endswith("oops,1\n")  # the input is untouched
