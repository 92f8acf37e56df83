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


def bare_loop(cfg, shard_dir: str, *, epochs: int, steps: int) -> list[tuple[float, float]]:
    """(samples/s, samples per CPU-second) per epoch of a plain single-process PyTorch loop on the same windows."""
    torch.set_num_threads(1)  # what one worker with cpus_per_worker=1 gets
    ds = WindowDataset(shard_dir, split="train")
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, **model_args_for(cfg, ds))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batch = cfg.train.batch_size
    rates = []
    for epoch in range(epochs):
        order = np.random.default_rng([cfg.train.seed, epoch]).permutation(len(ds))
        t0, cpu0 = time.perf_counter(), time.process_time()
        for step in range(steps):
            b = ds.batch(order[step * batch : (step + 1) * batch])
            x, y = torch.from_numpy(b["x"]), torch.from_numpy(b["y"])  # [B, L, F], [B, H, T]
            loss = torch.nn.functional.mse_loss(model(x)[..., 0], y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        rates.append((steps * batch / (time.perf_counter() - t0), steps * batch / (time.process_time() - cpu0)))
    return rates


def our_loop(cfg, shard_dir: str, *, epochs: int, steps: int) -> list[tuple[float, float]]:
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
        rates.append((stats["samples_per_s"], stats["samples_per_cpu_s"]))
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

    def median_pair(runs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(r[0] for r in runs[1:]), statistics.median(r[1] for r in runs[1:])

    def bare() -> tuple[float, float]:
        return median_pair(bare_loop(cfg, shard_dir, epochs=args.epochs, steps=args.steps))

    def around(i: int) -> tuple[float, float]:  # mean of the bare runs just before and after
        return (bares[i - 1][0] + bares[i][0]) / 2, (bares[i - 1][1] + bares[i][1]) / 2

    # The machine is shared: a bare run before and after every measured run, each set against the mean of its
    # two; wall-clock rates move with other people's load, rates per CPU-second of the process much less.
    bares, rows = [bare()], []
    for _ in range(args.rounds):
        for workers in args.workers:
            run_cfg = from_dict({**tree, "train": {**tree["train"], "num_workers": workers}}).resolved()
            t0 = time.perf_counter()
            result = fit(run_cfg, shard_dir=shard_dir, storage_dir=str(work / "runs"), name=f"w{workers}-{len(rows)}")
            wall = time.perf_counter() - t0
            h = result.history.iloc[1:]
            bares.append(bare())
            base = around(len(bares) - 1)
            rows.append(
                {
                    "run": f"Ray Train, {workers} worker(s)",
                    "workers": workers,
                    "samples_per_s": float(h["samples_per_s"].median()),
                    "samples_per_cpu_s": float(h["samples_per_cpu_s"].median()),  # per worker
                    "bare": base,
                    "fit_wall_s": wall,
                    "fixed_cost_s": wall - float(result.history["train_time_s"].sum()),
                    "final_val_loss": float(result.history["val_loss"].iloc[-1]),
                }
            )
            if workers == 1:  # our loop without Ray, between bare runs too
                mine = median_pair(our_loop(cfg, shard_dir, epochs=args.epochs, steps=args.steps))
                bares.append(bare())
                rows.append(
                    {
                        "run": "our train_epoch, no Ray",
                        "workers": 0,
                        "samples_per_s": mine[0],
                        "samples_per_cpu_s": mine[1],
                        "bare": around(len(bares) - 1),
                    }
                )
            for r in rows[-2:] if workers == 1 else rows[-1:]:
                print(f"{r['run']}: {r['samples_per_s']:.0f} samples/s, bare around it {r['bare'][0]:.0f}", flush=True)
    out["bare_runs"], out["runs"] = bares, rows

    print()
    print(f"{out['machine']}  {out['date']}")
    print(
        f"hidden {args.hidden}, lookback {args.lookback}, batch {args.batch}, {args.steps} steps/epoch, "
        f"{args.epochs - 1} timed epochs per run"
    )
    print(
        f"{'run':<26} {'samples/s':>9} {'bare':>6} {'ratio':>6} {'/CPU-s':>7} {'bare':>6} {'ratio':>6} {'fit s':>6} {'fixed s':>7}"
    )
    for r in rows:
        print(
            f"{r['run']:<26} {r['samples_per_s']:>9.0f} {r['bare'][0]:>6.0f} {r['samples_per_s'] / r['bare'][0]:>6.3f} "
            f"{r['samples_per_cpu_s']:>7.0f} {r['bare'][1]:>6.0f} {r['samples_per_cpu_s'] / r['bare'][1]:>6.3f} "
            f"{r.get('fit_wall_s', float('nan')):>6.1f} {r.get('fixed_cost_s', float('nan')):>7.1f}"
        )
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        wall = statistics.median(r["samples_per_s"] / r["bare"][0] for r in mine)
        cpu = statistics.median(r["samples_per_cpu_s"] / r["bare"][1] for r in mine)
        out[f"median_ratio {name}"] = {"wall": wall, "cpu": cpu}
        print(f"median {name} / bare: {wall:.3f} wall, {cpu:.3f} per CPU-second")
    print(
        f"final val_loss of every Ray fit: {sorted({round(r['final_val_loss'], 6) for r in rows if 'final_val_loss' in r})}"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
