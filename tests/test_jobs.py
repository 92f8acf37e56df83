"""Ray jobs end to end against a real head (`ray start --head` on 127.0.0.1, free ports from the OS).

One head for the module. The pipeline runs as a submitted job and registers a champion; a broken job
makes `submit` exit non-zero; batch prediction runs as a job and equals in-process prediction; the
scheduler submits the retrain pipeline on a short cron: new data -> a decision, no new data -> says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from http_wait import VENV_BIN, clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lstm_dist.cli"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    """A Ray head with the dashboard (job server) on 127.0.0.1; stopped by signalling its own process group."""
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")  # short: socket paths must stay < 107 bytes
    ports = {
        name: free_port()
        for name in (
            "port",
            "dashboard-port",
            "node-manager-port",
            "object-manager-port",
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=4",  # logical: a Train controller + 2 workers + an evaluate task fit on 2 cores
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                assert time.time() < deadline, "the Ray head did not come up in 120 s"
                time.sleep(1)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes (after draining up to 30 s)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # everything of this head (GCS, raylet, jobs, workers): one group
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project dir: conf/ and two data files (half of the series each); the job's working dir."""
    from lstm_dist.data.synthetic import generate_sample

    root = tmp_path_factory.mktemp("project")
    (root / "conf").mkdir()
    shutil.copy(ROOT / "conf/debug.yaml", root / "conf/debug.yaml")
    table = generate_sample(num_series=4, num_steps=400, seed=0).to_pandas()
    (root / "data").mkdir()
    for i, names in enumerate((["s000", "s001"], ["s002", "s003"])):
        table[table["series_id"].isin(names)].to_parquet(root / "data" / f"part-{i}.parquet", index=False)
    return root


