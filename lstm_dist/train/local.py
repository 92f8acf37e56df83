"""train.backend=local: the training loop in this process, one worker, without Ray Train's start-up.

Ray Train spends seconds before a fit's first step (its controller, helper actors and worker processes, torch
in the worker; benchmarks/RESULTS.md): for a one-worker run on small data that is most of the run. This backend
runs the same loop (`loop.run_loop`) here, with a session that keeps checkpoints the way Ray Train's
CheckpointConfig does: the best `train.keep_checkpoints` by validation loss plus always the latest, each
written under a temporary name and renamed, and a record of them (RECORD_FILE) that a rerun resumes from.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RECORD_FILE = "local_checkpoints.json"  # the checkpoints of a local run, oldest first, and which is the latest


class LocalSession:
    """Rank 0 of 1 in this process: checkpoints under `run_dir`, the best `keep` by val_loss plus the latest."""

    rank, world_size = 0, 1

    def __init__(self, run_dir: Path, *, keep: int, device: torch.device) -> None:
        self.run_dir, self.keep, self.device = Path(run_dir), keep, device
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        return net.to(self.device)

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        latest = read_record(self.run_dir).get("latest")
        yield self.run_dir / latest if latest else None

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        name = f"checkpoint_{int(metrics['epoch']):06d}"
        tmp = self.run_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp)
        shutil.rmtree(self.run_dir / name, ignore_errors=True)  # a resumed epoch replaces its old copy
        tmp.rename(self.run_dir / name)
        entries = [e for e in read_record(self.run_dir).get("checkpoints", []) if e["dir"] != name]
        entries.append({"dir": name, "epoch": int(metrics["epoch"]), "val_loss": _score(metrics["val_loss"])})
        kept = _kept(entries, keep=self.keep, latest=name)
        _write_record(self.run_dir, {"checkpoints": kept, "latest": name})
        for entry in entries:
            if entry not in kept:
                shutil.rmtree(self.run_dir / entry["dir"], ignore_errors=True)


def _score(val_loss: float) -> float | None:
    return None if val_loss is None or math.isnan(val_loss) else float(val_loss)


def _kept(entries: list[dict], *, keep: int, latest: str) -> list[dict]:
    """The best `keep` by val_loss (without validation: the newest) and the latest, oldest first."""
    ranked = sorted(entries, key=lambda e: (e["val_loss"] is None, e["val_loss"] or 0.0, -e["epoch"]))
    best = {e["dir"] for e in ranked[:keep]} | {latest}
    return [e for e in entries if e["dir"] in best]


def best_of(record: dict) -> str:
    """The checkpoint with the lowest val_loss; the latest when nothing was validated."""
    scored = [e for e in record["checkpoints"] if e["val_loss"] is not None]
    return min(scored, key=lambda e: e["val_loss"])["dir"] if scored else record["latest"]


def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's checkpoint record; empty when it has none yet."""
    path = Path(run_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    tmp = run_dir / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run_dir / RECORD_FILE)


def run_local(config: dict[str, Any], *, run_dir: Path, keep: int, device: torch.device) -> dict[str, Any]:
    """The loop in this process; returns the run's checkpoint record (a rerun on `run_dir` continues the run)."""
    from lstm_dist.train.loop import run_loop

    threads = torch.get_num_threads()
    try:
        run_loop(config, LocalSession(run_dir, keep=keep, device=device))
    finally:
        torch.set_num_threads(threads)  # the loop sets train.cpus_per_worker threads: this process keeps its own
    record = read_record(run_dir)
    if not record:
        raise RuntimeError(f"training run at {run_dir} reported no checkpoint")
    return record
