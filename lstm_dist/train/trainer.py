"""Wiring of the per-worker loop into a Ray Train `TorchTrainer`: scaling, storage, checkpoints, failures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from lstm_dist.config import PipelineConfig
from lstm_dist.train.loop import train_loop_per_worker


@dataclass
class TrainResult:
    """What the driver needs after training: the best checkpoint and the per-epoch history."""

    best_checkpoint: Path
    latest_checkpoint: Path
    history: pd.DataFrame
    run_dir: Path


def use_gpu(cfg: PipelineConfig) -> bool:
    """Resolve train.use_gpu=auto against the cluster the driver is connected to."""
    if cfg.train.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) >= 1
    return cfg.train.use_gpu == "yes"


def fit(
    cfg: PipelineConfig, *, shard_dir: str, storage_dir: str, name: str, callbacks: list | None = None
) -> TrainResult:
    """Train with `cfg.train.num_workers` DDP workers; a rerun with the same name/storage resumes.

    `callbacks` go to the run's RunConfig (a Tune trial passes TuneReportCallback)."""
    gpu = use_gpu(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={"pipeline": cfg.model_dump(mode="json"), "shard_dir": shard_dir},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_dir,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint("val_loss", "min") or result.checkpoint
    history = result.metrics_dataframe.sort_values("epoch").drop_duplicates("epoch", keep="last")
    return TrainResult(
        best_checkpoint=Path(best.path),
        latest_checkpoint=Path(result.checkpoint.path),
        history=history.reset_index(drop=True),
        run_dir=Path(result.path),
    )
