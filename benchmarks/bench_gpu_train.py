# Run: python3 benchmarks/bench_gpu_train.py [--hidden 256 512 1024] [--json OUT.json]   (one CUDA GPU; no Ray needed)
#      python3 benchmarks/bench_gpu_train.py --quick                                      (tiny sizes; checks the code path, CPU ok)
"""Training-step throughput on one GPU: fp32 vs fp16 (autocast + GradScaler, cuDNN LSTM), our step vs a bare loop.

For each hidden size (lookback 168, batch 512, 8 input features, horizon 24, one LSTM layer):
  bare       a plain PyTorch loop: forward, MSE, backward, clip, AdamW step (GradScaler for fp16)
  ours       `lstm_dist.train.steps.train_step` on the same device-resident batches
  ours+ddp   the same, model wrapped in DistributedDataParallel over an NCCL group of 1 rank
  epoch      `train_epoch` as a Ray Train worker runs it: windows gathered on the host from a
             memory-resident dataset, copied to the GPU each step, sampler, scheduler, metrics
Ray itself is not installed on the GPU machine; a 1-worker Ray Train worker runs exactly the
`epoch` path between two `ray.train.report` calls (prepare_model wraps nothing for 1 worker), so
`epoch` vs `bare` is the per-step cost of our loop on the GPU.

FLOPs per optimizer step, counted for the LSTM matmuls only (the head is < 1% here):
  forward  = 2 * B * L * 4h * (F + h)     (input and recurrent gate matmuls, one layer)
  training = 3 * forward                  (backward = grad wrt inputs/state + grad wrt weights)
TFLOP/s are set against a measured 8192^3 matmul peak on the same card (fp16 for fp16; TF32 for
fp32, since cuDNN runs fp32 RNNs on TF32 tensor cores when torch.backends.cudnn.allow_tf32 is on,
its default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lstm_dist.config import ModelConfig  # noqa: E402
from lstm_dist.models import build_model  # noqa: E402
from lstm_dist.train.precision import grad_scaler  # noqa: E402
from lstm_dist.train.schedule import warmup_cosine  # noqa: E402
from lstm_dist.train.steps import train_epoch, train_step  # noqa: E402

FEATURES, HORIZON = 8, 24


class HostWindows:
    """In-memory windows with WindowDataset's `batch()` interface (numpy on the host, like memory-mapped shards)."""

    def __init__(self, n: int, lookback: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((n, lookback, FEATURES), dtype=np.float32)
        self.y = rng.standard_normal((n, HORIZON, 1), dtype=np.float32)
        self.series = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": self.x[idx], "y": self.y[idx], "future": None, "series": self.series[idx]}


class Sampler:
    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:  # what train_epoch takes, as from DistributedWindowSampler
        return np.random.default_rng(self.epoch).permutation(self.n)


def lstm_train_flops(*, batch: int, lookback: int, hidden: int) -> float:
    return 3 * 2 * batch * lookback * 4 * hidden * (FEATURES + hidden)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, *, device: torch.device, warmup: int, iters: int, repeats: int) -> float:
    """Median seconds per call of `fn` over `repeats` timed runs of `iters` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 8192) -> float:
    """TFLOP/s of an n^3 matmul on random data (fp32 means TF32 when allowed)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device=device, warmup=3, iters=10, repeats=3)
    return 2 * n**3 / sec / 1e12


def make_model(hidden: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=hidden)
    return build_model(cfg, num_features=FEATURES, num_targets=1, horizon=HORIZON).to(device)


def device_batches(*, n: int, batch: int, lookback: int, device: torch.device) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(1)
    return [
        {
            "x": torch.randn(batch, lookback, FEATURES, generator=g).to(device),  # [B, L, F]
            "y": torch.randn(batch, HORIZON, 1, generator=g).to(device),  # [B, H, T]
            "future": None,
            "series": torch.zeros(batch, dtype=torch.long, device=device),
        }
        for _ in range(n)
    ]


def bare_loop(model, batches, precision: str, device: torch.device):
    """The reference: nothing but the textbook AMP step (nanoGPT's order)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            out = model(b["x"])
        loss = torch.nn.functional.mse_loss(out[..., 0].float(), b["y"])
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def our_step(model, net, batches, precision: str):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = grad_scaler(precision)
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        train_step(model, net, [b], optimizer=opt, scaler=scaler, precision=precision, grad_clip=1.0)

    return step


def our_epoch(model, net, ds, precision: str, device: torch.device, *, batch: int, steps: int):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = warmup_cosine(opt, total_steps=10_000, warmup_steps=10)
    scaler = grad_scaler(precision)
    sampler = Sampler(len(ds))

    def epoch():
        sampler.set_epoch(sampler.epoch + 1)
        train_epoch(
            model, net, ds, sampler, optimizer=opt, scheduler=sched, scaler=scaler,
            precision=precision, device=device, steps=steps, local_batch=batch, grad_clip=1.0,
        )  # fmt: skip

    return epoch


def profile_step(step) -> None:
    """Where one step's GPU time goes: the top kernels, and GPU-busy vs wall time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    print(f"profile: wall {wall * 1e3:.1f} ms (profiled), GPU kernels busy {gpu_us / 1e3:.1f} ms", flush=True)
    print(events.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=60), flush=True)


