"""One tuned pipeline run against a real `mlflow server` over HTTP: Ray Tune with ASHA (4 trials, 1 worker each),
the best config retrained on train + validation, then everything read back with MlflowClient.

The search space holds one hopeless learning rate (1e-6) so that ASHA has trials to stop; `tune.start_from`
lists all four points, the two good ones first (run first, two at a time), so the hopeless trials are compared
with good scores at ASHA's first rung.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from http_wait import free_port, stop_server, wait_until_up

from lstm_dist.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "tune_debug.yaml"
MAX_EPOCHS = 3  # train.epochs of tune_debug.yaml: ASHA's budget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on 127.0.0.1 (a port the OS picked), sqlite backend, artifacts proxied by the server."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    cmd += ["--workers", "1"]
    # The server runs uvicorn by name: the environment's bin directory must be on PATH.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    wait_until_up(f"{uri}/health", process=server, log=(root / "server.log").read_text, timeout=120)
    try:
        yield uri
    finally:
        stop_server(server, log)


@pytest.fixture(scope="module")
def tuned(ray_local, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import mlflow
    from lstm_dist.pipelines.train import run

    work = tmp_path_factory.mktemp("tuned")
    cfg = load_config(CONF, [f"workflow.work_dir={work}", f"tracking.uri={mlflow_server}"]).resolved()
    lines: list[str] = []
    summary = run(cfg, progress=lines.append)
    client = mlflow.MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id], max_results=500)
    by_id = {r.info.run_id: r for r in runs}
    parent = by_id[summary.run_id]
    children = {}
    for r in runs:
        children.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    steps = {r.data.tags["lstm_dist.step"]: r for r in children[parent.info.run_id]}
    trials = children.get(steps["tune"].info.run_id, [])
    return {
        "cfg": cfg,
        "summary": summary,
        "client": client,
        "parent": parent,
        "steps": steps,
        "trials": trials,
        "lines": lines,
        "uri": mlflow_server,
    }


def test_four_trials_run_and_asha_stops_the_weak_ones_early(tuned, tmp_path: Path) -> None:
    client, trials = tuned["client"], tuned["trials"]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    tune_run = tuned["steps"]["tune"]
    assert tune_run.data.tags["tune.num_trials"] == "4"
    stopped = [t for t in trials if t.data.tags["tune.stopped"] == "scheduler"]
    full = [t for t in trials if t.data.tags["tune.stopped"] == "no"]
    assert stopped and full, [(t.data.params, t.data.tags["tune.stopped"]) for t in trials]
    for t in stopped:  # stopped early: fewer epochs than the budget, in the metric history too
        epochs = [m.step for m in client.get_metric_history(t.info.run_id, "val/loss")]
        assert t.data.metrics["epochs_run"] < MAX_EPOCHS and max(epochs) < MAX_EPOCHS
    # The hopeless learning rate never survives the first rung: the good trials it is compared with ran first.
    hopeless = [t for t in trials if float(t.data.params["train.lr"]) == 1e-6]
    assert len(hopeless) == 2 and all(t.data.tags["tune.stopped"] == "scheduler" for t in hopeless)
    for t in full:
        assert t.data.metrics["epochs_run"] == MAX_EPOCHS
        assert sorted(m.step for m in client.get_metric_history(t.info.run_id, "val/loss")) == [1, 2, 3]
    # The summary table: one row per trial, as CSV and JSON on the tune run, and printed.
    assert {"tune/trials.csv", "tune/trials.json"} <= _artifacts(client, tune_run.info.run_id)
    # tune.max_concurrent_trials (2) held: never more than two trials ran at once. (Tune ignores its own
    # max_concurrent_trials for the random search; all four once ran together and ASHA stopped nothing.)
    table = pd.read_csv(client.download_artifacts(tune_run.info.run_id, "tune/trials.csv", str(tmp_path)))
    assert len(table) == 4 and (table["ended_at"] > table["started_at"]).all()
    # Tune's report timestamps are whole seconds: a start estimated from them may be up to 1 s early.
    edges = sorted([(t + 1.0, 1) for t in table["started_at"]] + [(t, -1) for t in table["ended_at"]])
    running = np.cumsum([step for _, step in edges])
    assert running.max() <= tuned["cfg"].tune.max_concurrent_trials == 2, table[["trial_id", "started_at", "ended_at"]]
    printed = next(line for line in tuned["lines"] if "best_val_loss" in line)
    for column in ("trial_id", "train.lr", "model.hidden_size", "best_val_loss", "epochs", "stopped"):
        assert column in printed


def test_the_registered_model_comes_from_the_best_trial(tuned) -> None:
    import mlflow

    client, trials, cfg = tuned["client"], tuned["trials"], tuned["cfg"]
    tagged = [t for t in trials if t.data.tags["tune.best"] == "true"]
    assert len(tagged) == 1
    best = tagged[0]  # two trials may tie (the same sampled values train identically); any of them may be best
    assert best.data.metrics["val/best_loss"] == min(t.data.metrics["val/best_loss"] for t in trials)
    version = client.get_model_version(cfg.tracking.model_name, tuned["summary"].version)
    assert version.tags["tune.best_trial"] == best.data.tags["tune.trial_id"]
    assert tuned["summary"].alias == "champion" and version.tags["promotion"].startswith("first model")
    # The final training used the best trial's values, trained for its best epoch count, on train + validation.
    train = tuned["steps"]["train"]
    for key in ("train.lr", "model.hidden_size"):
        assert train.data.params[key] == best.data.params[key], key
    assert train.data.params["train.epochs"] == str(int(best.data.metrics["best_epoch"]))
    assert {i.dataset.name for i in train.inputs.dataset_inputs} == {"shards-train"}
    # And the network in the registered pyfunc has the best trial's size.
    mlflow.set_tracking_uri(tuned["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.model_name}@champion").unwrap_python_model()
    assert model.net.cfg.hidden_size == int(best.data.params["model.hidden_size"])


def test_runs_params_tags_metrics_and_artifacts_are_on_the_server(tuned) -> None:
    client, parent, steps = tuned["client"], tuned["parent"], tuned["steps"]
    assert parent.info.status == "FINISHED"
    assert {"ingest", "shard", "tune", "train", "evaluate", "register"} <= set(steps)
    assert all(r.info.status == "FINISHED" for r in steps.values())
    # Params: the flattened resolved config.
    params = parent.data.params
    assert params["data.lookback"] == "48" and params["tune.num_samples"] == "4" and params["train.epochs"] == "3"
    # Tags: version, commit, data fingerprint, Ray cluster size and GPU type.
    tags = parent.data.tags
    assert tags["lstm_dist.version"] and len(tags["data.fingerprint"]) == 16
    assert float(tags["ray.num_cpus"]) >= 1 and tags["ray.num_nodes"] == "1" and tags["ray.gpu_type"] == "none"
    if (ROOT / ".git").exists():
        assert len(tags["git.commit"]) == 40
    # Metrics per epoch with step numbers, and the test metrics.
    history = client.get_metric_history(parent.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, int(steps["train"].data.params["train.epochs"]) + 1))
    assert parent.data.metrics["test/model_mae"] > 0 and parent.data.metrics["test/naive_mae"] > 0
    # System metrics on the training run.
    system = [k for k in steps["train"].data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    # Artifacts: config, manifest, PNGs, metrics tables.
    artifacts = _artifacts(client, parent.info.run_id)
    expected = {
        "config/resolved.yaml",
        "data/manifest.json",
        "plots/loss_curves.png",
        "plots/forecast_vs_actual.png",
        "plots/error_by_horizon.png",
        "plots/gate_heatmap.png",
        "metrics/test_metrics.csv",
        "metrics/test_metrics.json",
    }
    assert expected <= artifacts, expected - artifacts
    png = Path(client.download_artifacts(parent.info.run_id, "plots/forecast_vs_actual.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # Dataset lineage: train / validation / test of the shards, with their context.
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags} for i in parent.inputs.dataset_inputs}
    assert {name: t["mlflow.data.context"] for name, t in inputs.items()} == {
        "shards-train": "training",
        "shards-val": "validation",
        "shards-test": "testing",
    }
    assert {i.dataset.name for i in steps["evaluate"].inputs.dataset_inputs} == {"shards-test"}


def test_the_champion_loads_over_http_and_forecasts(tuned) -> None:
    import mlflow

    from lstm_dist.serving import history_from_shards

    mlflow.set_tracking_uri(tuned["uri"])
    cfg = tuned["cfg"]
    shards = next(Path(cfg.workflow.work_dir).glob("shard/*/shards"))
    history = history_from_shards(shards, num_series=2)
    pred = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.model_name}@champion").predict(history)
    assert len(pred) == 2 * cfg.data.horizon and pred["target"].notna().all()


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out
