"""The training and validation steps: plain PyTorch, no Ray, so benchmarks and GPU tests use them bare."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist

from lstm_dist.config import PipelineConfig
from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset
from lstm_dist.models import Forecaster
from lstm_dist.train.precision import autocast


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
    fail_step: int = -1,
) -> dict[str, float]:
    """One epoch of `steps` optimizer steps; returns mean loss, gradient norm, loss scale, skipped steps."""
    model.train()
    order = np.fromiter(iter(sampler), dtype=np.int64)
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
    # Errors in original units only need the scale: the location cancels in (pred - actual).
    _, scale_all = ds.manifest.target_loc_scale(np.arange(ds.num_series))
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, |err|, err^2, n (values)
    for start in range(0, len(mine), batch_size):
        batch = _to_device(ds.batch(mine[start : start + batch_size]), device)
        with autocast(precision, device):
            out = net(batch["x"], future=batch["future"], series=batch["series"])
        out = out.float()
        n = batch["x"].shape[0]
        sums[0] += net.loss(out, batch["y"]).item() * n
        series = batch["series"].cpu().numpy()
        scale = torch.as_tensor(scale_all[series], dtype=torch.float32)[:, None, :]  # [B, 1, T]
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
