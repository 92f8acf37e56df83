"""Wiring of the per-worker loop into a Ray Train `TorchTrainer`: scaling, storage, checkpoints, failures.

A run lives in `<storage_dir>/<name>/`: Ray Train's checkpoints (the best `train.keep_checkpoints`
by validation loss, plus always the latest, which a restart resumes from) and its snapshot of them.
Calling `fit` again with the same storage dir and name continues that run from its latest checkpoint.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
import ray.train
import torch
import yaml
from ray.train.torch import TorchConfig, TorchTrainer

from lstm_dist.cluster import (
    cluster_address,
    local_train_config,
    quick_train_poll,
    ray_gpus,
    resources,
    train_backend,
)
from lstm_dist.config import ConfigError, PipelineConfig, dump_yaml
from lstm_dist.models.saved import MODEL_FILE
from lstm_dist.storage import Store
from lstm_dist.train.checkpoints import load_history
from lstm_dist.train.local import RECORD_FILE, best_of, run_local
from lstm_dist.train.loop import FAIL_ENV, train_loop_per_worker
from lstm_dist.train.precision import resolve_precision
from lstm_dist.train.progress import driver_progress

RUN_CONFIG_FILE = "lstm_dist_config.yaml"  # the config a run was started with, beside Ray's files
RUN_SHARDS_FILE = "lstm_dist_shards.txt"  # the shard directory it trains on
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


@dataclass
class TrainResult:
    """What the driver needs after training: the best checkpoint and the per-epoch history."""

    best_checkpoint: Path
    latest_checkpoint: Path
    history: pd.DataFrame
    run_dir: Path
    checkpoints: list[Path]
    """Every checkpoint kept on disk (the best k and the latest), oldest first."""


def use_gpu(cfg: PipelineConfig) -> bool:
    """Resolve train.use_gpu=auto against the cluster the driver is connected to."""
    if cfg.train.use_gpu == "auto":
        return resources().get("GPU", 0) >= 1
    return cfg.train.use_gpu == "yes"


def fit(
    cfg: PipelineConfig,
    *,
    shard_dir: str,
    storage_dir: str,
    name: str,
    callbacks: list | None = None,
    init_weights: str | None = None,
    local_dir: str | None = None,
    train_split: str = "train",
    label: str | None = None,
) -> TrainResult:
    """Train with `cfg.train.num_workers` DDP workers; a rerun with the same name/storage resumes.

    `shard_dir` may be a path inside a step output on an object store (`StepResult.file("shards")`):
    each worker reads its node's copy (`storage.local_copy`). `storage_dir` may be a URI too: workers
    on any node then write checkpoints there (Ray Train with a pyarrow filesystem), a rerun resumes from
    there on any machine, and once training ends the run is downloaded to `<local_dir>/<name>/`, so the
    returned paths are local ones; `init_weights` (a driver path) then travels to the workers as bytes.

    `callbacks` go to the run's RunConfig (a Tune trial passes TuneReportCallback).
    `init_weights`: a checkpoint directory or model.pt to start from instead of fresh weights (warm
    start; same architecture and data shape); once the run has a checkpoint of its own, that wins.
    `train_split="all"`: the final fit, on every window up to the end of each series, without validation
    (no early stopping; the latest checkpoint is the model). `label` (the pipeline step, e.g. "final_fit"):
    rank 0's progress is drawn on this process's terminal, one line per epoch (train/progress.py); without it
    (a tune trial) the workers print their epoch lines themselves.

    `train.backend=local` (one worker) runs the same loop in this process instead of Ray Train's workers
    (train/local.py): no Ray Train start-up; checkpoints under `<storage_dir>/<name>/` (`<local_dir>/<name>/` for
    a URI), kept and resumed the same way; `auto` resolves to one or the other (`cluster.train_backend`). A tune
    trial (`callbacks`) always trains on Ray Train."""
    local = train_backend(cfg) == "local" and not callbacks  # a tune trial (callbacks) reports through Ray Train
    if local:
        cfg = local_train_config(cfg)
    gpu = _check_devices(cfg)
    store = Store(storage_dir)
    if not store.local and local_dir is None:
        raise ValueError(f"fit: storage_dir={storage_dir} is a URI; give local_dir for the local copy of the run")
    init = str(init_weights) if init_weights else None
    if init and not store.local:  # workers on other nodes cannot open a driver path: send the weights along
        init = Path(init, MODEL_FILE).read_bytes() if Path(init).is_dir() else Path(init).read_bytes()
    loop_config = {
        "pipeline": cfg.model_dump(mode="json"),
        "shard_dir": str(shard_dir),
        "init_weights": init,
        "train_split": train_split,
        "label": label or "train",
    }
    if local:
        run_dir = Path(storage_dir if store.local else local_dir) / name
        return _fit_local(cfg, loop_config, run_dir=run_dir, gpu=gpu, label=label)
    run_config = _run_config(cfg, store=store, storage_dir=storage_dir, name=name, callbacks=callbacks)
    with driver_progress(label) if label else nullcontext() as queue, quick_train_poll():
        result = _trainer(cfg, gpu=gpu, loop_config={**loop_config, "progress": queue}, run_config=run_config).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{name}' under {storage_dir} reported no checkpoint")
    run_dir = Path(result.path)
    if not store.local:  # the finished run as local files: the caller (and MLflow logging) reads them
        run_dir = Path(local_dir) / name
        shutil.rmtree(run_dir, ignore_errors=True)
        store.download(store.join(name), run_dir)
    return _train_result(result, run_dir)


def _fit_local(cfg: PipelineConfig, loop_config: dict, *, run_dir: Path, gpu: bool, label: str | None) -> TrainResult:
    """train.backend=local: the loop in this process (train/local.py), its checkpoints in `run_dir`; a TrainResult
    like `_train_result`'s for a Ray Train run."""
    device = torch.device("cuda" if gpu else "cpu")
    with driver_progress(label, local=True) if label else nullcontext() as queue:
        record = run_local(
            {**loop_config, "progress": queue}, run_dir=run_dir, keep=cfg.train.keep_checkpoints, device=device
        )
    latest = run_dir / record["latest"]
    return TrainResult(
        best_checkpoint=run_dir / best_of(record),
        latest_checkpoint=latest,
        history=pd.DataFrame(load_history(latest)),
        run_dir=run_dir,
        checkpoints=[run_dir / e["dir"] for e in record["checkpoints"]],
    )


