"""A rerun whose every step is cached answers from the work dir before Ray starts, and adds no MLflow run.

The first run is the debug pipeline on a real local Ray and a real MLflow sqlite store. The reruns happen
with starting Ray made impossible (a trap in place of `init_ray`, or a dead RAY_ADDRESS for the CLI):
an all-cached rerun passes; one with a step left to do that uses Ray (a forced shard step) walks into the
trap, i.e. takes the normal path; one whose steps left all run in this process (only the register step, for a
model gone from the tracking store; a forced train step with train.backend=local) runs them without Ray. `predict` on the same small input is forecast in this
process (the dead RAY_ADDRESS again), after checking the model, and equals `lstm_dist.forecast`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lstm_dist.config import load_config
from lstm_dist.storage import save_resolved

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"

pytestmark = pytest.mark.slow


class RayStarted(Exception):
    """Raised by the trap: the run tried to start Ray."""


def _mlflow_runs(cfg) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking_uri())
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return [r.info.run_id for r in client.search_runs([experiment.experiment_id], max_results=1000)]


def _printed(run, cfg, **kwargs):
    """A pipeline's `run(cfg, **kwargs)`, and the lines it printed, as one text."""
    lines: list[str] = []
    result = run(cfg, progress=lines.append, **kwargs)
    return result, "\n".join(lines)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, ray_local):
    from lstm_dist.pipelines.train import run

    work = tmp_path_factory.mktemp("cached") / "w"
    cfg = load_config(DEBUG, [f"workflow.work_dir={work}", "train.num_workers=1"]).resolved()
    save_resolved(cfg)
    summary = run(cfg, progress=lambda _: None)
    assert summary.model_uri and {s["state"] for s in summary.steps} == {"done"}
    return cfg, summary


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting (or joining) Ray raises: a run that gets there fails."""

    def trap(cfg):
        raise RayStarted("the run tried to start Ray")

    from lstm_dist.pipelines import steps

    import lstm_dist.cluster

    monkeypatch.setattr(lstm_dist.cluster, "init_ray", trap)
    monkeypatch.setattr(steps, "init_ray", trap)
    monkeypatch.setattr(steps, "ray_started", lambda: False)  # this module's Ray (ray_local) counts as none


def test_an_all_cached_rerun_starts_no_ray_and_adds_no_mlflow_run(first_run, no_ray) -> None:
    from lstm_dist.pipelines.train import run

    cfg, first = first_run
    before = _mlflow_runs(cfg)
    again, out = _printed(run, cfg)
    for step in ("ingest", "shard", "train", "evaluate", "register"):
        assert f"[{step}] cached" in out, out
    assert "every step cached" in out and first.metrics["test_model_mae"] > 0
    assert (again.model_uri, again.version, again.alias) == (first.model_uri, first.version, first.alias)
    assert again.metrics == first.metrics and again.run_id == first.run_id  # the run that holds these results
    assert {s["state"] for s in again.steps} == {"cached"}
    assert sorted(_mlflow_runs(cfg)) == sorted(before)


def test_a_forced_step_that_uses_ray_takes_the_normal_path(first_run, no_ray) -> None:
    from lstm_dist.pipelines.train import run

    cfg, _ = first_run
    before = _mlflow_runs(cfg)
    with pytest.raises(RayStarted):
        run(cfg, force={"shard"}, progress=lambda _: None)  # the shard step's Ray tasks
    assert sorted(_mlflow_runs(cfg)) == sorted(before)  # the trap is before the MLflow run


def test_ray_started_by_a_step_tags_the_pipeline_run(first_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that starts Ray after the run guessed that none would (steps.ensure_ray) prints the cluster line and
    gives the pipeline's open run the cluster tags that a run starting Ray ahead gets; a second step starts none."""
    import mlflow
    from lstm_dist.pipelines import steps

    cfg, _ = first_run
    started: list = []
    monkeypatch.setattr(steps, "ray_started", lambda: bool(started))
    monkeypatch.setattr(steps, "init_ray", started.append)  # ray_local is this module's Ray: nothing to start
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(cfg.tracking_uri())
    lines: list[str] = []
    try:
        with mlflow.start_run(
            experiment_id=mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id
        ) as run:
            steps.ensure_ray(cfg, lines.append)
            steps.ensure_ray(cfg, lines.append)
    finally:
        mlflow.set_tracking_uri(previous)
    tags = mlflow.MlflowClient(cfg.tracking_uri()).get_run(run.info.run_id).data.tags
    assert started == [cfg] and lines == [f"[ray] {tags['ray.cluster']}"], (started, lines, tags)
    assert tags["ray.num_nodes"] == "1" and float(tags["ray.num_cpus"]) >= 1


