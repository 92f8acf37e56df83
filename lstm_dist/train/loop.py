"""The per-worker training loop run by Ray Train (or, with train.backend=local, in this process): read it top to
bottom.

Each Ray Train worker runs `train_loop_per_worker`: it memory-maps the shards, draws its
own disjoint share of window indices each epoch, trains a DDP-wrapped forecaster, evaluates
on its share of the validation windows (summed across ranks), and reports metrics plus a
checkpoint every epoch. Lines that exist only because of Ray are marked `# Ray:`.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from lstm_dist.config import PipelineConfig
from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset
from lstm_dist.models import Forecaster, build_model
from lstm_dist.models.saved import MODEL_FILE, load_weights
from lstm_dist.ray_compat import quiet_train_report_logs
from lstm_dist.storage import local_copy
from lstm_dist.train.checkpoints import TrainingState, load_training_state, model_args_for, save_training_state
from lstm_dist.train.precision import Precision, grad_scaler, resolve_precision
from lstm_dist.train.progress import StepReporter, report_ready
from lstm_dist.train.schedule import EarlyStopping, warmup_cosine, weight_average
from lstm_dist.train.steps import evaluate, train_epoch

# Test-only fault injection: "EPOCH:STEP:RANK:MARKER_FILE" makes that rank's process die
# (os._exit, like an OOM kill) at that step of that 0-based epoch; the marker file makes it
# happen once. `trainer.fit` forwards the variable from the driver to the workers.
FAIL_ENV = "LSTM_DIST_FAIL_AT"


class RaySession:
    """Ray Train's side of the loop: this worker's place and device, its checkpoints and its reports."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()  # Ray: this worker's place in the group
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()  # Ray: the GPU assigned to this worker, or cpu

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(net)  # Ray: move to the device, wrap in DDP when world_size > 1

    def restored(self) -> AbstractContextManager[Path | None]:
        """The latest checkpoint after a worker failure or on --resume, as a directory; None on a fresh start."""
        return checkpoint_dir(ray.train.get_checkpoint())  # Ray: the run's latest checkpoint

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None  # Ray: uploaded by report
        ray.train.report(metrics, checkpoint=ckpt)  # Ray: same number of calls on every rank


@contextmanager
def checkpoint_dir(checkpoint: Any) -> Iterator[Path | None]:
    """A Ray checkpoint (Train's or Tune's) as a local directory while the block runs; None without one."""
    if not checkpoint:
        yield None
        return
    with checkpoint.as_directory() as ckpt_dir:
        yield Path(ckpt_dir)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The loop as a Ray Train worker runs it."""
    quiet_train_report_logs()
    run_loop(config, RaySession())


def run_loop(config: dict[str, Any], session: Any) -> None:
    """Train one rank: `session` is its place, device, checkpoints and reports (RaySession in a Ray Train worker,
    train.local.LocalSession in this process)."""
    cfg = PipelineConfig.model_validate(config["pipeline"])
    tc = cfg.train
    device, rank, world_size = session.device, session.rank, session.world_size
    torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
    precision = resolve_precision(tc.precision, device, cell=cfg.model.cell)
    w = _Worker(cfg, rank=rank, world_size=world_size, device=device, precision=precision)

    train_ds, val_ds = _datasets(config, rank=rank)
    model_args = model_args_for(train_ds)
    torch.manual_seed(tc.seed)  # same seed on every rank: identical initial weights (DDP broadcasts them too)
    net: Forecaster = build_model(cfg.model, **model_args)
    if config.get("init_weights"):  # warm start, e.g. from the champion; a checkpoint below takes precedence
        _load_init_weights(net, config["init_weights"])
    model = session.prepare(net)
    net = model.module if hasattr(model, "module") else model

    w.local_batch = _local_batch(tc.batch_size, rank=rank, world_size=world_size)
    sampler = _sampler(cfg, train_ds, rank=rank, world_size=world_size, local_batch=w.local_batch)
    w.steps_per_epoch = _steps_per_epoch(cfg, sampler, local_batch=w.local_batch, world_size=world_size)
    state = _training_state(cfg, net, w)
    start_epoch, history = _restore(state, session)
    if state.stopper.stopped:
        return  # the run had already stopped early; nothing to continue (no report on any rank)
    ckpt_args = {"model": cfg.model.model_dump(mode="json"), **model_args}
    label, queue = config.get("label", "train"), config.get("progress") if rank == 0 else None
    if queue is not None:
        report_ready(queue, f"{world_size} worker(s) on {w.device.type}, {w.steps_per_epoch} steps an epoch")
    for epoch in range(start_epoch, tc.epochs):
        # Rank 0 sends its progress to the driver's terminal when the driver asked for it (trainer.fit's label).
        reporter = (
            None if queue is None else StepReporter(queue, epoch=epoch + 1, epochs=tc.epochs, steps=w.steps_per_epoch)
        )
        metrics = _epoch(
            w, epoch, model=model, state=state, data=(train_ds, val_ds, sampler), resumed=start_epoch,
            on_step=None if reporter is None else reporter.step,
        )  # fmt: skip
        history.append(metrics)
        if reporter is not None:  # (a Queue is falsy while empty: never `if queue`)
            reporter.done(_epoch_line(metrics, epochs=tc.epochs, label=label))
        elif rank == 0:
            print(_epoch_line(metrics, epochs=tc.epochs, label=label), flush=True)
        _report(metrics, state, session, history=history, model_args=ckpt_args)
        if metrics["stopped_early"]:
            break


@dataclass
class _Worker:
    """This worker's place, device and batch geometry: what every epoch needs besides the model."""

    cfg: PipelineConfig
    rank: int
    world_size: int
    device: torch.device
    precision: Precision
    local_batch: int = 0
    steps_per_epoch: int = 0


