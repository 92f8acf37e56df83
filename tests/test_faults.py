"""Fault injection beyond the data layer (issue 12; data faults are in tests/test_faults_data.py): every failure a
user can cause ends as one `error:` line that names the file, key or address and the fix, with exit code 1
(2 for a bad config or command line) and no traceback; a killed run is shown as interrupted and ended as KILLED
in MLflow; a resume takes the newest complete checkpoint.

Real local Ray (conftest.py), a real sqlite MLflow store, the real CLI (in-process, or as a subprocess where the
test is about what happens before Ray starts)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lstm_dist.cli import app, error_text
from lstm_dist.cluster import check_ray_address
from lstm_dist.config import load_config
from lstm_dist.data.errors import DataError
from lstm_dist.data.windows import WindowDataset
from lstm_dist.models import build_model
from lstm_dist.models.saved import save_model
from lstm_dist.serving import history_from_shards, log_forecaster
from lstm_dist.tracking import end_dead_runs, start_pipeline_run
from lstm_dist.train.checkpoints import HISTORY_FILE, STATE_FILE, STATE_JSON, model_args_for, newest_checkpoint
from lstm_dist.workflow import INTERRUPTED, RUNS, Workflow, format_status, read_runs

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"
runner = CliRunner()


def error_line(output: str) -> str:
    """The first `error:` line; the output holds exactly one and no traceback."""
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def lstm_dist(*args: str, timeout: float = 120) -> tuple[int, str, float]:
    """The console script in a fresh process (its own Ray, if it gets that far): (exit code, stderr, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lstm_dist.cli", *map(str, args)], capture_output=True, text=True, env=env,
        timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    return proc.returncode, proc.stderr, time.perf_counter() - started


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


# ---------------------------------------------------------------------------------------------
# A bad config or command line: exit code 2, before anything starts


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["run", "conf/no_such.yaml"], r"^error: config file 'conf/no_such\.yaml' does not exist \(the files in conf/"),
        (["run", DEBUG, "trian.epochs=1"], r"^error: invalid config .*: unknown key 'trian'\. Did you mean 'train'\?"),
        (["run", DEBUG, "train.epoch=1"], r"unknown key 'train\.epoch'\. Did you mean 'train\.epochs'\?"),
        (["run", DEBUG, "train.epochs=-1"], r"^error: invalid config .*: key 'train\.epochs' = -1: .*greater than or"),
        (["run", DEBUG, "epochs"], r"^error: override 'epochs' is not of the form key=value \(e\.g\. train\.epochs=3\)"),
        (["run", DEBUG, "epochs=3"], r"^error: invalid config .*: unknown key 'epochs'\. Allowed in 'top level': data, model, train,"),
        (["run", DEBUG, "train.epochs=[1"], r"^error: override 'train\.epochs=\[1': value '\[1' is not valid YAML"),
        (["data", "ingest", DEBUG, "data.lookback=0"], r"key 'data\.lookback' = 0"),
    ],
    ids=["missing-file", "unknown-section", "unknown-key", "negative-epochs", "not-key-value", "top-level-key",
         "bad-yaml-value", "ingest-bad-key"],
)  # fmt: skip
def test_a_bad_config_is_one_usage_error(args, pattern) -> None:
    code, out = cli(*args)
    assert code == 2
    assert re.search(pattern, error_line(out)), out