def test_a_model_gone_from_the_tracking_store_is_registered_again_without_ray(first_run, no_ray, tmp_path) -> None:
    """The register step's still_valid check is asked ahead as well: a store that does not hold the version
    (a wiped one, or another one) means registering again. That is the only step left, and it runs in this
    process: the trap on starting Ray stays shut."""
    import mlflow
    from lstm_dist.pipelines.train import run

    cfg, first = first_run
    other = cfg.model_copy(deep=True)
    other.tracking.uri = f"sqlite:///{tmp_path / 'other.db'}"
    before = _mlflow_runs(cfg)
    again, out = _printed(run, other)
    for step in ("ingest", "shard", "train", "evaluate"):
        assert f"[{step}] cached" in out, out
    assert "[ray] not started: no step left to run uses it" in out and "[register] done" in out, out
    assert again.metrics == first.metrics and again.run_id != first.run_id  # a new MLflow run, in the other store
    client = mlflow.MlflowClient(tracking_uri=other.tracking_uri(), registry_uri=other.tracking_uri())
    assert [str(v.version) for v in client.search_model_versions(f"name='{cfg.tracking.model_name}'")] == ["1"]
    assert sorted(_mlflow_runs(cfg)) == sorted(before)  # nothing new in the first store


def test_the_cli_reruns_a_cached_pipeline_with_a_dead_ray_address(first_run) -> None:
    cfg, first = first_run
    before = _mlflow_runs(cfg)
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lstm_dist.cli", "run", str(DEBUG), f"workflow.work_dir={cfg.workflow.work_dir}",
         "train.num_workers=1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every step cached" in proc.stdout and f"models:/lstm_debug/{first.version} " in proc.stdout
    assert sorted(_mlflow_runs(cfg)) == sorted(before)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter whose Ray address is dead: joining Ray would fail."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "lstm_dist.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_predict_on_a_small_input_runs_in_this_process(first_run, tmp_path: Path) -> None:
    import pandas as pd

    import lstm_dist
    from lstm_dist.predict import read_metadata

    cfg, first = first_run
    [history] = (Path(cfg.workflow.work_dir) / "sample").glob("*.parquet")
    out = tmp_path / "fc.parquet"
    model = f"models:/{cfg.tracking.model_name}@champion"
    proc = _cli("predict", "--model", model, "--input", str(history), "--output", str(out),
                "--tracking-uri", cfg.tracking_uri())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "in this process" in proc.stdout
    expected = lstm_dist.forecast(model, history, tracking_uri=cfg.tracking_uri())
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected, check_dtype=False)
    meta = read_metadata(str(out))
    assert (meta["model_version"], meta["input"], meta["num_series"]) == (first.version, str(history), "4")


def test_predict_checks_the_model_before_ray(first_run, tmp_path: Path) -> None:
    cfg, _ = first_run
    [history] = (Path(cfg.workflow.work_dir) / "sample").glob("*.parquet")
    proc = _cli("predict", "--model", "models:/nothing@champion", "--input", str(history), "--ray",
                "--output", str(tmp_path / "fc.parquet"), "--tracking-uri", cfg.tracking_uri())  # fmt: skip
    assert proc.returncode == 1 and "not found in the registry" in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "fc.parquet").exists()


def test_a_forced_train_step_on_cached_shards_runs_without_ray(first_run, no_ray) -> None:
    """train.backend=local and an evaluate step that scores in this process: retraining on cached shards (or
    after a model change) starts no Ray. Its steps replace the first run's: the retrain test comes after it."""
    from lstm_dist.pipelines.train import run

    cfg, first = first_run
    again, out = _printed(run, cfg, force={"train"})
    assert "[ray] not started: no step left to run uses it" in out, out
    assert "[shard] cached" in out and "[train] done" in out and "[evaluate] done" in out, out
    assert again.run_id != first.run_id and again.model_uri  # a new MLflow run, with the model registered


def test_a_retrain_of_the_same_data_with_a_forced_train_step_starts_no_ray(first_run, no_ray) -> None:
    """The retrain pipeline starts Ray when a step uses it, not ahead: with the data unchanged and the train step
    forced (a model change), its steps left run in this process. Last in this module (it trains again)."""
    from lstm_dist.pipelines.retrain import run

    cfg, first = first_run
    summary, out = _printed(run, cfg, force={"train"})
    assert "[ray] not started yet: the first step that uses it starts it" in out, out
    assert "[ingest] cached" in out and "[shard] cached" in out and "[train] done" in out, out
    assert summary.run_id and summary.challenger_version and summary.champion_version == first.version