def _training_state(cfg: PipelineConfig, net: Forecaster, w: _Worker) -> TrainingState:
    """The optimizer, schedule, grad scaler, early stopping and weight average of a run, around its model."""
    tc = cfg.train
    total_steps = w.steps_per_epoch * tc.epochs
    # Built after the model is on its device, so restored optimizer state lands there too.
    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    return TrainingState(
        model=net,
        optimizer=optimizer,
        scheduler=warmup_cosine(optimizer, total_steps=total_steps, warmup_steps=int(tc.warmup_frac * total_steps)),
        scaler=grad_scaler(w.precision),
        stopper=EarlyStopping(patience=tc.patience, min_delta=tc.min_delta),
        average=weight_average(net, optimizer, decay=tc.ema_decay),
    )


def _epoch(
    w: _Worker,
    epoch: int,
    *,
    model: torch.nn.Module,
    state: TrainingState,
    data: tuple,
    resumed: int,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """One epoch on this rank: train, validate (all-reduced), decide on early stopping; returns its metrics."""
    tc, device = w.cfg.train, w.device
    train_ds, val_ds, sampler = data
    t0 = time.perf_counter()
    # Dropout draws depend on (seed, rank, epoch) only, so a resumed epoch replays exactly.
    torch.manual_seed(epoch_seed(tc.seed, rank=w.rank, epoch=epoch))
    sampler.set_epoch(epoch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train = train_epoch(
        model,
        state.model,
        train_ds,
        sampler,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
        precision=w.precision,
        device=device,
        steps=w.steps_per_epoch,
        local_batch=w.local_batch,
        grad_accum=tc.grad_accum,
        grad_clip=tc.grad_clip,
        fail_step=_fail_step(epoch, w.rank),
        on_step=on_step,
    )
    val = dict.fromkeys(("val_loss", "val_mae", "val_rmse"), math.nan)
    if len(val_ds):
        val = evaluate(
            state.served,
            val_ds,
            rank=w.rank,
            world_size=w.world_size,
            precision=w.precision,
            device=device,
            batch_size=max(w.local_batch, 256),
            max_windows=tc.max_val_windows,
        )
    # Every rank sees the same all-reduced val_loss, so all stop together.
    stop = state.stopper.update(val["val_loss"], epoch + 1) if len(val_ds) else False
    return {
        "epoch": epoch + 1,
        **train,
        **val,
        "best_val_loss": state.stopper.best,
        "epoch_time_s": time.perf_counter() - t0,
        "resumed_from_epoch": resumed,  # 0: this epoch ran in a fresh start, k: after restoring epoch k
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
        "stopped_early": float(stop),
    }


def _datasets(config: dict[str, Any], *, rank: int) -> tuple[WindowDataset, WindowDataset | _NoWindows]:
    """This worker's view of the train and validation windows (every rank maps the same shards)."""
    # A shard dir on an object store is downloaded once per node, into that node's cache.
    shard_dir = local_copy(config["shard_dir"])
    # The final fit trains on split "all" (every window up to the end of each series): nothing is left to
    # validate on, so it runs its fixed epochs and the latest checkpoint is the model.
    train_split = config.get("train_split", "train")
    train_ds = WindowDataset(shard_dir, split=train_split)  # the shards' own lookback, horizon, stride
    val_ds = WindowDataset(shard_dir, split="val") if train_split == "train" else _NoWindows()
    if len(val_ds) == 0 and rank == 0 and train_split == "train":
        warnings.warn(
            "the shards hold no validation windows: no early stopping, val metrics are NaN, keep the latest checkpoint",
            stacklevel=1,
        )
    return train_ds, val_ds


def _local_batch(batch_size: int, *, rank: int, world_size: int) -> int:
    """Each rank's share of the global batch."""
    local_batch = max(1, batch_size // world_size)
    if rank == 0 and local_batch * world_size != batch_size:
        warnings.warn(
            f"train.batch_size={batch_size} does not split evenly over {world_size} workers; "
            f"the global batch is {local_batch * world_size}",
            stacklevel=1,
        )
    return local_batch


def _sampler(
    cfg: PipelineConfig, train_ds: WindowDataset, *, rank: int, world_size: int, local_batch: int
) -> DistributedWindowSampler:
    """This rank's disjoint share of the train windows, redrawn every epoch."""
    weights = train_ds.window_weights(cfg.data.series_weights)  # per-series sampling weights, or None
    shard_local = cfg.data.batch_locality == "shard"  # every batch from one shard: one gather, fewer series mixed
    return DistributedWindowSampler(
        len(train_ds),
        rank=rank,
        world_size=world_size,
        seed=cfg.train.seed,
        weights=weights,
        block=local_batch if shard_local else 0,
        groups=train_ds.window_shards() if shard_local else None,
    )


def _steps_per_epoch(
    cfg: PipelineConfig, sampler: DistributedWindowSampler, *, local_batch: int, world_size: int
) -> int:
    """Optimizer steps per epoch: the same on every rank, or DDP's all-reduce waits forever."""
    tc = cfg.train
    steps = sampler.min_len // (local_batch * tc.grad_accum)
    if steps < 1:
        raise ValueError(
            f"train.batch_size={tc.batch_size} x train.grad_accum={tc.grad_accum} needs more train windows "
            f"per worker than the {sampler.min_len} each of {world_size} workers gets; lower them or add data"
        )
    return min(steps, tc.max_steps_per_epoch) if tc.max_steps_per_epoch else steps


def _restore(state: TrainingState, session: Any) -> tuple[int, list[dict[str, float]]]:
    """Load the run's latest checkpoint into `state`, if there is one; returns (epochs done, history)."""
    with session.restored() as ckpt_dir:
        if ckpt_dir is None:
            return 0, []
        start_epoch, history = load_training_state(ckpt_dir, state)
    if session.rank == 0:
        print(f"[train] resumed after epoch {start_epoch}", flush=True)
    return start_epoch, history


def _epoch_line(metrics: dict[str, float], *, epochs: int, label: str) -> str:
    """One line per epoch; without a validation split (a final fit, a refit after tuning) no val_ figures."""
    val = not math.isnan(metrics["val_loss"])  # NaN when nothing was validated
    return (
        f"[{label}] epoch {metrics['epoch']}/{epochs} train_loss={metrics['train_loss']:.4f} "
        + (f"val_loss={metrics['val_loss']:.4f} val_mae={metrics['val_mae']:.3f} " if val else "")
        + f"lr={metrics['lr']:.2e} {metrics['samples_per_s']:.0f} samples/s"
        + (" (early stop)" if metrics["stopped_early"] else "")
    )


def _report(
    metrics: dict[str, float],
    state: TrainingState,
    session: Any,
    *,
    history: list[dict[str, float]],
    model_args: dict[str, Any],
) -> None:
    """Report the epoch's metrics from every rank, with rank 0's checkpoint attached."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if session.rank == 0:  # one copy of the weights is enough; every rank still reports
            ckpt = Path(tmp)
            save_training_state(ckpt, state, epoch=int(metrics["epoch"]), history=history, model_args=model_args)
        session.report(metrics, ckpt)


class _NoWindows:
    """No validation windows (the final fit): len() is 0, so evaluation and early stopping are skipped."""

    def __len__(self) -> int:
        return 0


def _load_init_weights(net: Forecaster, init: str | bytes) -> None:
    """A model.pt / checkpoint dir path, or a model.pt's bytes (sent by `fit` when the driver's disk is not
    shared with this node)."""
    if isinstance(init, str):
        load_weights(net, init)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MODEL_FILE).write_bytes(init)
        load_weights(net, Path(tmp) / MODEL_FILE)


def epoch_seed(seed: int, *, rank: int, epoch: int) -> int:
    """A torch seed for one (run seed, rank, epoch): distinct per rank and epoch, fixed across restarts."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def _fail_step(epoch: int, rank: int) -> int:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return -1
    fail_epoch, fail_step, fail_rank, marker = spec.split(":", 3)
    if int(fail_epoch) != epoch or int(fail_rank) != rank or os.path.exists(marker):
        return -1
    Path(marker).touch()
    return int(fail_step)