def init_single_rank_group(device: torch.device) -> None:
    with socket.socket() as s:  # a free port from the OS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--lookback", type=int, default=168)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of --iters steps; the median is reported")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp32-strict", "fp16"])
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of our fp16 step per size")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few iterations: a smoke test")
    p.add_argument("--json", type=Path, help="write all numbers here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.hidden, args.lookback, args.batch, args.iters = [16], 12, 32, 2
    torch.backends.cudnn.benchmark = True

    info = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "lookback": args.lookback,
        "batch": args.batch,
        "features": FEATURES,
    }
    mm = 2048 if args.quick else 8192
    info["peak_tflops"] = {
        "fp16": matmul_peak(torch.float16, device, mm) if device.type == "cuda" else None,
        "bf16": matmul_peak(torch.bfloat16, device, mm) if device.type == "cuda" else None,
        "tf32": None,
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        info["peak_tflops"]["tf32"] = matmul_peak(torch.float32, device, mm)
        torch.backends.cuda.matmul.allow_tf32 = False
    print(json.dumps(info), flush=True)

    init_single_rank_group(device)
    rows = []
    batches = device_batches(n=4, batch=args.batch, lookback=args.lookback, device=device)
    epoch_steps = max(2, args.iters // 2)
    ds = HostWindows(args.batch * epoch_steps, args.lookback)
    for hidden in args.hidden:
        flops = lstm_train_flops(batch=args.batch, lookback=args.lookback, hidden=hidden)
        for label in args.precisions if device.type == "cuda" else ("fp32", "bf16"):
            precision = label.removesuffix("-strict")
            torch.backends.cudnn.allow_tf32 = label != "fp32-strict"  # strict: true fp32 FMA, no tensor cores
            row = {"hidden": hidden, "precision": label, "gflop_per_step": flops / 1e9}
            ids = [device.index or 0] if device.type == "cuda" else None
            models = [make_model(hidden, device) for _ in range(4)]
            ddp = torch.nn.parallel.DistributedDataParallel(models[2], device_ids=ids)
            variants = {  # name: (callable, optimizer steps per call)
                "bare": (bare_loop(models[0], batches, precision, device), 1),
                "ours": (our_step(models[1], models[1], batches, precision), 1),
                "ours_ddp": (our_step(ddp, models[2], batches, precision), 1),
                "epoch": (
                    our_epoch(models[3], models[3], ds, precision, device, batch=args.batch, steps=epoch_steps),
                    epoch_steps,
                ),
            }
            # Interleaved: each repeat times every variant once, so clock or load drift hits them alike.
            times: dict[str, list[float]] = {k: [] for k in variants}
            for fn, per_call in variants.values():  # warm-up: cuDNN autotuning, allocator, scaler
                for _ in range(max(1, 3 // per_call)):
                    fn()
            sync(device)
            for _ in range(args.repeats):
                for name, (fn, per_call) in variants.items():
                    calls = max(1, args.iters // per_call)
                    times[name].append(timed(fn, device=device, warmup=0, iters=calls, repeats=1) / per_call)
            for name in variants:
                row[f"{name}_s"] = statistics.median(times[name])
            model = models[1]
            del models, ddp, variants  # peak memory of one model's step, not of all four variants alive
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                our_step(model, model, batches, precision)()
                sync(device)
                row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            if args.profile and label == "fp16":
                profile_step(our_step(model, model, batches, precision))
            for k in ("bare", "ours", "ours_ddp", "epoch"):
                row[f"{k}_samples_per_s"] = args.batch / row[f"{k}_s"]
            row["tflops"] = flops / row["ours_s"] / 1e12
            peak = {"fp16": info["peak_tflops"]["fp16"], "fp32": info["peak_tflops"]["tf32"]}.get(label)
            row["frac_of_peak"] = row["tflops"] / peak if peak else math.nan
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model
            torch.backends.cudnn.allow_tf32 = True
            if device.type == "cuda":
                torch.cuda.empty_cache()
    dist.destroy_process_group()

    print()
    print(f"{info['device']}  torch {info['torch']}  cuDNN {info['cudnn']}  {info['date']}")
    print(f"matmul peak (8192^3): {info['peak_tflops']}")
    print(
        f"lookback {args.lookback}, batch {args.batch}, {FEATURES} features; samples/s (median of {args.repeats} x {args.iters} steps)"
    )
    head = f"{'hidden':>6} {'prec':>5} {'bare':>9} {'ours':>9} {'ours+ddp':>9} {'epoch':>9} {'ours/bare':>9} {'TFLOP/s':>8} {'%peak':>6}"
    print(head)
    for r in rows:
        print(
            f"{r['hidden']:>6} {r['precision']:>5} {r['bare_samples_per_s']:>9.0f} {r['ours_samples_per_s']:>9.0f} "
            f"{r['ours_ddp_samples_per_s']:>9.0f} {r['epoch_samples_per_s']:>9.0f} "
            f"{r['ours_samples_per_s'] / r['bare_samples_per_s']:>9.3f} {r['tflops']:>8.1f} {100 * r['frac_of_peak']:>6.1f}"
        )
    by = {(r["hidden"], r["precision"]): r for r in rows}
    for hidden in args.hidden:
        if (hidden, "fp16") in by and (hidden, "fp32") in by:
            fp32, fp16 = by[hidden, "fp32"]["ours_s"], by[hidden, "fp16"]["ours_s"]
            strict = by.get((hidden, "fp32-strict"), {}).get("ours_s", math.nan)
            print(
                f"fp16 speed-up at hidden {hidden}: {fp32 / fp16:.2f}x over fp32 (TF32), {strict / fp16:.2f}x over strict fp32"
            )
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
