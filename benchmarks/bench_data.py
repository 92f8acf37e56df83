"""Data-layer benchmark: ingest + shard, the window reader, and the naive materialise-every-window loop.

Run:  .venv/bin/python benchmarks/bench_data.py                      # full size: 1000 series x 10000 steps
      .venv/bin/python benchmarks/bench_data.py --series 50 --steps 2000   # quick
Each measured stage runs in its own subprocess so peak RSS is that stage's alone. Prints a markdown block
for benchmarks/RESULTS.md and writes JSON next to the data (default /tmp/bench_data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

L, H, BATCH = 168, 24, 256
FEATURES = ["target", "temperature", "c2", "c3", "c4", "c5", "c6", "c7"]  # 8 numeric columns


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(root: Path, *, series: int, steps: int) -> Path:
    """The sample generator's data plus six more covariates: 8 numeric features per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lstm_dist.data.synthetic import generate_sample

    path = root / f"raw_{series}x{steps}.parquet"
    if path.exists():
        return path
    table = generate_sample(num_series=series, num_steps=steps, seed=0)
    rng = np.random.default_rng(1)
    temp = table.column("temperature").to_numpy()
    for i, name in enumerate(FEATURES[2:]):
        table = table.append_column(name, pa.array(temp * (0.5 + 0.1 * i) + rng.standard_normal(len(temp))))
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=1_000_000, use_dictionary=["series_id"])
    os.replace(tmp, path)
    return path


def stage_ingest(args) -> dict:
    import ray

    from lstm_dist.config import DataConfig
    from lstm_dist.data.ingest import ingest

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    cfg = DataConfig(
        path=str(args.raw), covariate_cols=FEATURES[1:], lookback=L, horizon=H, shard_size_mib=args.shard_mib
    )
    t = time.perf_counter()
    manifest, report = ingest(cfg, out_dir=str(args.shards))
    wall = time.perf_counter() - t
    ray.shutdown()
    return {
        "wall_s": wall,
        "rows": report.num_rows_read,
        "rows_per_s": report.num_rows_read / wall,
        "timings": report.timings,
        "tasks": report.num_tasks,
        "shards": report.num_shards,
        "bytes": report.num_bytes,
        "raw_numeric_bytes": report.raw_numeric_bytes,
        "raw_file_bytes": os.path.getsize(args.raw),
        "windows": report.windows,
        "driver_peak_rss_mib": peak_rss_mib(),
    }