def _trainer(cfg: PipelineConfig, *, gpu: bool, loop_config: dict, run_config: ray.train.RunConfig) -> TorchTrainer:
    """The Ray Train trainer: `cfg.train.num_workers` DDP workers running the loop with `loop_config`."""
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=gpu,
            resources_per_worker={
                "CPU": cfg.train.cpus_per_worker,
                **({"GPU": cfg.train.gpus_per_worker} if gpu else {}),
            },
        ),
        run_config=run_config,
    )


def _check_devices(cfg: PipelineConfig) -> bool:
    """Whether to train on GPUs; refuses what cannot run before any worker starts (and retries max_failures times)."""
    gpu = use_gpu(cfg)
    if gpu and cfg.train.gpus_per_worker < 1 and cfg.train.num_workers > 1:
        raise ConfigError(
            f"train.gpus_per_worker={cfg.train.gpus_per_worker} with train.num_workers={cfg.train.num_workers}: "
            "DDP over NCCL needs a whole GPU per worker; use gpus_per_worker=1, or 1 worker to share a GPU"
        )
    if gpu:
        _check_gpu_count(cfg)
    else:  # fp16 on CPU
        resolve_precision(cfg.train.precision, torch.device("cpu"), cell=cfg.model.cell)
    return gpu


def _check_gpu_count(cfg: PipelineConfig) -> None:
    """Enough GPUs for the workers: a cluster this run joins may still gain some (an autoscaler), so there it warns and
    waits; a local Ray or the local backend has this machine's and never more, so there it refuses at once."""
    need = cfg.train.num_workers * cfg.train.gpus_per_worker
    local = cfg.train.backend == "local"
    joined = not local and bool(cluster_address(cfg))
    if local:
        have, where = torch.cuda.device_count(), f"torch {torch.__version__} sees"
    else:
        have = ray_gpus()
        where = "the Ray cluster has" if joined else "the local Ray has this machine's"
    if have >= need:
        return
    workers = f"{cfg.train.num_workers} worker(s) x {cfg.train.gpus_per_worker:g}"
    what = f"train.use_gpu=yes: {where} {have:g} GPU(s) for {workers}"
    if joined:
        warnings.warn(f"{what}; the run waits until enough GPUs join (e.g. from an autoscaler)", stacklevel=4)
        return
    raise ConfigError(
        f"{what}, and no more can join; set train.use_gpu=auto (GPUs when there are any) or no, lower "
        "train.num_workers, or join a cluster with GPUs (workflow.ray_address)"
    )