def submit(head: str, project: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [*CLI, "submit", "--address", head, "--working-dir", str(project), "--", *args]
    return subprocess.run(cmd, cwd=project, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def pipeline_args(project: Path) -> list[str]:
    return [f"data.path={project / 'data'}", f"workflow.work_dir={project / 'work'}"]


@pytest.fixture(scope="module")
def champion(head: str, project: Path) -> subprocess.CompletedProcess:
    """The train pipeline, submitted as a Ray job: version 1 becomes champion."""
    proc = submit(head, project, "run", "conf/debug.yaml", *pipeline_args(project))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return proc


def test_submit_runs_the_pipeline_on_the_cluster_and_exits_with_its_status(head: str, champion) -> None:
    out = champion.stdout
    for line in ("[shard] done", "[train] done", "[register] done", "alias: champion"):
        assert line in out, f"{line!r} missing from the job's logs:\n{out[-3000:]}"
    assert "submitted job raysubmit_" in champion.stderr and "SUCCEEDED" in champion.stderr
    # The job ran on the head we started, not on a Ray of its own.
    assert "Connecting to existing Ray cluster" in out or "[ray] 1 node(s), 4 CPU" in out


def test_a_failing_job_makes_submit_exit_nonzero(head: str, project: Path) -> None:
    proc = submit(head, project, "run", "conf/missing.yaml", timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "conf/missing.yaml" in proc.stdout + proc.stderr and "FAILED" in proc.stderr


def test_batch_prediction_as_a_job_equals_in_process_predict(head: str, project: Path, champion) -> None:
    work = project / "work"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    output = project / "forecasts.parquet"
    args = ["predict", "--model", "models:/lstm_debug@champion", "--input", str(project / "data")]
    proc = submit(head, project, *args, "--output", str(output), "--tracking-uri", uri, "--num-tasks", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "from 2 task(s)" in proc.stdout

    from lstm_dist import read_metadata

    meta = read_metadata(str(output))
    assert meta["model_name"] == "lstm_debug" and meta["model_version"] == "1"
    assert meta["model_uri"] == "models:/lstm_debug@champion" and meta["model_run_id"]
    batch = pd.read_parquet(output)

    # In-process: the registered pyfunc on the same rows, in a fresh interpreter.
    script = f"""
import mlflow, pandas as pd
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model("models:/lstm_debug/1")
history = pd.concat([pd.read_parquet(p) for p in sorted({[str(p) for p in (project / "data").glob("*.parquet")]!r})])
model.predict(history).to_parquet({str(project / "inproc.parquet")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env=clean_env())
    expected = pd.read_parquet(project / "inproc.parquet").sort_values(["series_id", "step"]).reset_index(drop=True)
    assert len(batch) == 4 * 12 and {"series_id", "timestamp", "step", "target"} <= set(batch.columns)
    pd.testing.assert_frame_equal(batch, expected, check_dtype=False)


def test_scheduled_retrain_decides_on_new_data_then_says_there_is_none(head: str, project: Path, champion) -> None:
    from lstm_dist.jobs import RayJobRunner
    from lstm_dist.schedule import Scheduler, read_history

    # New data in one of the two files: the next 48 hours of its series (the last two days again).
    path = project / "data" / "part-1.parquet"
    frame = pd.read_parquet(path)
    tail = frame.groupby("series_id").tail(48).copy()
    tail["timestamp"] = tail["timestamp"] + pd.Timedelta(hours=48)
    pd.concat([frame, tail]).sort_values(["series_id", "timestamp"]).to_parquet(path, index=False)

    history = project / "schedule.jsonl"
    runner = RayJobRunner(head, working_dir=project)
    scheduler = Scheduler(
        cron="* * * * * */3",  # every 3 seconds: ticks fall while the first retrain runs
        args=["retrain", "conf/debug.yaml", *pipeline_args(project), "workflow.warm_start=true"],
        runner=runner,
        history=history,
        poll_s=1.0,
        max_retries=0,
        progress=lambda _: None,
    )
    outcomes = scheduler.run(max_runs=2)
    events = [e["event"] for e in read_history(history)]
    assert [o["status"] for o in outcomes] == ["SUCCEEDED", "SUCCEEDED"], outcomes
    first, second = (o["message"] for o in outcomes)
    assert first.startswith("retrain: v2 ") and ("is champion" in first or "stays challenger" in first), first
    assert second.startswith("retrain: no new data since"), second
    logs = runner.logs(outcomes[0]["job_id"])
    assert "ingest read 1 of 2 file(s) again: part-1.parquet" in logs  # the unchanged file stayed cached
    assert "warm start: the challenger starts from champion v1's weights" in logs
    # Never two at once: each submission is followed by its outcome before the next one.
    submitted = [i for i, e in enumerate(events) if e == "submitted"]
    assert len(submitted) == 2 and "succeeded" in events[submitted[0] : submitted[1]]
    assert "skipped" in events[submitted[0] : submitted[1]]  # the ticks during the first retrain

    # The decision follows the rule, and the registry agrees with what the job printed.
    script = f"""
import json, mlflow
c = mlflow.MlflowClient(tracking_uri="sqlite:///{project / "work" / "mlflow.db"}")
v2 = c.get_model_version("lstm_debug", "2")
champ = c.get_model_version_by_alias("lstm_debug", "champion")
print(json.dumps({{"champion": str(champ.version), "tags": v2.tags}}))
"""
    info = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=clean_env())
        .stdout.strip()
        .splitlines()[-1]
    )
    tags = info["tags"]
    challenger, champion_score = float(tags["promotion.challenger_score"]), float(tags["promotion.champion_score"])
    promoted = challenger < champion_score  # promotion_margin is 0 in conf/debug.yaml
    assert info["champion"] == ("2" if promoted else "1")
    assert tags["promotion.promoted"] == str(promoted).lower() and tags["promotion.champion_version"] == "1"
    assert tags["lstm_dist.data_fingerprint"] and tags["promotion"] in first
    decisions = [json.loads(line) for line in (project / "work" / "retrain_decisions.jsonl").read_text().splitlines()]
    assert [d["decision"] for d in decisions] == [("promoted" if promoted else "kept champion"), "no new data"]