def test_a_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  lookback: [48\n")
    code, out = cli("run", bad)
    assert code == 2
    assert error_line(out) == (
        f"error: config file '{bad}' is not valid YAML at line 3, column 1: "
        "expected ',' or ']', but got '<stream end>'; fix the syntax there"
    )


def test_verbose_shows_the_traceback_under_the_same_error_line() -> None:
    code, out = cli("-v", "run", DEBUG, "train.epochs=-1")
    assert code == 2 and "Traceback" in out
    assert [line for line in out.splitlines() if line.startswith("error:")][0].startswith("error: invalid config")


# ---------------------------------------------------------------------------------------------
# The work dir, the Ray address and the inputs are checked before Ray starts


def test_an_unwritable_work_dir_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    dirs = [tmp_path / "a_file" / "work"]  # under a file: not writable, even for root
    if os.geteuid() != 0:  # root writes anywhere a mode forbids
        (tmp_path / "ro").mkdir(mode=0o500)
        dirs.append(tmp_path / "ro" / "work")
    for work in dirs:
        code, out = cli("run", DEBUG, f"workflow.work_dir={work}")
        assert code == 1
        line = error_line(out)
        assert line.startswith(f"error: workflow.work_dir '{work}' is not writable (")
        assert line.endswith("make it writable or point workflow.work_dir=DIR at a directory you can write")


def test_a_filesystem_error_inside_a_step_is_one_line_with_the_path() -> None:
    exc = PermissionError(13, "Permission denied", "/data/work/train/abc.partial/history.csv")
    assert error_text(exc) == (
        "cannot write '/data/work/train/abc.partial/history.csv': Permission denied; "
        "make workflow.work_dir writable (and not full) or point workflow.work_dir=DIR elsewhere"
    )


def test_an_unreachable_ray_address_fails_fast_before_mlflow(tmp_path: Path) -> None:
    port = closed_port()
    code, err, seconds = lstm_dist(
        "run", DEBUG, f"workflow.work_dir={tmp_path}", f"workflow.ray_address=127.0.0.1:{port}"
    )
    assert code == 1
    assert error_line(err) == (
        f"error: workflow.ray_address '127.0.0.1:{port}': nothing answers at 127.0.0.1:{port} within 3s "
        "(Connection refused); start the cluster (ray start --head) or leave workflow.ray_address empty "
        "(and RAY_ADDRESS unset) for a local Ray"
    )
    assert seconds < 45  # interpreter + imports on a busy machine; the probe itself takes < 3 s
    assert not (tmp_path / RUNS).exists()  # no workflow run (and no MLflow run) was started


@pytest.mark.parametrize("address", ["nonsense", "10.0.0.5", "ray://host:port"])
def test_a_malformed_ray_address_is_refused(address: str) -> None:
    with pytest.raises(Exception, match=rf"workflow\.ray_address '{address}' is not host:port"):
        check_ray_address(address)


def test_a_missing_input_is_reported_before_ray_and_mlflow(ray_local, tmp_path: Path) -> None:
    started = time.perf_counter()
    code, out = cli("run", DEBUG, f"workflow.work_dir={tmp_path}", f"data.path={tmp_path / 'nope.csv'}")
    assert code == 1
    assert "nope.csv" in error_line(out)
    assert time.perf_counter() - started < 5
    assert not (tmp_path / RUNS).exists()


# ---------------------------------------------------------------------------------------------
# Errors raised inside Ray tasks: their own message, not Ray's `ray::task() (pid=...)` stack


def test_an_error_inside_a_ray_task_is_unwrapped(ray_local) -> None:
    @ray_local.remote
    def fails() -> None:
        raise DataError("file 'x.csv', column 'target': not numeric; fix the file")

    with pytest.raises(Exception) as info:
        ray_local.get(fails.remote())
    assert "ray::" in str(info.value)  # what the CLI printed before
    assert error_text(info.value) == "file 'x.csv', column 'target': not numeric; fix the file"


def test_failed_sibling_tasks_print_no_unhandled_error_blocks(tmp_path: Path) -> None:
    """Three bad files fail three Ray tasks; the first is reported, the others must not follow as Ray's
    "Unhandled error ... ray::_read_unit_task()" tracebacks when their results are freed."""
    for i in range(3):
        (tmp_path / f"part{i}.csv").write_text("series_id,timestamp,target,temperature\na,2024-01-01 00:00,x,1\n")
    args = ["data", "ingest", DEBUG, f"data.path={tmp_path}", "data.sample=null", f"workflow.work_dir={tmp_path}/w"]
    code, err, _ = lstm_dist(*args)
    assert code == 1
    assert re.match(
        r"error: .*part\d\.csv: column 'target' must be numeric, but row 1 \(line 2\) holds 'x'", error_line(err)
    )
    assert "Unhandled error" not in err and "ray::" not in err


@pytest.fixture(scope="module")
def registered(ray_local, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An (untrained) model registered as the pipeline does, with its store and config."""
    from lstm_dist.data.ingest import ingest

    work = tmp_path_factory.mktemp("faults")
    overrides = [f"workflow.work_dir={work}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}"]
    cfg = load_config(DEBUG, overrides).resolved()
    ingest(cfg.data, out_dir=str(work / "shards"), work_dir=str(work))
    shards = work / "shards"
    args = model_args_for(WindowDataset(str(shards), split="train"))
    ckpt = work / "model"
    ckpt.mkdir()
    save_model(ckpt, model=build_model(cfg.model, **args), model_args={"model": cfg.model.model_dump(), **args})
    tracker = start_pipeline_run(cfg, run_name="faults")
    try:
        log_forecaster(
            tracker, checkpoint_dir=ckpt, shard_dir=shards, input_example=history_from_shards(shards),
            registered_name="faults_model",
        )  # fmt: skip
    finally:
        tracker.finish()
    config = work / "faults.yaml"
    config.write_text(DEBUG.read_text())
    history = history_from_shards(shards, num_series=2, extra_rows=20)
    return {"work": work, "uri": cfg.tracking_uri(), "config": config, "overrides": overrides, "history": history}


def predict(registered: dict, tmp_path: Path, frame: pd.DataFrame, model: str = "models:/faults_model/1"):
    frame.to_csv(tmp_path / "in.csv", index=False)
    return cli(
        "predict", "--model", model, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.parquet",
        "--tracking-uri", registered["uri"], "--config", registered["config"],
    )  # fmt: skip


def test_predict_works_on_the_good_history(registered, tmp_path: Path) -> None:
    code, out = predict(registered, tmp_path, registered["history"])
    assert code == 0, out
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 2 * 12  # two series, horizon 12


def test_predict_with_too_short_history_names_the_series(registered, tmp_path: Path) -> None:
    short = registered["history"].groupby("series_id").tail(10)
    code, out = predict(registered, tmp_path, short)
    assert code == 1
    line = error_line(out)
    assert "ray::" not in line and "pid=" not in line
    assert "48" in line and "series" in line  # the lookback it needs


def test_predict_with_a_missing_column_names_it(registered, tmp_path: Path) -> None:
    code, out = predict(registered, tmp_path, registered["history"].drop(columns=["temperature"]))
    assert code == 1
    line = error_line(out)
    assert "ray::" not in line and "temperature" in line


def test_predict_with_an_unknown_model_names_it(registered, tmp_path: Path) -> None:
    code, out = predict(registered, tmp_path, registered["history"], model="models:/no_such_model@champion")
    assert code == 1
    assert error_line(out).startswith("error: --model ") and "no_such_model" in out
    code, out = predict(registered, tmp_path, registered["history"], model="runs:/abc/model")
    assert code == 1
    assert "models:/<name>@<alias>" in error_line(out)


# ---------------------------------------------------------------------------------------------
# Honest state: a killed run is interrupted (a fixed duration) and KILLED in MLflow; resume takes the newest


KILLED_RUN = """
import os, signal, sys
from lstm_dist.config import load_config
from lstm_dist.tracking import start_pipeline_run, step_runs
from lstm_dist.workflow import Workflow
cfg = load_config(sys.argv[1], sys.argv[2:]).resolved()
tracker = start_pipeline_run(cfg, run_name="doomed")
wf = Workflow(cfg.workflow.work_dir, pipeline="train", steps=["train"], on_step=step_runs(tracker),
              mlflow_run_id=tracker.run_id, progress=lambda s: None)
def train(out):
    os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of a step, as by the OOM killer or kill -9
wf.step("train", train, config={"a": 1})
"""


def test_a_killed_run_is_interrupted_with_a_fixed_duration_and_killed_in_mlflow(tmp_path: Path) -> None:
    overrides = [f"workflow.work_dir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(DEBUG), *overrides], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    [run] = read_runs(tmp_path)
    assert run["status"] == INTERRUPTED and run["steps"][0]["state"] == INTERRUPTED
    later = format_status([run], now=time.time() + 3600)
    assert format_status([run]) == later  # the clock stopped when the process died
    code, out = cli("status", "--work-dir", tmp_path)
    assert code == 0 and f"{run['run_id']}  interrupted" in out

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run["mlflow_run_id"]).info.status == "RUNNING"  # what MLflow showed for ever
    cfg = load_config(DEBUG, overrides).resolved()
    start_pipeline_run(cfg, run_name="next").finish()  # the next start ends it
    parent = client.get_run(run["mlflow_run_id"]).info
    assert parent.status == "KILLED" and parent.end_time == int(run["ended_at"] * 1000)
    steps = client.search_runs([parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'")
    assert steps and all(s.info.status == "KILLED" for s in steps)
    assert end_dead_runs(client, str(tmp_path)) == []  # once


def fake_checkpoint(path: Path, epoch: int, *, complete: bool = True) -> Path:
    """The files of a training checkpoint (load_training_state reads them; contents do not matter here)."""
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"weights")
    (path / HISTORY_FILE).write_text(json.dumps([{"epoch": e} for e in range(1, epoch + 1)]))
    (path / STATE_JSON).write_text(json.dumps({"epoch": epoch}))
    if complete:
        torch.save({}, path / STATE_FILE)
    return path


def test_resume_takes_the_newest_complete_of_three_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "train_run"
    first = fake_checkpoint(run / "checkpoint_2026-01-01_00-00-01.000000", 1)
    second = fake_checkpoint(run / "checkpoint_2026-01-01_00-00-02.000000", 2)
    third = fake_checkpoint(run / "checkpoint_2026-01-01_00-00-03.000000", 3)
    # Ray's snapshot was last written after the second checkpoint: it hands over `second`.
    assert newest_checkpoint(second) == third
    assert newest_checkpoint(first) == third
    (third / STATE_FILE).unlink()  # killed while writing the third: it does not count
    assert newest_checkpoint(second) == second
    fake_checkpoint(run / "checkpoint_2026-01-01_00-00-04.000000", 4, complete=False)
    assert newest_checkpoint(first) == second
    elsewhere = fake_checkpoint(tmp_path / "downloaded", 1)  # a copy from remote storage: no siblings
    assert newest_checkpoint(elsewhere) == elsewhere


def test_workflow_records_keep_the_time_they_were_last_saved(tmp_path: Path) -> None:
    wf = Workflow(tmp_path, pipeline="train", steps=["a"], progress=lambda s: None)
    wf.step("a", lambda out: {}, config={})
    record = json.loads(next((tmp_path / RUNS).glob("*.json")).read_text())
    assert record["started_at"] <= record["updated_at"] <= time.time()
