"""The training and validation steps: plain PyTorch, no Ray, so benchmarks and GPU tests use them bare.

`train_step` is one optimizer step (gradient accumulation, AMP, clipping, inf/NaN skipping);
`train_epoch` feeds it windows drawn by this rank's sampler; `evaluate` scores the validation
windows in original units. Nothing here synchronises the host with the GPU inside the step loop
(except where fp32/bf16 must decide to skip a step), so the GPU runs ahead of Python.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lstm_dist.data import transforms
from lstm_dist.models import Forecaster
from lstm_dist.train.precision import Precision, autocast

if TYPE_CHECKING:  # the data layer is only needed for type hints here
    from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset

Batch = dict[str, Tensor | None]


def train_step(
    model: torch.nn.Module,
    net: Forecaster,
    micro_batches: Sequence[Batch],
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    grad_clip: float,
) -> tuple[Tensor, Tensor]:
    """One optimizer step over `micro_batches` (gradient accumulation).

    `model` is what runs the forward pass (DDP-wrapped or not), `net` the bare Forecaster.
    Returns (mean loss, global gradient norm before clipping) as device tensors: no host sync.
    A step whose gradients hold inf/NaN is skipped (no parameter update); its norm is inf/NaN,
    which is how the caller counts skipped steps.
    """
    accum = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0]["x"].device)
    for i, batch in enumerate(micro_batches):
        # Only the last micro-batch all-reduces gradients; the earlier ones accumulate locally,
        # so accumulation costs no extra communication (DDP's no_sync).
        local = i < accum - 1 and hasattr(model, "no_sync")
        with model.no_sync() if local else contextlib.nullcontext():
            with autocast(precision, batch["x"].device):  # out: [B, H, T, P]; an ensemble's [M, B, H, T, P]
                out = model(batch["x"], future=batch["future"], series=batch["series"])
            loss = net.loss(out, batch["y"], x=batch["x"]) / accum  # fp32 scalar: the loss upcasts
            scaler.scale(loss).backward()  # scaled only for fp16; a no-op multiply otherwise
        loss_sum += loss.detach()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip or math.inf)
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips the update itself when unscale_ found inf/NaN
    elif torch.isfinite(norm):  # fp32/bf16 have no scaler to skip for them (one host sync)
        optimizer.step()
    scaler.update()  # halves the scale after a skipped step, grows it after a run of good ones
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, norm


def train_epoch(
    model: torch.nn.Module,
    net: Forecaster,
    ds: WindowDataset,
    sampler: DistributedWindowSampler,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    steps: int,
    local_batch: int,
    grad_accum: int = 1,
    grad_clip: float = 0.0,
    fail_step: int = -1,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """`steps` optimizer steps over this rank's share of the windows; metrics summed over all ranks.
    `on_step(step, loss)` after each step (rank 0's progress for the driver's terminal)."""
    model.train()
    order = sampler.indices()
    assert len(order) >= steps * grad_accum * local_batch, "steps_per_epoch must fit the sampler's share"
    loss_sum = torch.zeros((), device=device)
    norm_sum = torch.zeros((), device=device)
    skipped = torch.zeros((), device=device)
    lr = optimizer.param_groups[0]["lr"]
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        if step == fail_step:  # simulated hard crash of this worker process (tests only; see loop.FAIL_ENV)
            # Ray Train registers a report when its controller next polls the workers (every 2 s); a
            # crash right after a report would lose it. Real epochs last longer than that, tiny test ones not.
            time.sleep(3.0)
            os._exit(1)
        first = step * grad_accum * local_batch
        micro = [
            # Sorted within the micro-batch (the loss is a mean, order does not matter): neighbouring windows
            # are gathered one after the other, which is up to 1.4x faster (benchmarks/RESULTS.md).
            to_device(ds.batch(np.sort(order[first + m * local_batch : first + (m + 1) * local_batch])), device)
            for m in range(grad_accum)
        ]
        loss, norm = train_step(
            model, net, micro, optimizer=optimizer, scaler=scaler, precision=precision, grad_clip=grad_clip
        )
        finite = torch.isfinite(norm)
        loss_sum += loss
        norm_sum += torch.where(finite, norm, 0.0)
        skipped += (~finite).float()
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        with warnings.catch_warnings():
            # After a skipped first step torch warns of "scheduler.step() before optimizer.step()": intended here.
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()  # also after a skipped step: the schedule counts steps taken, not updates
        if on_step is not None:
            on_step(step + 1, loss)
    # One sync per epoch: totals over all ranks (the gradient norm and skips are already global).
    totals = torch.stack([loss_sum, torch.tensor(float(steps * grad_accum * local_batch), device=device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    train_time, cpu_time = time.perf_counter() - t0, time.process_time() - cpu0
    num_skipped = int(skipped.item())
    samples = float(totals[1])
    return {
        "train_loss": float(totals[0]) / (steps * world),
        "grad_norm": float(norm_sum) / max(1, steps - num_skipped),
        "loss_scale": scaler.get_scale() if scaler.is_enabled() else 1.0,
        "skipped_steps": float(num_skipped),
        "lr": lr,
        "train_samples": samples,
        "train_time_s": train_time,
        "samples_per_s": samples / train_time,
        # This worker's windows per second of its own CPU time: unlike samples_per_s, not slowed by other load.
        "samples_per_cpu_s": steps * grad_accum * local_batch / max(cpu_time, 1e-9),
    }


@torch.no_grad()
def evaluate(
    net: Forecaster,
    ds: WindowDataset,
    *,
    rank: int,
    world_size: int,
    precision: Precision,
    device: torch.device,
    batch_size: int,
    max_windows: int = 0,
) -> dict[str, float]:
    """Validation loss (scaled units) and MAE/RMSE in original units, over all ranks' disjoint shares."""
    net.eval()
    num = len(ds) if not max_windows else min(len(ds), max_windows)
    # An evenly spaced subset when capped, so every series and time of the validation part is represented.
    indices = np.linspace(0, len(ds) - 1, num).astype(np.int64) if num < len(ds) else np.arange(len(ds))
    mine = indices[rank::world_size]
    # Errors in original units only need the scale: the location cancels in (pred - actual).
    _, scale_all = ds.manifest.target_loc_scale(np.arange(ds.num_series))
    scale_all = torch.as_tensor(scale_all, dtype=torch.float32, device=device)  # [S, T]
    transformed = transforms.kind_of(ds.manifest) != "none"
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss * n, sum |err|, sum err^2, n
    for start in range(0, len(mine), batch_size):
        batch = to_device(ds.batch(mine[start : start + batch_size]), device)
        with autocast(precision, device):
            out = net(batch["x"], future=batch["future"], series=batch["series"])  # [B, H, T, P]
        n = batch["x"].shape[0]
        scale = scale_all[batch["series"]][:, None, :]  # [B, 1, T]
        err = (net.point(out.float()) - batch["y"]) * scale  # [B, H, T], original units
        if transformed:  # a log or Box-Cox does not cancel like the location: undo it on the host
            pred, actual, s = (t.cpu().numpy() for t in (net.point(out.float()), batch["y"], batch["series"]))
            diff = transforms.original_units(pred, s, ds.manifest) - transforms.original_units(actual, s, ds.manifest)
            err = torch.as_tensor(diff, dtype=torch.float32, device=device)
        sums[0] += net.loss(out, batch["y"], x=batch["x"]) * n
        sums[1] += err.abs().sum()
        sums[2] += err.square().sum()
        sums[3] += n
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)  # every rank gets the same totals, so early stopping agrees across ranks
    loss_n, abs_sum, sq_sum, count = sums.tolist()
    values = max(count * ds.horizon * ds.num_targets, 1.0)
    return {
        "val_loss": loss_n / max(count, 1.0),
        "val_mae": abs_sum / values,
        "val_rmse": math.sqrt(sq_sum / values),
    }


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> Batch:
    """numpy batch from `WindowDataset.batch` -> tensors on `device`; an empty `future` becomes None."""
    out: Batch = {}
    for key in ("x", "y", "future", "series"):
        value = batch.get(key)
        if value is None or (key == "future" and value.shape[-1] == 0):
            out[key] = None
            continue
        out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
    return out
