"""train.backend=local: the training loop in the driver's process (conf/debug.yaml). Checkpoints kept as Ray
Train keeps them (best k by validation loss, plus the latest), a rerun resumes, and the config refuses DDP.
train.backend=auto (the frequency configs): local on one machine's CPUs, Ray Train on a cluster or 2+ GPUs.
That it trains the same weights as Ray Train is tests/test_e2e.py's (one run on each backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_serving import make_model

from lstm_dist.cluster import train_backend
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


def test_auto_backend_on_one_machine_trains_in_this_process_with_all_the_workers_cpus(ray_local, tmp_path) -> None:
    """`auto` on a local Ray without GPUs: the DDP config trains as one local worker holding both workers' CPUs,
    the same run as `local` with those CPUs (same global batch, so the same steps and losses)."""
    cfg, shards, _ = make_model(tmp_path, ["train.patience=0"])
    auto = cfg.model_copy(deep=True)
    auto.train.backend, auto.train.num_workers = "auto", 2
    assert train_backend(auto) == "local"
    ran = _fit(auto, shards, tmp_path / "auto", epochs=2, keep=1)
    assert (ran.run_dir / RECORD_FILE).is_file()  # the local backend's record, not a Ray Train snapshot
    local = cfg.model_copy(deep=True)
    local.train.cpus_per_worker = 2
    same = _fit(local, shards, tmp_path / "local", epochs=2, keep=1)
    assert ran.history["train_loss"].tolist() == same.history["train_loss"].tolist()
    assert ran.history["val_loss"].tolist() == same.history["val_loss"].tolist()


@pytest.mark.parametrize(
    ("overrides", "env", "gpus", "expected"),
    [
        (["train.backend=ray"], None, 0, "ray"),
        (["train.backend=local", "train.num_workers=1"], None, 4, "local"),
        ([], None, 0, "local"),  # one machine's CPUs
        ([], None, 1, "local"),  # one GPU: one process uses it
        ([], None, 2, "ray"),  # DDP over the GPUs
        (["train.use_gpu=no"], None, 2, "local"),
        (["workflow.ray_address=ray://127.0.0.1:10001"], None, 0, "ray"),  # a cluster
        ([], "127.0.0.1:6379", 0, "ray"),
    ],
)
def test_auto_backend_is_ray_train_on_a_cluster_or_several_gpus(monkeypatch, overrides, env, gpus, expected) -> None:
    from lstm_dist import cluster

    cfg = load_config(ROOT / "conf/monthly.yaml", overrides)
    assert cfg.train.backend in ("auto", "ray", "local")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    monkeypatch.setattr(cluster, "ray_started", lambda: False)  # the count Ray would detect on this machine
    monkeypatch.setattr(cluster, "local_gpu_count", lambda: gpus)
    assert cluster.train_backend(cfg) == expected


def test_with_weight_averaging_the_validated_and_checkpointed_model_is_the_average(ray_local, tmp_path) -> None:
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.models.saved import load_model
    from lstm_dist.train.checkpoints import STATE_FILE
    from lstm_dist.train.steps import evaluate

    cfg, shards, _ = make_model(tmp_path, ["train.patience=0", "train.lr=0.05", "train.ema_decay=0.9"])
    ran = _fit(cfg, shards, tmp_path / "runs", epochs=2, keep=1)
    served = load_model(ran.latest_checkpoint)
    val = WindowDataset(str(shards), split="val")
    scored = evaluate(served, val, rank=0, world_size=1, precision="fp32", device=torch.device("cpu"), batch_size=256)
    assert scored["val_loss"] == pytest.approx(ran.history["val_loss"].iloc[-1], rel=1e-5)
    raw = torch.load(ran.latest_checkpoint / STATE_FILE, weights_only=True)["raw_weights"]
    assert any(not torch.equal(raw[k], v) for k, v in served.state_dict().items())  # the optimizer's, not served
