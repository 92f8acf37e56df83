"""The workflow engine with the pipelines' on_step hook (tracking.step_runs) on a real MLflow sqlite store:
each step a nested run under the pipeline's run, with its key, lineage, output and timing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow

from lstm_dist.config import load_config
from lstm_dist.storage import CACHE_ENV
from lstm_dist.tracking import seed_sqlite_store, start_pipeline_run, step_runs
from lstm_dist.workflow import CACHED, DONE, Workflow

ROOT = Path(__file__).resolve().parent.parent


def test_each_step_is_a_nested_run_with_its_key_inputs_and_outputs(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "conf" / "debug.yaml",
        [f"workflow.work_dir={tmp_path / 'work'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
    ).resolved()

    def run_once() -> tuple[str, list]:
        tracker = start_pipeline_run(cfg, run_name="steps")
        wf = Workflow(
            cfg.workflow.work_dir, pipeline="test", steps=("a", "b"), on_step=step_runs(tracker),
            mlflow_run_id=tracker.run_id, progress=lambda _: None,
        )  # fmt: skip

        def b_fn(out: str) -> dict:
            wf.step_context.log_metrics({"inside": 1.0})  # the step logs into its own nested run
            return {"n": 2}

        a = wf.step("a", lambda out: {"n": 1}, config={"x": 1})
        b = wf.step("b", b_fn, inputs={"a": a})
        wf.finish()
        tracker.finish()
        assert wf.record["mlflow_run_id"] == tracker.run_id
        return tracker.run_id, [a, b]

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri())
    for want in (DONE, CACHED):
        parent, (a, b) = run_once()
        children = client.search_runs(
            [client.get_run(parent).info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )
        by_name = {r.info.run_name: r for r in children}
        assert sorted(by_name) == ["a", "b"]
        run_b = by_name["b"]
        assert run_b.data.tags["lstm_dist.state"] == want and run_b.data.tags["lstm_dist.key"] == b.key
        assert run_b.data.tags["lstm_dist.output"] == b.uri
        assert json.loads(run_b.data.tags["lstm_dist.inputs"]) == {"a": {"key": a.key, "uri": a.uri}}
        assert run_b.data.metrics["num_items"] == 1 and ("inside" in run_b.data.metrics) == (want == DONE)
        assert run_b.info.status == "FINISHED"


def _new_store(tmp_path: Path, verbose: int) -> subprocess.CompletedProcess:
    """A fresh interpreter that routes MLflow's logs, then creates a sqlite store (MLflow logs its tables)."""
    script = f"""
from lstm_dist.tracking import route_mlflow_logs
route_mlflow_logs({str(tmp_path / "w")!r}, verbose={verbose})
import mlflow
mlflow.MlflowClient({f"sqlite:///{tmp_path / 'mlflow.db'}"!r}).search_experiments()
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)


def test_mlflow_log_lines_go_to_the_work_dir_and_to_the_terminal_only_when_verbose(tmp_path: Path) -> None:
    quiet = _new_store(tmp_path, verbose=0)
    assert "Creating initial MLflow database tables" not in quiet.stdout + quiet.stderr
    assert "Creating initial MLflow database tables" in (tmp_path / "w/logs/mlflow.log").read_text()
    (tmp_path / "mlflow.db").unlink()
    loud = _new_store(tmp_path, verbose=1)
    assert "Creating initial MLflow database tables" in loud.stderr


def test_a_new_sqlite_store_is_a_copy_of_an_empty_one_and_an_old_one_is_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stores = []
    for name in ("a", "b"):
        cfg = load_config(
            ROOT / "conf" / "debug.yaml",
            [f"workflow.work_dir={tmp_path / name}", f"tracking.uri=sqlite:///{tmp_path / name / 'mlflow.db'}"],
        ).resolved()
        tracker = start_pipeline_run(cfg, run_name=name)
        tracker.finish()
        stores.append(mlflow.MlflowClient(tracking_uri=cfg.tracking_uri()))
    (template,) = (tmp_path / "cache" / "lstm_dist").glob("mlflow-*-empty.db")
    assert template.name == f"mlflow-{mlflow.__version__}-empty.db"
    for client, name in zip(stores, ("a", "b"), strict=True):
        experiments = {e.name: e for e in client.search_experiments()}
        assert set(experiments) == {"Default", "lstm_dist_debug"}  # MLflow added its Default experiment back
        (only,) = client.search_runs([experiments["lstm_dist_debug"].experiment_id])
        assert only.info.run_name == name  # each store holds its own run only
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    # The seed is there before MLflow opens it: every table of this version's schema, no experiment yet.
    seed_sqlite_store(f"sqlite:///{tmp_path / 'c.db'}")
    with sqlite3.connect(tmp_path / "c.db") as con:
        assert con.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)
        assert con.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    con.close()

    # A store that exists is never replaced, not even by a seed of the same name.
    seed_sqlite_store(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    experiment = stores[0].get_experiment_by_name("lstm_dist_debug").experiment_id
    assert [r.info.run_name for r in stores[0].search_runs([experiment])] == ["a"]


def test_without_a_usable_cache_mlflow_makes_the_store_itself(tmp_path: Path, monkeypatch) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory would go")
    monkeypatch.setenv(CACHE_ENV, str(blocked))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seed_sqlite_store(uri)
    assert not (tmp_path / "mlflow.db").exists()  # no copy: MLflow builds the store on first use
    assert [e.name for e in mlflow.MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]
