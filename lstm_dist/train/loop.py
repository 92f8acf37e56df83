"""The per-worker training loop run by Ray Train: read it top to bottom.

Each Ray Train worker runs `train_loop_per_worker`: it memory-maps the shards, draws its
own disjoint share of window indices each epoch, trains a DDP-wrapped forecaster, evaluates
on its share of the validation windows (summed across ranks), and reports metrics plus a
checkpoint every epoch. Lines that exist only because of Ray are marked `# Ray:`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import ray.train
import ray.train.torch
from lstm_dist.config import PipelineConfig
from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset
from lstm_dist.models import Forecaster, build_model
from lstm_dist.train.checkpoints import load_training_state, save_training_state
from lstm_dist.train.precision import autocast, grad_scaler, resolve_precision
from lstm_dist.train.schedule import EarlyStopping, warmup_cosine

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
            model, net, train_ds, sampler,
            optimizer=optimizer, scheduler=scheduler, scaler=scaler, precision=precision, device=device,
            steps=steps_per_epoch, local_batch=local_batch, cfg=cfg, epoch=epoch, rank=rank,
        )
        val = evaluate(net, val_ds, rank=rank, world_size=world_size, precision=precision, device=device,
                       batch_size=max(local_batch, 256), max_windows=cfg.train.max_val_windows)
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
                    Path(tmp), model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler, stopper=stopper,
                    epoch=epoch + 1, model_args={"model": cfg.model.model_dump(), **model_args},
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


def train_epoch(
    model: torch.nn.Module,
    net: Forecaster,
    ds: WindowDataset,
    sampler: DistributedWindowSampler,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    precision: str,
    device: torch.device,
    steps: int,
    local_batch: int,
    cfg: PipelineConfig,
    epoch: int,
    rank: int,
) -> dict[str, float]:
    """One epoch of `steps` optimizer steps; returns mean loss, gradient norm, loss scale, skipped steps."""
    model.train()
    order = np.fromiter(iter(sampler), dtype=np.int64)
    fail_step = _fail_step(epoch, rank)
    accum = cfg.train.grad_accum
    total_loss, total_norm, skipped, seen = 0.0, 0.0, 0, 0
    for step in range(steps):
        if step == fail_step:
            os._exit(1)  # simulated hard crash of this worker process (tests only)
        for micro in range(accum):
            start = (step * accum + micro) * local_batch
            batch = _to_device(ds.batch(order[start : start + local_batch]), device)
            # Only the last micro-batch syncs gradients across ranks; the others accumulate locally.
            sync = micro == accum - 1 or not hasattr(model, "no_sync")
            ctx = model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with autocast(precision, device):
                    out = model(batch["x"], future=batch["future"], series=batch["series"])  # [B, H, T, P]
                    loss = net.loss(out.float(), batch["y"]) / accum
                scaler.scale(loss).backward()
            total_loss += loss.item()
            seen += batch["x"].shape[0]
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip or float("inf"))
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)  # skipped inside when the gradients hold inf/nan
        scaler.update()
        if not torch.isfinite(norm) or (scaler.is_enabled() and scaler.get_scale() < scale_before):
            skipped += 1
        else:
            total_norm += norm.item()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return {
        "train_loss": total_loss / steps,
        "grad_norm": total_norm / max(1, steps - skipped),
        "loss_scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
        "skipped_steps": float(skipped),
        "train_samples": float(seen),
    }


@torch.no_grad()
def evaluate(
    net: Forecaster,
    ds: WindowDataset,
    *,
    rank: int,
    world_size: int,
    precision: str,
    device: torch.device,
    batch_size: int,
    max_windows: int = 0,
) -> dict[str, float]:
    """Validation loss (scaled) and MAE/RMSE in original units, summed over all ranks' disjoint shares."""
    net.eval()
    num = len(ds) if not max_windows else min(len(ds), max_windows)
    # An evenly spaced subset when capped, so every series and time of the validation part is represented.
    indices = np.linspace(0, len(ds) - 1, num).astype(np.int64) if num < len(ds) else np.arange(len(ds))
    mine = indices[rank::world_size]
    loc_all, scale_all = ds.manifest.target_loc_scale(np.arange(ds.num_series))
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, |err|, err^2, n (values)
    for start in range(0, len(mine), batch_size):
        batch = _to_device(ds.batch(mine[start : start + batch_size]), device)
        with autocast(precision, device):
            out = net(batch["x"], future=batch["future"], series=batch["series"])
        out = out.float()
        n = batch["x"].shape[0]
        sums[0] += net.loss(out, batch["y"]).item() * n
        series = batch["series"].cpu().numpy()
        loc = torch.as_tensor(loc_all[series], dtype=torch.float32)[:, None, :]  # [B, 1, T]
        scale = torch.as_tensor(scale_all[series], dtype=torch.float32)[:, None, :]
        err = (net.point(out).cpu() - batch["y"].cpu()) * scale  # [B, H, T], original units
        sums[1] += err.abs().sum().item()
        sums[2] += (err**2).sum().item()
        sums[3] += n
    values = float(sums[3]) * ds.horizon * ds.num_targets
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)  # every rank gets the same totals, so early stopping agrees
        values = float(sums[3]) * ds.horizon * ds.num_targets
    count = max(float(sums[3]), 1.0)
    return {
        "val_loss": float(sums[0]) / count,
        "val_mae": float(sums[1]) / max(values, 1.0),
        "val_rmse": float(np.sqrt(float(sums[2]) / max(values, 1.0))),
    }


def _to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for key in ("x", "y", "future", "series"):
        value = batch.get(key)
        if value is None or (key == "future" and value.shape[-1] == 0):
            out[key] = None
            continue
        out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
    return out


def _fail_step(epoch: int, rank: int) -> int:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return -1
    fail_epoch, fail_step, fail_rank, marker = spec.split(":", 3)
    if int(fail_epoch) != epoch or int(fail_rank) != rank or os.path.exists(marker):
        return -1
    Path(marker).touch()
    return int(fail_step)
