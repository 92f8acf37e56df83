"""End to end: the CLI in a subprocess on conf/debug.yaml, against a real local Ray and a real MLflow sqlite store.

Two pipeline runs into one work dir, with the refit on all rows (train.final_fit) and a known-future column
(temperature), on an input with columns the model does not use. The second run's input differs from the
first only in the last `horizon` targets of every series, which no held-out training (train/val) sees: the
evaluated models come out identical, the registered (refit) ones do not. The first trains on Ray Train, the
second in the driver's process (train.backend=local): identical evaluated models also say that both backends
train the same weights. Then reruns: all cached, and into
a wiped store. The pipeline with two DDP workers runs in tests/test_multinode_objectstore.py (on two nodes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstm_dist.data.synthetic import generate_sample
from lstm_dist.predict import PredictError, predict
from lstm_dist.serving import ForecastModel

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lstm_dist.cli"]
HORIZON = 12

pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # Ray's socket paths must stay under 108 bytes: a short temp dir, not pytest's long tmp_path.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def debug_run(work: Path, data: str, *extra: str) -> subprocess.CompletedProcess:
    """`lstm-dist run conf/debug.yaml` on `work/<data>` into `work/w`: refit on all rows, temperature known ahead."""
    args = [f"workflow.work_dir={work / 'w'}", f"data.path={work / data}", "data.covariate_cols=[]"]
    args += ["data.future_cols=[temperature]", "train.final_fit=continue", *extra]
    return cli("run", str(ROOT / "conf/debug.yaml"), *args, cwd=work)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("e2e")
    first = generate_sample(num_series=4, num_steps=400).to_pandas()
    first["note"], first["spare"] = "not used", 1.0  # columns of the input that the model does not use
    second = first.copy()
    tail = second.groupby("series_id").cumcount(ascending=False) < HORIZON
    second.loc[tail, "target"] += 500.0
    procs = []
    # The first run trains on Ray Train, the second in the driver's process (debug.yaml's train.backend=local).
    for name, frame, extra in (("a", first, ["train.backend=ray"]), ("b", second, [])):
        (work / name).mkdir()
        frame.to_parquet(work / name / "input.parquet")
        proc = debug_run(work, name, *extra)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        procs.append(proc)
    return {"work": work, "uri": f"sqlite:///{work / 'w' / 'mlflow.db'}", "frames": (first, second), "procs": procs}


def test_run_registers_a_champion_that_loads_in_a_fresh_process(two_runs) -> None:
    work, uri, out = two_runs["work"], two_runs["uri"], two_runs["procs"][0].stdout
    for line in (
        "[ingest] done",
        "[train] done",
        "[evaluate] done",
        "[final_fit] done",
        "[register] done",
        "MLflow UI:",
        "alias: champion",
    ):
        assert line in out, f"{line!r} missing from output:\n{out[-3000:]}"
    run_id = re.search(r"^MLflow run: (\w+)$", out, re.MULTILINE).group(1)
    # Read back with MlflowClient: the run has params, per-epoch metrics, artifacts and nested step runs.
    script = f"""
import json, mlflow
c = mlflow.MlflowClient(tracking_uri={uri!r})
parent = c.get_run({run_id!r})
runs = c.search_runs([parent.info.experiment_id], filter_string="tags.mlflow.parentRunId = '{run_id}'")
steps = sorted(r.data.tags["lstm_dist.step"] for r in runs)
hist = c.get_metric_history({run_id!r}, "val/loss")
arts = [a.path for a in c.list_artifacts({run_id!r})]
sub = [a.path for p in ("config", "data") for a in c.list_artifacts({run_id!r}, p)]
v = c.get_model_version("lstm_debug", "1")
print(json.dumps(dict(params=parent.data.params, steps=steps, epochs=[m.step for m in hist], arts=arts + sub,
                      metrics=parent.data.metrics, tags=v.tags, model_run=v.run_id)))
"""
    info = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=work)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert info["params"]["train.epochs"] == "2" and info["params"]["data.lookback"] == "48"
    assert info["steps"] == ["evaluate", "final_fit", "ingest", "register", "shard", "train"]
    assert sorted(info["epochs"]) == [1, 2]  # the held-out run's validation; the final fit has none
    assert "config/resolved.yaml" in info["arts"] and "data/manifest.json" in info["arts"]
    assert info["model_run"] == run_id  # version 1 came from this run
    assert info["metrics"]["test/model_mae"] > 0 and info["metrics"]["test/naive_mae"] > 0
    assert info["tags"]["promotion"].startswith("first model") and info["tags"]["refit"] == "true"

    # The registered model loads in a fresh Python process and forecasts in original units, from a cutoff
    # whose later rows give the known-future temperature.
    history, _ = two_runs["frames"]
    cut = history["timestamp"].max() - pd.Timedelta(hours=HORIZON)
    history.to_parquet(work / "history.parquet")
    script = f"""