def stage_reader(args) -> dict:
    from lstm_dist.data.windows import DistributedWindowSampler, WindowDataset

    ds = WindowDataset(str(args.shards), split="train")
    shard_local = args.locality == "shard"  # data.batch_locality=shard: every batch from one shard
    t_order = time.perf_counter()
    sampler = DistributedWindowSampler(
        len(ds),
        rank=0,
        world_size=1,
        seed=0,
        block=BATCH if shard_local else 0,
        groups=ds.window_shards() if shard_local else None,
    )
    idx = sampler.indices()
    order_s = time.perf_counter() - t_order  # building the epoch's order (once per epoch)
    n_batches = min(args.batches, sampler.min_len // BATCH)
    ds.batch(idx[:BATCH])  # warm-up

    def timed(prepare) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for i in range(n_batches):
            b = ds.batch(prepare(idx[i * BATCH : (i + 1) * BATCH]))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert b["x"].shape == (BATCH, L, len(FEATURES))
        return wall, cpu

    # As the training loop draws them (train/steps.py): indices sorted within each batch.
    wall, cpu = timed(np.sort)
    # The same batches in the sampler's order.
    wall_unsorted, cpu_unsorted = timed(lambda i: i)
    # one shard only: the best case (one gather per batch)
    one = np.flatnonzero(ds.locate(idx[: 50 * BATCH])[0] == 0)[:BATCH]
    t2 = time.perf_counter()
    for _ in range(500):
        ds.batch(idx[one])
    single = 500 / (time.perf_counter() - t2)
    return {
        "locality": args.locality,
        "epoch_order_s": order_s,
        "windows": len(ds),
        "batches_per_s": n_batches / wall,
        "windows_per_s": n_batches * BATCH / wall,
        "batches_per_cpu_s": n_batches / cpu,
        "batches_per_s_unsorted": n_batches / wall_unsorted,
        "batches_per_cpu_s_unsorted": n_batches / cpu_unsorted,
        "torch_threads": __import__("torch").get_num_threads(),
        "load_avg": os.getloadavg()[0],
        "batches_per_s_single_shard": single,
        "peak_rss_mib": peak_rss_mib(),
    }


def stage_naive(args) -> dict:
    """What a notebook does: per series, scale, then a Python loop copying every window into a list."""
    import pyarrow.parquet as pq

    table = pq.read_table(args.raw)
    df = table.to_pandas()
    names = sorted(df.series_id.unique())[: args.naive_series]
    df = df[df.series_id.isin(names)]
    t, c = time.perf_counter(), time.process_time()
    xs, ys = [], []
    for _, g in df.groupby("series_id"):
        v = g.sort_values("timestamp")[FEATURES].to_numpy(np.float32)
        n = len(v)
        val_start = n - 2 * int(round(0.1 * n))
        v = (v - v[:val_start].mean(0)) / v[:val_start].std(0)
        for s in range(val_start - L - H + 1):
            xs.append(v[s : s + L].copy())
            ys.append(v[s + L : s + L + H, :1].copy())
    x, y = np.stack(xs), np.stack(ys)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    del xs, ys
    np.save(args.root / "naive_x.npy", x)
    disk = os.path.getsize(args.root / "naive_x.npy") + y.nbytes
    os.remove(args.root / "naive_x.npy")
    # batches from the materialised array, for completeness
    rng = np.random.default_rng(0)
    t1 = time.perf_counter()
    for _ in range(200):
        i = rng.integers(0, len(x), BATCH)
        _ = x[i], y[i]
    in_mem = 200 / (time.perf_counter() - t1)
    # the pandas .iloc variant, on a tenth of one series
    g = df[df.series_id == names[0]].sort_values("timestamp")[FEATURES]
    count = min(2000, len(g) - L - H)
    t2 = time.perf_counter()
    out = [g.iloc[s : s + L].to_numpy(np.float32) for s in range(count)]
    iloc_rate = count / (time.perf_counter() - t2)
    del out
    return {
        "series": len(names),
        "windows": len(x),
        "materialise_s": wall,
        "windows_per_s": len(x) / wall,
        "windows_per_cpu_s": len(x) / cpu,
        "in_memory_batches_per_s": in_mem,
        "iloc_windows_per_s": iloc_rate,
        "bytes_on_disk": disk,
        "window_bytes": x.nbytes + y.nbytes,
        "peak_rss_mib": peak_rss_mib(),
    }


def stage_gpu_step(args) -> dict:
    """Time of one LSTM training step on a GPU (fp16 autocast), to say what window rate the reader must feed."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}
    for hidden, layers in ((64, 1), (128, 2), (256, 2)):
        lstm = torch.nn.LSTM(len(FEATURES), hidden, num_layers=layers, batch_first=True).to(dev)
        head = torch.nn.Linear(hidden, H).to(dev)
        opt = torch.optim.AdamW([*lstm.parameters(), *head.parameters()], lr=1e-3)
        scaler = torch.amp.GradScaler(dev, enabled=dev == "cuda")
        x = torch.randn(BATCH, L, len(FEATURES), device=dev)  # [B, L, F]
        y = torch.randn(BATCH, H, device=dev)
        for i in range(60):
            if i == 10:
                torch.cuda.synchronize() if dev == "cuda" else None
                t = time.perf_counter()
            with torch.autocast(dev, dtype=torch.float16, enabled=dev == "cuda"):
                h, _ = lstm(x)
                loss = torch.nn.functional.mse_loss(head(h[:, -1]), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.cuda.synchronize() if dev == "cuda" else None
        step = (time.perf_counter() - t) / 50
        out[f"h{hidden}x{layers}"] = {"step_ms": step * 1e3, "windows_per_s": BATCH / step}
    return out


def run_stage(name: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        name,
        "--series",
        str(args.series),
        "--steps",
        str(args.steps),
        "--root",
        str(args.root),
        "--cpus",
        str(args.cpus),
        "--naive-series",
        str(args.naive_series),
        "--batches",
        str(args.batches),
        "--shard-mib",
        str(args.shard_mib),
        "--locality",
        args.locality,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--root", type=Path, default=Path("/tmp/bench_data"))
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="logical CPUs of the local Ray")
    p.add_argument("--naive-series", type=int, default=20, help="series the naive loop materialises")
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--shard-mib", type=float, default=64, help="data.shard_size_mib (the default shard size)")
    p.add_argument(
        "--locality", choices=["global", "shard"], default="global", help="reader batches: random, or one shard each"
    )
    p.add_argument("--stage", choices=["ingest", "reader", "naive", "gpu_step"], default=None)
    args = p.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.stage == "gpu_step":  # needs torch only; run it on the GPU machine
        print(json.dumps(stage_gpu_step(args)))
        return
    args.raw = make_data(args.root, series=args.series, steps=args.steps)
    args.shards = args.root / f"shards_{args.series}x{args.steps}_{args.shard_mib:g}mib"
    if args.stage:
        fn = {"ingest": stage_ingest, "reader": stage_reader, "naive": stage_naive}[args.stage]
        print(json.dumps(fn(args)))
        return

    ing = run_stage("ingest", args)
    rd = run_stage("reader", argparse.Namespace(**{**vars(args), "locality": "global"}))
    rd_local = run_stage("reader", argparse.Namespace(**{**vars(args), "locality": "shard"}))
    # The same data in large shards (batches then touch one or two shards, not ~40).
    big = argparse.Namespace(**{**vars(args), "shard_mib": 512.0})
    ing_big = run_stage("ingest", big)
    rd_big = run_stage("reader", big)
    nv = run_stage("naive", args)
    # Scale the naive subset to the full train set: its memory and disk grow with the windows.
    scale = rd["windows"] / nv["windows"]
    naive_full_mem_mib = nv["window_bytes"] * scale / 2**20
    result = {
        "ingest": ing,
        "reader": rd,
        "reader_shard_local": rd_local,
        "ingest_512mib": ing_big,
        "reader_512mib": rd_big,
        "naive": nv,
        "naive_full_window_mib": naive_full_mem_mib,
    }
    (args.root / "bench_data.json").write_text(json.dumps(result, indent=1))
    rows = ing["rows"]
    print(f"""## Data

Machine: {platform.node()} — {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()};
date {time.strftime("%Y-%m-%d")}. Data: {args.series} series x {args.steps} steps = {rows:,} rows x {len(FEATURES)} features
(float64 Parquet, {ing["raw_file_bytes"] / 2**20:.0f} MiB), lookback {L}, horizon {H}, batch {BATCH}.

| stage | figure |
|---|---|
| ingest + shard (Ray, {args.cpus} logical CPUs; tasks {ing["tasks"]}) | {ing["wall_s"]:.1f} s wall, {ing["rows_per_s"]:,.0f} rows/s (read {ing["timings"]["read"]:.1f} s, clean {ing["timings"]["clean"]:.1f} s, write {ing["timings"]["write"]:.1f} s) |
| shards on disk | {ing["bytes"] / 2**20:.0f} MiB in {ing["shards"]} files = {ing["bytes"] / ing["raw_numeric_bytes"]:.2f}x the raw numeric data |
| reader, random batches over all shards (as training draws them: sorted within a batch; torch {rd["torch_threads"]} threads) | {rd["batches_per_s"]:,.0f} batches/s = {rd["windows_per_s"]:,.0f} windows/s, peak RSS {rd["peak_rss_mib"]:.0f} MiB |
| the same, per CPU-second of the reader (load avg {rd["load_avg"]:.1f}) | {rd["batches_per_cpu_s"]:,.0f} batches/s = {rd["batches_per_cpu_s"] * BATCH:,.0f} windows/s |
| the same batches unsorted | {rd["batches_per_s_unsorted"]:,.0f} batches/s wall, {rd["batches_per_cpu_s_unsorted"]:,.0f} per CPU-second |
| reader, shard-local batches (`data.batch_locality: shard`) | {rd_local["batches_per_s"]:,.0f} batches/s = {rd_local["windows_per_s"]:,.0f} windows/s ({rd_local["batches_per_cpu_s"] * BATCH:,.0f} per CPU-second); epoch order {rd_local["epoch_order_s"]:.2f} s |
| reader, one fixed batch from one shard (cache-hot upper bound) | {rd["batches_per_s_single_shard"]:,.0f} batches/s |
| same data in {ing_big["shards"]} shards of <= 512 MiB: ingest | {ing_big["wall_s"]:.1f} s wall, {ing_big["rows_per_s"]:,.0f} rows/s |
| reader on them, random batches | {rd_big["batches_per_s"]:,.0f} batches/s = {rd_big["windows_per_s"]:,.0f} windows/s ({rd_big["batches_per_cpu_s"] * BATCH:,.0f} per CPU-second), peak RSS {rd_big["peak_rss_mib"]:.0f} MiB |
| naive loop (numpy slices, {nv["series"]} series) | {nv["windows_per_s"]:,.0f} windows/s to materialise; peak RSS {nv["peak_rss_mib"]:.0f} MiB for {nv["windows"]:,} windows |
| naive loop (pandas .iloc) | {nv["iloc_windows_per_s"]:,.0f} windows/s |
| naive, full train set (extrapolated) | {naive_full_mem_mib / 1024:.1f} GiB of windows in memory, {nv["bytes_on_disk"] * scale / 2**30:.1f} GiB on disk |

Speed vs the naive numpy loop ({nv["windows_per_s"]:,.0f} windows/s wall, {nv["windows_per_cpu_s"]:,.0f} per CPU-second):
random batches {rd["windows_per_s"] / nv["windows_per_s"]:.0f}x wall, {rd["batches_per_cpu_s"] * BATCH / nv["windows_per_cpu_s"]:.0f}x per CPU-second;
shard-local batches {rd_local["windows_per_s"] / nv["windows_per_s"]:.0f}x wall, {rd_local["batches_per_cpu_s"] * BATCH / nv["windows_per_cpu_s"]:.0f}x per CPU-second;
large shards, random batches {rd_big["windows_per_s"] / nv["windows_per_s"]:.0f}x wall, {rd_big["batches_per_cpu_s"] * BATCH / nv["windows_per_cpu_s"]:.0f}x per CPU-second.
Peak memory 1/{naive_full_mem_mib / rd["peak_rss_mib"]:.0f} of the naive loop's (full train set); bytes on disk 1/{nv["bytes_on_disk"] * scale / ing["bytes"]:.0f}.
""")


if __name__ == "__main__":
    main()
