"""train.backend=local: the training loop in the driver's process (conf/debug.yaml). Checkpoints kept as Ray
Train keeps them (best k by validation loss, plus the latest), a rerun resumes, and the config refuses DDP.
That it trains the same weights as Ray Train is tests/test_e2e.py's (one run on each backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_serving import make_model

from lstm_dist.config import load_config
from lstm_dist.train.checkpoints import STATE_JSON
from lstm_dist.train.local import RECORD_FILE
from lstm_dist.train.trainer import fit

ROOT = Path(__file__).resolve().parent.parent


def _fit(cfg, shards: Path, runs: Path, *, epochs: int, keep: int):
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs, "keep_checkpoints": keep})})
    return fit(cfg, shard_dir=str(shards), storage_dir=str(runs), name="run")


def test_keeps_the_best_and_the_latest_and_a_rerun_resumes(ray_local, tmp_path: Path) -> None:
    cfg, shards, _ = make_model(tmp_path, ["train.patience=0", "train.lr=0.05"])
    assert cfg.train.backend == "local"
    threads = torch.get_num_threads()
    first = _fit(cfg, shards, tmp_path / "runs", epochs=3, keep=1)
    val = first.history.set_index("epoch")["val_loss"]
    assert first.best_checkpoint.name == f"checkpoint_{val.idxmin():06d}"
    assert first.latest_checkpoint.name == "checkpoint_000003"
    on_disk = sorted(p.name for p in first.run_dir.iterdir())
    kept = {first.best_checkpoint.name, first.latest_checkpoint.name}
    assert on_disk == sorted([*kept, RECORD_FILE])  # the others were removed; no temporary names are left
    assert json.loads((first.latest_checkpoint / STATE_JSON).read_text())["epoch"] == 3

    again = _fit(cfg, shards, tmp_path / "runs", epochs=5, keep=1)  # the same run, two more epochs
    history = again.history
    assert list(history["epoch"]) == [1, 2, 3, 4, 5]
    assert list(history["resumed_from_epoch"]) == [0, 0, 0, 3, 3]
    assert history.iloc[:3]["train_loss"].tolist() == first.history["train_loss"].tolist()
    assert torch.get_num_threads() == threads  # the loop's train.cpus_per_worker threads did not stay behind


def test_local_backend_refuses_more_than_one_worker() -> None:
    with pytest.raises(Exception, match=r"train\.backend=local .* train\.num_workers=2; set train\.num_workers=1"):
        load_config(ROOT / "conf/debug.yaml", ["train.num_workers=2"])
