"""End to end: the CLI in a subprocess on conf/debug.yaml, against a real local Ray and a real MLflow sqlite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lstm_dist.cli"]

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # Ray's socket paths must stay under 108 bytes: a short temp dir, not pytest's long tmp_path.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def debug_run(work: Path) -> subprocess.CompletedProcess:
    """`lstm-dist run conf/debug.yaml` into `work/w`, with two DDP workers (the debug config has one): the
    whole pipeline through DDP, as on a cluster."""
    return cli("run", str(ROOT / "conf/debug.yaml"), f"workflow.work_dir={work / 'w'}", "train.num_workers=2", cwd=work)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("e2e")
    proc = debug_run(work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc


def test_run_registers_a_champion_that_loads_in_a_fresh_process(finished_run) -> None:
    work, proc = finished_run
    out = proc.stdout
    for line in (
        "[ingest] done",
        "[train] done",
        "[evaluate] done",
        "[register] done",
        "MLflow UI:",
        "alias: champion",
    ):
        assert line in out, f"{line!r} missing from output:\n{out[-3000:]}"
    uri = f"sqlite:///{work / 'w' / 'mlflow.db'}"
    # Read back with MlflowClient: the run has params, per-epoch metrics, artifacts and nested step runs.
    script = f"""
import json, mlflow
c = mlflow.MlflowClient(tracking_uri={uri!r})
exp = c.get_experiment_by_name("lstm_dist_debug")
runs = c.search_runs([exp.experiment_id])
parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
steps = sorted(r.data.tags["lstm_dist.step"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
hist = c.get_metric_history(parent.info.run_id, "val/loss")
arts = [a.path for a in c.list_artifacts(parent.info.run_id)]
sub = [a.path for p in ("config", "data") for a in c.list_artifacts(parent.info.run_id, p)]
v = c.get_model_version_by_alias("lstm_debug", "champion")
print(json.dumps(dict(params=parent.data.params, steps=steps, epochs=[m.step for m in hist], arts=arts + sub,
                      metrics=parent.data.metrics, version=v.version, tags=v.tags,
                      model_run=v.run_id, run_id=parent.info.run_id)))
"""
    info = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=work)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert info["params"]["train.epochs"] == "2" and info["params"]["data.lookback"] == "48"
    assert info["steps"] == ["evaluate", "ingest", "register", "shard", "train"]
    # debug.yaml registers the evaluated model (train.final_fit=false); tests/test_e2e_final_fit.py runs the refit
    assert info["tags"]["refit"] == "false"
    assert sorted(info["epochs"]) == [1, 2]
    assert "config/resolved.yaml" in info["arts"] and "data/manifest.json" in info["arts"]
    assert str(info["version"]) == "1" and info["model_run"] == info["run_id"]  # the champion came from this run
    assert info["metrics"]["test/model_mae"] > 0 and info["metrics"]["test/naive_mae"] > 0
    assert info["tags"]["promotion"].startswith("first model")

    # The registered model loads in a fresh Python process and forecasts in original units.
    history = pd.read_parquet(next((work / "w").glob("sample/*.parquet")))
    history.to_parquet(work / "history.parquet")
    script = f"""
import mlflow, pandas as pd
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model("models:/lstm_debug@champion")
h = pd.read_parquet({str(work / "history.parquet")!r})
pred = model.predict(h)
pred.to_parquet({str(work / "pred.parquet")!r})
"""
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=work)
    pred = pd.read_parquet(work / "pred.parquet")
    num_series, horizon = history["series_id"].nunique(), 12
    assert len(pred) == num_series * horizon
    assert sorted(pred["step"].unique()) == list(range(1, horizon + 1))
    # Right scale: each series' forecast lies near that series' recent level, not near 0 (the scaled space).
    for sid, group in pred.groupby("series_id"):
        recent = history[history["series_id"] == sid]["target"].tail(200)
        spread = recent.max() - recent.min()
        assert recent.min() - spread < group["target"].mean() < recent.max() + spread, sid
        assert group["timestamp"].min() > history[history["series_id"] == sid]["timestamp"].max()


# Ray's own lines that a normal run used to print (issue 11): none may reach the terminal.
RAY_NOISE = (
    "Failed to query Ray Train Controller actor state",  # Ray Train's placement-group cleaner
    "PreemptionWatcher",  # core_worker.cc about the preemption watcher's constructor arguments
    "Token authentication is enabled",  # ray.init's warning
    "Found multiple active Ray instances",
    "Started a local Ray instance",
    "Traceback (most recent call last)",
)
# MLflow's own lines (issue 11): they go to <work_dir>/logs/mlflow.log.
MLFLOW_NOISE = ("Creating initial MLflow database tables", "Updating database tables", "INFO mlflow", "alembic")


def test_a_run_prints_only_its_own_lines(finished_run) -> None:
    work, proc = finished_run
    out = proc.stdout + proc.stderr
    # One line per epoch, printed by the driver from rank 0's progress (train/progress.py), not by a worker.
    epochs = [line.split(" train_loss=")[0] for line in out.splitlines() if "] epoch " in line]
    assert epochs == ["[train] epoch 1/2", "[train] epoch 2/2"], out[-3000:]
    for noise in RAY_NOISE + MLFLOW_NOISE:
        assert noise not in out, f"{noise!r} in the output:\n{out[-3000:]}"
    assert "\x1b[" not in out  # not a TTY: no colour codes
    log = (work / "w/logs/ray.log").read_text()  # Ray's lines went here instead
    assert "Started a local Ray instance" in log and "\x1b[" not in log
    # MLflow's lines go to their own file (tests/test_workflow_tracking.py); a new store is a copy of an empty
    # one (tracking.seed_sqlite_store), so MLflow may have nothing to say here.
    assert (work / "w/logs/mlflow.log").exists() and "\x1b[" not in (work / "w/logs/mlflow.log").read_text()


def test_rerun_uses_the_cache_and_registers_nothing_new(finished_run) -> None:
    work, _ = finished_run
    proc = debug_run(work)  # the first run's config: every step is cached
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("ingest", "shard", "train", "evaluate", "register"):
        assert f"[{step}] cached" in proc.stdout
    assert "models:/lstm_debug/1 " in proc.stdout  # still version 1: no duplicate registration


def test_a_cached_register_step_registers_again_in_a_wiped_tracking_store(finished_run) -> None:
    import mlflow

    work, _ = finished_run
    (work / "w" / "mlflow.db").unlink()  # the store the model was registered in is gone; the work dir is not
    proc = debug_run(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[evaluate] cached" in proc.stdout and "[register] done" in proc.stdout, proc.stdout[-3000:]
    assert "[register] cached" in proc.stdout and "but no longer valid" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'w' / 'mlflow.db'}")
    assert [str(v.version) for v in client.search_model_versions("name='lstm_debug'")] == ["1"]


@pytest.mark.parametrize(
    ("rows", "fragments", "before_ray"),
    [
        ("timestamp,series_id,value\n2024-01-01 00:00,a,1.0\n", ["target", "value"], True),  # the header says so
        ("timestamp,series_id,target\n2024-01-01 00:00,a,1.0\n2024-01-01 01:00,a,oops\n", ["target", "oops"], False),
    ],
    ids=["missing-column", "non-numeric-target"],
)
def test_bad_input_names_the_column_and_leaves_no_complete_shards(
    tmp_path: Path, rows: str, fragments, before_ray: bool
) -> None:
    data = tmp_path / "bad.csv"
    data.write_text(rows)
    before = data.read_bytes()
    proc = cli(
        "run",
        str(ROOT / "conf/debug.yaml"),
        f"data.path={data}",
        "data.covariate_cols=[]",
        f"workflow.work_dir={tmp_path / 'w'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    for fragment in fragments + [str(data)]:
        assert fragment in proc.stderr, f"{fragment!r} not in stderr:\n{proc.stderr[-2000:]}"
    assert data.read_bytes() == before  # raw input untouched
    assert ("[ray]" not in proc.stdout) == before_ray, proc.stdout[-2000:]  # a header check needs no Ray
    complete = [p for p in (tmp_path / "w").rglob("*") if p.name in ("_SUCCESS", "manifest.json")]
    assert complete == []