import mlflow, pandas as pd
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model("models:/lstm_debug/1")
h = pd.read_parquet({str(work / "history.parquet")!r})
pred = model.predict(h, params={{"as_of": {str(cut)!r}}})
pred.to_parquet({str(work / "pred.parquet")!r})
"""
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=work)
    pred = pd.read_parquet(work / "pred.parquet")
    assert len(pred) == history["series_id"].nunique() * HORIZON
    assert sorted(pred["step"].unique()) == list(range(1, HORIZON + 1))
    assert pred["timestamp"].min() == cut + pd.Timedelta(hours=1)
    # Right scale: each series' forecast lies near that series' recent level, not near 0 (the scaled space).
    for sid, group in pred.groupby("series_id"):
        recent = history[(history["series_id"] == sid) & (history["timestamp"] <= cut)]["target"].tail(200)
        spread = recent.max() - recent.min()
        assert recent.min() - spread < group["target"].mean() < recent.max() + spread, sid


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
MLFLOW_NOISE += ("Successfully registered model", "Created version")  # mlflow.register_model's prints
# Said before the evaluate step scores (pipelines/steps.py evaluate_step).
EVALUATING = re.compile(
    r"\[evaluate\] .* AutoETS and AutoTheta on the last one of 4 series \(fitted on up to \d+ rows\)"
)
# The driver's line once Ray Train's workers are set up (train/progress.py).
READY = re.compile(r"\[train\] 1 worker\(s\) on cpu, \d+ steps an epoch: ready after \d+\.\d s")


def test_a_run_prints_only_its_own_lines(two_runs) -> None:
    work, proc = two_runs["work"], two_runs["procs"][0]
    out = proc.stdout + proc.stderr
    # One line per epoch, printed by the driver from rank 0's progress (train/progress.py), not by a worker.
    epochs = [line.split(" train_loss=")[0] for line in out.splitlines() if "] epoch " in line]
    assert epochs[:2] == ["[train] epoch 1/2", "[train] epoch 2/2"], out[-3000:]
    # Between "[train] running" and the first epoch: one line when Ray Train's workers are ready.
    lines = out.splitlines()
    ready = [i for i, line in enumerate(lines) if READY.fullmatch(line)]
    assert len(ready) == 1 and ready[0] < lines.index(next(x for x in lines if "[train] epoch 1/2" in x)), out[-3000:]
    # Before the evaluate step's statistical baselines (minutes on long series): what it fits, on how much.
    said = [i for i, line in enumerate(lines) if EVALUATING.fullmatch(line)]
    done = next(i for i, line in enumerate(lines) if line.startswith("[evaluate] done"))
    assert len(said) == 1 and said[0] < done, out[-3000:]
    for noise in RAY_NOISE + MLFLOW_NOISE:
        assert noise not in out, f"{noise!r} in the output:\n{out[-3000:]}"
    assert "\x1b[" not in out  # not a TTY: no colour codes
    log = (work / "w/logs/ray.log").read_text()  # Ray's lines went here instead
    assert "Started a local Ray instance" in log and "\x1b[" not in log
    # MLflow's lines go to their own file (tests/test_workflow_tracking.py); a new store is a copy of an empty
    # one (tracking.seed_sqlite_store), so the registration's prints may be all MLflow says here.
    mlflow_log = (work / "w/logs/mlflow.log").read_text()
    assert "Created version '1' of model 'lstm_debug'" in mlflow_log and "\x1b[" not in mlflow_log


def _load(uri: str, version: int):
    """The version's pyfunc, from its own artifact location: mlflow.set_tracking_uri would export
    MLFLOW_TRACKING_URI, which `lstm-dist submit` forwards to jobs of later tests (tests/test_jobs.py)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return mlflow.pyfunc.load_model(client.get_model_version_download_uri("lstm_debug", str(version)))


def test_the_registered_model_was_refit_on_the_last_rows(two_runs) -> None:
    import mlflow

    assert all("[final_fit] done" in p.stdout for p in two_runs["procs"])
    client = mlflow.MlflowClient(tracking_uri=two_runs["uri"])
    for version in ("1", "2"):
        tags = client.get_model_version("lstm_debug", version).tags
        assert tags["refit"] == "true" and tags["refit.rows"] == str(4 * 400)
        # continue: a quarter of the held-out run's best epoch (1 or 2), rounded up
        assert tags["refit.mode"] == "continue" and tags["refit.epochs"] == "1" and "promotion" in tags
    first, _ = two_runs["frames"]
    cut = first["timestamp"].max() - pd.Timedelta(hours=HORIZON)  # the rows after it give the known future
    models = [_load(two_runs["uri"], v).unwrap_python_model() for v in (1, 2)]
    refit = [m.forecast(first, as_of=cut) for m in models]
    held = []
    for m in models:
        evaluated = ForecastModel()
        evaluated.net, evaluated.manifest = m.heldout_net, m.manifest
        held.append(evaluated.forecast(first, as_of=cut))
    # The evaluated models never saw the changed rows: same weights, same forecast ...
    pd.testing.assert_frame_equal(held[0], held[1])
    # ... the registered ones trained on them.
    assert not np.allclose(refit[0]["target"], refit[1]["target"])