def _run_config(
    cfg: PipelineConfig, *, store: Store, storage_dir: str, name: str, callbacks: list | None
) -> ray.train.RunConfig:
    """Where the run keeps its checkpoints, which it keeps, and how often it may restart."""
    # Test-only fault injection travels from the driver's environment to the workers (see loop.FAIL_ENV).
    worker_env = {FAIL_ENV: os.environ[FAIL_ENV]} if os.environ.get(FAIL_ENV) else {}
    return ray.train.RunConfig(
        name=name,
        # A URI goes with its filesystem (Ray's own from_uri would miss e.g. an endpoint_override).
        storage_path=store.inner(store.root) if not store.local else str(storage_dir),
        storage_filesystem=None if store.local else store.fs,
        # Ray keeps the best `num_to_keep` by the score and, on top, always the latest checkpoint.
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.train.keep_checkpoints,
            checkpoint_score_attribute="val_loss",
            checkpoint_score_order="min",
        ),
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        # Ray Train's INFO lines (every report, every checkpoint) drown the one progress line per epoch.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        worker_runtime_env={"env_vars": worker_env} if worker_env else None,
        callbacks=callbacks,
    )


def _train_result(result: ray.train.Result, run_dir: Path) -> TrainResult:
    """The finished run's checkpoints as paths under `run_dir` (a local copy when the run lives on a URI)."""

    def local(ckpt: ray.train.Checkpoint) -> Path:
        return run_dir / Path(ckpt.path).name

    kept = sorted(
        (local(c) for c, _ in result.best_checkpoints or []), key=lambda p: p.name
    )  # checkpoint_<timestamp> names sort by age
    best = result.get_best_checkpoint("val_loss", "min") or result.checkpoint
    history = pd.DataFrame(load_history(local(result.checkpoint)))
    return TrainResult(
        best_checkpoint=local(best),
        latest_checkpoint=local(result.checkpoint),
        history=history,
        run_dir=run_dir,
        checkpoints=kept,
    )


def has_checkpoints(run_dir: Path) -> bool:
    """Whether `run_dir` is a training run that can be resumed: Ray Train's snapshot, or a local run's record."""
    return (run_dir / SNAPSHOT_FILE).exists() or (run_dir / RECORD_FILE).exists()


def train_from_shards(
    cfg: PipelineConfig, *, shard_dir: str | Path | None, resume: str | None = None, progress=print
) -> TrainResult:
    """Train on an existing shard directory (no ingest); runs live under `<work_dir>/train_runs/<name>`.

    `resume` names a run there to continue from its latest checkpoint; its shard directory is reused
    unless `shard_dir` is given, and its model config must match `cfg.model`.
    Ray must already be initialised (the CLI and the tests do it).
    """
    from lstm_dist.data.manifest import Manifest

    storage = Path(cfg.workflow.work_dir) / "train_runs"
    if resume:
        run_dir = storage / resume
        if not has_checkpoints(run_dir):
            runs = sorted(p.name for p in storage.glob("*") if has_checkpoints(p)) if storage.is_dir() else []
            raise ConfigError(
                f"--resume {resume}: no training run with checkpoints at {run_dir}; "
                f"runs under {storage}: {', '.join(runs) or 'none'}"
            )
        if shard_dir is None:
            shard_dir = (run_dir / RUN_SHARDS_FILE).read_text().strip()
        saved = yaml.safe_load((run_dir / RUN_CONFIG_FILE).read_text())
        if saved["model"] != cfg.model.model_dump(mode="json"):
            raise ConfigError(
                f"--resume {resume}: the model config differs from the one the run started with "
                f"({run_dir / RUN_CONFIG_FILE}); its checkpoints would not load. Use the same model settings."
            )
        changed = {k: (v, getattr(cfg.train, k)) for k, v in saved["train"].items() if getattr(cfg.train, k) != v}
        if changed:
            progress(f"[train] resuming with changed train settings (was -> now): {changed}")
        name = resume
    else:
        if shard_dir is None:
            raise ConfigError("train: give the shard directory (--shards DIR), the output of an ingest")
        name = f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        while (storage / name).exists():  # never continue someone else's run by accident
            name += "x"
        run_dir = storage / name
    shard_dir = Path(shard_dir).resolve()
    manifest = Manifest.load(shard_dir)  # a clear DataError for a missing or unfinished shard set
    if (cfg.data.lookback, cfg.data.horizon) != (manifest.lookback, manifest.horizon):
        progress(
            f"[train] note: the shards were built with lookback={manifest.lookback} horizon={manifest.horizon}; "
            f"data.lookback/data.horizon of the config ({cfg.data.lookback}/{cfg.data.horizon}) are not used"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / RUN_CONFIG_FILE).write_text(dump_yaml(cfg))
        (run_dir / RUN_SHARDS_FILE).write_text(str(shard_dir))
    progress(f"[train] run {name}: {cfg.train.num_workers} worker(s), shards {shard_dir}")
    result = fit(cfg, shard_dir=str(shard_dir), storage_dir=str(storage), name=name, label="train")
    result.history.to_csv(run_dir / "history.csv", index=False)
    return result
