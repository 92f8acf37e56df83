# Run: .venv/bin/python benchmarks/bench_fit_overhead.py [--fits 3] [--before]   (CPU, local Ray; one mode per process)
"""Where the fixed cost of one Ray Train fit goes, before the first training step (issue 11).

Each fit runs a probe as its per-worker function: it records when its worker process was created,
when Ray Train handed it control (after the torch process group is up) and how long importing our
training loop takes; it reports once and returns. Phases, from the driver's `fit()` call:
  start     fit() -> worker process created: the Train controller actor, its placement group,
            the worker actors (and Ray's helper actors: placement-group cleaner, preemption watcher)
  worker    process created -> probe entered: Ray Train's worker setup, `import torch`, the gloo group
  import    `import lstm_dist.train.loop` inside the worker (ours)
  teardown  probe returned -> fit() returned
`--before` starts Ray as lstm-dist did before cluster.init_ray took over (4 logical CPUs on any machine,
no dashboard, the preemption watcher on); without it, Ray starts through `cluster.init_ray`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def probe(config: dict) -> None:
    entered = time.time()
    import psutil

    created = psutil.Process().create_time()
    t0 = time.perf_counter()
    import lstm_dist.train.loop  # noqa: F401  (what a real fit imports first)

    imported = time.perf_counter() - t0
    if ray.train.get_context().get_world_rank() == 0:  # Train V2 returns no metrics without a checkpoint
        times = {"created": created, "entered": entered, "import_s": imported, "left": time.time()}
        Path(config["out"]).write_text(json.dumps(times))
    ray.train.report({})


def one_fit(storage: str, name: str, workers: int) -> dict[str, float]:
    out = Path(storage, f"{name}.json")
    trainer = TorchTrainer(
        probe,
        train_loop_config={"out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers),
        run_config=ray.train.RunConfig(name=name, storage_path=storage),
    )
    t0 = time.time()
    trainer.fit()
    t1 = time.time()
    m = json.loads(out.read_text())
    return {
        "start": m["created"] - t0,
        "worker": m["entered"] - m["created"],
        "import": m["import_s"],
        "teardown": t1 - m["left"],
        "total": t1 - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fits", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--before", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fitcost"))
    t0 = time.time()
    if args.before:
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        ray.init(num_cpus=max(os.cpu_count() or 1, args.workers + 2, 4), include_dashboard=False, log_to_driver=False)
    else:
        from lstm_dist.cluster import init_ray
        from lstm_dist.config import load_config

        root = Path(__file__).resolve().parent.parent
        init_ray(load_config(root / "conf/debug.yaml", [f"workflow.work_dir={work}"]))
    init_s = time.time() - t0
    (work / "runs").mkdir()
    fits = [one_fit(str(work / "runs"), f"fit{i}", args.workers) for i in range(args.fits)]
    summary = {k: round(statistics.median(f[k] for f in fits), 2) for k in fits[0]}
    print(json.dumps({"mode": "before" if args.before else "after", "init_s": round(init_s, 2), "median": summary,
                      "fits": fits}))  # fmt: skip


if __name__ == "__main__":
    main()
