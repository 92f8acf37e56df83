"""A pipeline killed during training (SIGKILL to its whole process group: the driver, which trains, and its Ray)
and run again.

The rerun reports ingest and shard as cached, resumes training from the killed run's checkpoint instead
of epoch 1, and registers the result exactly once; `status` shows the killed run as interrupted. Training runs
in the driver (conf/debug.yaml's train.backend=local). Resuming a Ray Train run, whose snapshot of its checkpoints
may lag the checkpoints themselves, is tested on a real Ray Train run in tests/test_train_ray.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from lstm_dist.train.local import read_record
from lstm_dist.workflow import CACHED, DONE, INTERRUPTED, read_runs

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lstm_dist.cli"]
# Enough epochs that the kill lands mid-training: the test kills as soon as the first checkpoint is recorded
# (polling every 0.1 s), and an epoch of 24 batches takes ~0.1-0.2 s on a quiet 2-core machine.
EPOCHS = 20
STEPS_PER_EPOCH = 50  # 1200 steps per series give 24 batches of 64 windows an epoch

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_tmp():
    # Short: Ray's socket paths under it must stay below the OS limit of 107 bytes.
    path = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def env_for(ray_tmp: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    return env


def test_killed_during_training_resumes_from_its_checkpoint_and_registers_once(tmp_path: Path, ray_tmp: str) -> None:
    work = tmp_path / "w"
    args = [
        "run",
        str(ROOT / "conf/debug.yaml"),
        f"workflow.work_dir={work}",
        f"train.epochs={EPOCHS}",
        f"train.max_steps_per_epoch={STEPS_PER_EPOCH}",
        "data.sample.num_steps=1200",
        "train.patience=0",
        "evaluate.baseline_history=168",  # AutoETS on a week of each series, not on up to 1,000 rows
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            [*CLI, *args],
            cwd=tmp_path,
            env=env_for(ray_tmp),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # Wait until the run has recorded a checkpoint, then kill everything at once.
            deadline = time.time() + 300
            while not list(work.glob("train/*.partial/ray_train/local_checkpoints.json")):
                assert first.poll() is None, f"the pipeline ended before it could be killed:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, f"no checkpoint after 300 s:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)  # the driver, its local Ray and the training workers
            first.wait()
    killed_at = max(int(m) for m in re.findall(rf"\[train\] epoch (\d+)/{EPOCHS}", log.read_text()) or ["0"])
    assert killed_at < EPOCHS, "training had finished before the kill"
    assert not list(work.glob("train/*/_SUCCESS"))
    (run_dir,) = work.glob("train/*.partial/ray_train")
    record = read_record(run_dir)
    newest = max(e["epoch"] for e in record["checkpoints"])
    assert newest < EPOCHS, f"every epoch was checkpointed before the kill ({newest} of {EPOCHS})"
    assert all((run_dir / e["dir"]).is_dir() for e in record["checkpoints"])

    second = subprocess.run(
        [*CLI, *args], cwd=tmp_path, env=env_for(ray_tmp), capture_output=True, text=True, timeout=600
    )
    out = second.stdout + second.stderr
    (tmp_path / "second.log").write_text(out)
    assert second.returncode == 0, out[-4000:]
    assert re.search(r"\[ingest\[[^\]]+\]\] cached", out) and "[shard] cached" in out, out[-4000:]
    latest = next(e for e in record["checkpoints"] if e["dir"] == record["latest"])
    resumed = f"[train] resuming from checkpoint {latest['dir']} (epoch {latest['epoch']} of {EPOCHS})"
    assert resumed in out, out[-4000:]
    loaded = re.search(r"\[train\] resumed after epoch (\d+)", out)
    assert loaded and int(loaded.group(1)) == latest["epoch"] == newest, out[-4000:]
    epochs_run = [int(m) for m in re.findall(rf"\[train\] epoch (\d+)/{EPOCHS}", out)]
    assert epochs_run and min(epochs_run) == int(loaded.group(1)) + 1 > 1  # continued, not from epoch 1
    assert max(epochs_run) == EPOCHS
    assert "[register] done" in out and "alias: champion" in out

    (train_dir,) = [p for p in work.glob("train/*") if not p.name.endswith(".partial")]
    history = pd.read_csv(train_dir / "history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))  # one history across the kill

    script = f"""
import json, mlflow
c = mlflow.MlflowClient(tracking_uri="sqlite:///{work / "mlflow.db"}")
print(json.dumps(sorted(str(v.version) for v in c.search_model_versions("name='lstm_debug'"))))
"""
    versions = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()[
            -1
        ]
    )
    assert versions == ["1"]  # registered once

    runs = read_runs(work)
    assert [r["status"] for r in runs] == [DONE, INTERRUPTED]
    killed_steps = {s["name"]: s["state"] for s in runs[1]["steps"]}
    assert killed_steps["train"] == INTERRUPTED and killed_steps["shard"] == DONE
    states = {s["name"]: s["state"] for s in runs[0]["steps"]}
    assert states == {"ingest": CACHED, "shard": CACHED, "train": DONE, "evaluate": DONE, "register": DONE}
    status = subprocess.run(
        [*CLI, "status", "--work-dir", str(work)], capture_output=True, text=True, env=env_for(ray_tmp)
    )
    assert status.returncode == 0 and "interrupted" in status.stdout and "cached" in status.stdout
