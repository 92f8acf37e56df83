"""The per-worker training loop run by Ray Train: read it top to bottom.

Each Ray Train worker runs `train_loop_per_worker`: it memory-maps the shards, draws its
own disjoint share of window indices each epoch, trains a DDP-wrapped forecaster, evaluates
on its share of the validation windows (summed across ranks), and reports metrics plus a
checkpoint every epoch. Lines that exist only because of Ray are marked `# Ray:`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from lstm_dist.config import PipelineConfig
from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset
from lstm_dist.models import Forecaster, build_model
from lstm_dist.train.checkpoints import load_training_state, save_training_state
from lstm_dist.train.precision import grad_scaler, resolve_precision
from lstm_dist.train.schedule import EarlyStopping, warmup_cosine
from lstm_dist.train.steps import evaluate, train_epoch

# Test-only fault injection: "EPOCH:STEP:RANK:MARKER_FILE" makes that rank's process die
# (os._exit, like an OOM kill) at that step, once; the marker file makes it happen only once.
FAIL_ENV = "LSTM_DIST_FAIL_AT"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = PipelineConfig.model_validate(config["pipeline"])
    shard_dir = config["shard_dir"]
    ctx = ray.train.get_context()  # Ray: this worker's rank in the group
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # Ray: the GPU assigned to this worker, or cpu
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    precision = resolve_precision(cfg.train.precision, device)

    train_ds = WindowDataset(shard_dir, split="train", stride=cfg.data.stride)
    val_ds = WindowDataset(shard_dir, split="val")
    # Same seed on every rank: identical initial weights (DDP also broadcasts them).
    torch.manual_seed(cfg.train.seed)
    model_args = model_args_for(cfg, train_ds)
    model = build_model(cfg.model, **model_args)

    local_batch = max(1, cfg.train.batch_size // world_size)
    sampler = DistributedWindowSampler(len(train_ds), rank=rank, world_size=world_size, seed=cfg.train.seed)
    # Every rank must take the same number of steps, or DDP's all-reduce waits forever.
    steps_per_epoch = max(1, sampler.min_len // (local_batch * cfg.train.grad_accum))
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.train.epochs

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps=total_steps, warmup_steps=int(cfg.train.warmup_frac * total_steps))
    scaler = grad_scaler(precision)
    stopper = EarlyStopping(patience=cfg.train.patience, min_delta=cfg.train.min_delta)
    start_epoch = 0

    checkpoint = ray.train.get_checkpoint()  # Ray: set after a worker failure or on --resume
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            start_epoch = load_training_state(
                Path(ckpt_dir), model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, stopper=stopper
            )
    # Dropout and sampling differ per rank, and resume with the state saved at the epoch boundary.
    torch.manual_seed(cfg.train.seed + 1000 * rank + start_epoch)

    model = ray.train.torch.prepare_model(model)  # Ray: move to device, wrap in DDP when world_size > 1
    net: Forecaster = model.module if hasattr(model, "module") else model

    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        stats = train_epoch(
            model,
            net,
            train_ds,
            sampler,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            precision=precision,
            device=device,
            steps=steps_per_epoch,
            local_batch=local_batch,
            cfg=cfg,
            fail_step=_fail_step(epoch, rank),
        )
        val = evaluate(
            net,
            val_ds,
            rank=rank,
            world_size=world_size,
            precision=precision,
            device=device,
            batch_size=max(local_batch, 256),
            max_windows=cfg.train.max_val_windows,
        )
        stop = stopper.update(val["val_loss"], epoch)
        epoch_time = time.perf_counter() - t0
        metrics = {
            "epoch": epoch + 1,
            **stats,
            **val,
            "lr": scheduler.get_last_lr()[0],
            "epoch_time_s": epoch_time,
            "samples_per_s": stats["train_samples"] * world_size / epoch_time,
            "best_val_loss": stopper.best,
            "stopped_early": float(stop),
        }
        if device.type == "cuda":
            metrics["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if rank == 0:
            print(
                f"[train] epoch {epoch + 1}/{cfg.train.epochs} train_loss={stats['train_loss']:.4f} "
                f"val_loss={val['val_loss']:.4f} val_mae={val['val_mae']:.3f} {metrics['samples_per_s']:.0f} samples/s",
                flush=True,
            )
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:  # one copy of the weights is enough; every rank still reports
                save_training_state(
                    Path(tmp),
                    model=net,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    stopper=stopper,
                    epoch=epoch + 1,
                    model_args={"model": cfg.model.model_dump(), **model_args},
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)  # Ray: same number of calls on every rank
        if stop:
            break


def model_args_for(cfg: PipelineConfig, ds: WindowDataset) -> dict[str, int]:
    """The data-dependent sizes `build_model` needs; saved in every checkpoint to rebuild the network."""
    return {
        "num_features": ds.num_features,
        "num_targets": ds.num_targets,
        "horizon": ds.horizon,
        "num_future": ds.num_future,
        "num_series": ds.num_series,
    }


def _fail_step(epoch: int, rank: int) -> int:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return -1
    fail_epoch, fail_step, fail_rank, marker = spec.split(":", 3)
    if int(fail_epoch) != epoch or int(fail_rank) != rank or os.path.exists(marker):
        return -1
    Path(marker).touch()
    return int(fail_step)