def test_the_final_fit_has_its_own_epoch_lines(two_runs) -> None:
    lines = [line for line in two_runs["procs"][0].stdout.splitlines() if "] epoch " in line]
    epochs = [line.split(" train_loss=")[0] for line in lines]
    assert epochs[:2] == ["[train] epoch 1/2", "[train] epoch 2/2"] and epochs[2:], epochs
    assert all(e.startswith("[final_fit] epoch ") for e in epochs[2:]), epochs
    # The held-out run reports its validation; the final fit has none to report (no "val_loss=nan").
    assert all("val_loss=" in line for line in lines[:2]) and not any("val_" in line for line in lines[2:]), lines


def test_the_signature_lists_only_the_used_columns(two_runs) -> None:
    info = _load(two_runs["uri"], 2).metadata
    inputs = {c["name"] for c in info.signature.inputs.to_dict()}
    assert inputs == {"timestamp", "series_id", "target", "temperature"}
    assert [p.name for p in info.signature.params] == ["as_of"]


def test_predict_needs_and_checks_the_future_rows(two_runs, tmp_path: Path) -> None:
    work, uri = two_runs["work"], two_runs["uri"]
    _, history = two_runs["frames"]
    last = history["timestamp"].max()
    steps = pd.date_range(last + pd.Timedelta(hours=1), periods=HORIZON, freq="h")
    future = pd.DataFrame(
        [(s, t, 15.0 + i) for s in sorted(history["series_id"].unique()) for i, t in enumerate(steps)],
        columns=["series_id", "timestamp", "temperature"],
    )
    future.to_csv(tmp_path / "future.csv", index=False)
    future[future["series_id"] != "s003"].to_parquet(tmp_path / "short.parquet")
    kw = {"model_uri": "models:/lstm_debug/2", "source": str(work / "b"), "tracking_uri": uri}
    # Checked on the driver, before any Ray task: no --future, or one that lacks a series.
    with pytest.raises(PredictError, match=r"--future FILE .*\['series_id', 'timestamp', 'temperature'\]"):
        predict(output=str(tmp_path / "x.parquet"), **kw)
    with pytest.raises(PredictError, match=r"--future .*short.parquet: .*'s003' \(12 of 12 steps"):
        predict(output=str(tmp_path / "x.parquet"), future=str(tmp_path / "short.parquet"), **kw)
    # predict downloaded the model without setting a process-wide registry URI: mlflow.set_registry_uri
    # exports MLFLOW_REGISTRY_URI, which sent later tests' subprocesses to this test's store.
    assert "MLFLOW_REGISTRY_URI" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ

    args = ["predict", "--model", "models:/lstm_debug/2", "--input", str(work / "b"), "--tracking-uri", uri]
    proc = cli(*args, "--output", str(tmp_path / "end.parquet"), "--future", str(tmp_path / "future.csv"), cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    end = pd.read_parquet(tmp_path / "end.parquet")
    assert len(end) == 4 * HORIZON and end["timestamp"].min() == steps[0]

    cut = last - pd.Timedelta(hours=30)
    proc = cli(*args, "--output", str(tmp_path / "cut.parquet"), "--as-of", str(cut), cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = _load(uri, 2).unwrap_python_model()
    past, after = history[history["timestamp"] <= cut], history[history["timestamp"] > cut]
    expected = model.forecast(past, future=after)
    got = pd.read_parquet(tmp_path / "cut.parquet")
    assert got["timestamp"].min() == cut + pd.Timedelta(hours=1)
    np.testing.assert_allclose(got["target"], expected["target"], rtol=1e-6)


def test_rerun_uses_the_cache_and_registers_nothing_new(two_runs) -> None:
    work = two_runs["work"]
    proc = debug_run(work, "b")  # the second run's config: every step is cached
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("ingest", "shard", "train", "evaluate", "final_fit", "register"):
        assert f"[{step}] cached" in proc.stdout
    assert "models:/lstm_debug/2 " in proc.stdout  # still version 2: no duplicate registration


def test_a_cached_register_step_registers_again_in_a_wiped_tracking_store(two_runs) -> None:
    work = two_runs["work"]  # the last test of the two runs: it wipes their store
    (work / "w" / "mlflow.db").unlink()  # the store the model was registered in is gone; the work dir is not
    proc = debug_run(work, "b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[evaluate] cached" in proc.stdout and "[register] done" in proc.stdout, proc.stdout[-3000:]
    assert "[register] cached" in proc.stdout and "but no longer valid" in proc.stdout
    assert "[ray] not started: no step left to run uses it" in proc.stdout  # registering runs in this process
    # Read in a fresh process: this one's MLflow keeps an engine on the deleted file under the same URI.
    script = f"""
import mlflow
c = mlflow.MlflowClient(tracking_uri={two_runs["uri"]!r})
print(sorted(str(v.version) for v in c.search_model_versions("name='lstm_debug'")))
"""
    versions = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert versions.stdout.strip().splitlines()[-1] == "['1']"


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
