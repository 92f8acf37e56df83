# Run: .venv/bin/python benchmarks/bench_train.py [--hidden 64] [--batch 256] [--rounds 2] [--json OUT.json]   (CPU, local Ray)
"""Training throughput on CPU: our Ray Train loop (1 and 2 workers) against a bare PyTorch loop, in one run.

The bare loop is the textbook step (gather a batch of windows from the same shards, forward, MSE,
backward, clip, AdamW) in this process, on one thread, with the same model, batch and data. The
Ray runs report `samples_per_s` measured inside each worker around its training steps (train
windows per second, summed over workers); the first epoch is a warm-up and is left out. The fixed
cost of a fit (worker-group start, checkpoints) is reported apart. The bare loop runs before and
after every Ray fit, and each fit is set against the mean of those two: on a shared machine the
load drifts between minutes. After each 1-worker fit, our `train_epoch` also runs in this process
without Ray, which splits the gap into the cost of our step code and the cost of running under Ray.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lstm_dist.config import from_dict  # noqa: E402
from lstm_dist.data.ingest import ingest  # noqa: E402
from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset  # noqa: E402
from lstm_dist.models import build_model  # noqa: E402
from lstm_dist.train.loop import model_args_for  # noqa: E402
from lstm_dist.train.precision import grad_scaler  # noqa: E402
from lstm_dist.train.schedule import warmup_cosine  # noqa: E402
from lstm_dist.train.steps import train_epoch  # noqa: E402
from lstm_dist.train.trainer import fit  # noqa: E402


def bare_loop(cfg, shard_dir: str, *, epochs: int, steps: int) -> list[float]:
    """Samples/s per epoch of a plain single-process PyTorch loop on the same windows."""
    torch.set_num_threads(1)  # what one worker with cpus_per_worker=1 gets
    ds = WindowDataset(shard_dir, split="train")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, **model_args_for(cfg, ds))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batch = cfg.train.batch_size
    rates = []
    for epoch in range(epochs):
        order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(ds))
        t0 = time.perf_counter()
        for step in range(steps):
            b = ds.batch(order[step * batch : (step + 1) * batch])
            x, y = torch.from_numpy(b["x"]), torch.from_numpy(b["y"])  # [B, L, F], [B, H, T]
            loss = torch.nn.functional.mse_loss(model(x)[..., 0], y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        rates.append(steps * batch / (time.perf_counter() - t0))
    return rates


def our_loop(cfg, shard_dir: str, *, epochs: int, steps: int) -> list[float]:
    """Samples/s per epoch of our `train_epoch` in this process, without Ray: the code's own cost."""
    torch.set_num_threads(1)
    ds = WindowDataset(shard_dir, split="train")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, **model_args_for(cfg, ds))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = warmup_cosine(opt, total_steps=epochs * steps, warmup_steps=1)
    sampler = DistributedWindowSampler(len(ds), rank=0, world_size=1, seed=cfg.train.seed)
    rates = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        stats = train_epoch(
            model, model, ds, sampler, optimizer=opt, scheduler=sched, scaler=grad_scaler("fp32"), precision="fp32",
            device=torch.device("cpu"), steps=steps, local_batch=cfg.train.batch_size, grad_clip=cfg.train.grad_clip,
        )  # fmt: skip
        rates.append(stats["samples_per_s"])
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lookback", type=int, default=168)
    p.add_argument("--steps", type=int, default=15, help="optimizer steps per epoch")
    p.add_argument("--epochs", type=int, default=4, help="the first is a warm-up")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2, help="Ray fits per worker count, bare runs in between")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    ray.init(num_cpus=max(4, max(args.workers) + 2), include_dashboard=False, _temp_dir=str(work / "ray"))
    tree = {
        "data": {
            "sample": {"num_series": 20, "num_steps": 2000},
            "covariate_cols": ["temperature"],
            "lookback": args.lookback,
            "horizon": 24,
        },
        "model": {"hidden_size": args.hidden},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch,
            "max_steps_per_epoch": args.steps,
            "max_val_windows": 512,
            "patience": 0,
            "precision": "fp32",
            "use_gpu": "no",
        },
        "workflow": {"work_dir": str(work)},
    }
    cfg = from_dict(tree).resolved()
    shard_dir = str(work / "shards")
    ingest(cfg.data, out_dir=shard_dir, work_dir=str(work))

    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}",
        "config": {k: v for k, v in vars(args).items() if k != "json"},
    }
    bare = lambda: statistics.median(bare_loop(cfg, shard_dir, epochs=args.epochs, steps=args.steps)[1:])  # noqa: E731
    # The machine is shared: a bare run before and after every Ray fit, each fit compared with the mean of its two.
    ours = lambda: statistics.median(our_loop(cfg, shard_dir, epochs=args.epochs, steps=args.steps)[1:])  # noqa: E731
    bares, fits, in_process = [bare()], [], []
    for _ in range(args.rounds):
        for workers in args.workers:
            run_cfg = from_dict({**tree, "train": {**tree["train"], "num_workers": workers}}).resolved()
            t0 = time.perf_counter()
            name = f"w{workers}-{len(fits)}"
            result = fit(run_cfg, shard_dir=shard_dir, storage_dir=str(work / "runs"), name=name)
            wall = time.perf_counter() - t0
            rate = statistics.median(list(result.history["samples_per_s"])[1:])
            bares.append(bare())
            baseline = (bares[-2] + bares[-1]) / 2
            fits.append(
                {
                    "workers": workers,
                    "samples_per_s": rate,
                    "bare_samples_per_s": baseline,
                    "ratio": rate / baseline,
                    "fit_wall_s": wall,
                    "fixed_cost_s": wall - float(result.history["train_time_s"].sum()),
                    "final_val_loss": float(result.history["val_loss"].iloc[-1]),
                }
            )
            print(f"ray {workers} worker(s): {rate:.0f} samples/s, bare around it {baseline:.0f}", flush=True)
            if workers == 1:  # our loop without Ray, between the same kind of bare runs
                in_process.append(ours())
                bares.append(bare())
                fits[-1]["ours_no_ray_samples_per_s"] = in_process[-1]
                fits[-1]["ours_no_ray_ratio"] = in_process[-1] / ((bares[-2] + bares[-1]) / 2)
                print(f"our train_epoch without Ray: {in_process[-1]:.0f} samples/s", flush=True)
    out["bare_runs"], out["fits"], out["ours_no_ray"] = bares, fits, in_process
    ratio = {w: statistics.median(f["ratio"] for f in fits if f["workers"] == w) for w in args.workers}
    out["median_ratio"] = ratio

    print()
    print(f"{out['machine']}  {out['date']}")
    print(
        f"hidden {args.hidden}, lookback {args.lookback}, batch {args.batch}, {args.steps} steps/epoch, "
        f"{args.epochs - 1} timed epochs per run; samples/s"
    )
    print(
        f"{'workers':>7} {'Ray Train':>10} {'bare':>8} {'ratio':>6} {'fit wall s':>10} {'fixed s':>8} {'val_loss':>9}"
    )
    for f in fits:
        print(
            f"{f['workers']:>7} {f['samples_per_s']:>10.0f} {f['bare_samples_per_s']:>8.0f} {f['ratio']:>6.3f} "
            f"{f['fit_wall_s']:>10.1f} {f['fixed_cost_s']:>8.1f} {f['final_val_loss']:>9.5f}"
        )
    for w in args.workers:
        print(f"median Ray Train / bare with {w} worker(s): {ratio[w]:.3f}")
    if in_process:
        no_ray = statistics.median(f["ours_no_ray_ratio"] for f in fits if "ours_no_ray_ratio" in f)
        out["median_ours_no_ray_ratio"] = no_ray
        print(f"median (our train_epoch, no Ray) / bare: {no_ray:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
