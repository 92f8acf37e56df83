"""Everything that touches MLflow: runs, metrics, artifacts, the pyfunc model, the registry and aliases.

Other modules get a `Tracker` (or a `NullTracker` that does nothing) and never import mlflow.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import lstm_dist
from lstm_dist.config import PipelineConfig, dump_yaml

CHAMPION, CHALLENGER = "champion", "challenger"


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or used as configured."""


class NullTracker:
    """A tracker that records nothing: for non-zero ranks and for code paths that do not care."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], *, step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, *, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    @contextmanager
    def step(self, name: str, **tags: Any) -> Iterator[NullTracker]:
        yield self


class Tracker(NullTracker):
    """One MLflow run (the pipeline's parent run, or a nested step run) in a given store."""

    def __init__(self, *, uri: str, run_id: str, experiment_id: str) -> None:
        import mlflow

        self.uri, self.run_id, self.experiment_id = uri, run_id, experiment_id
        self.client = mlflow.MlflowClient(tracking_uri=uri)

    def log_metrics(self, metrics: dict[str, float], *, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if _finite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_history(self, history: pd.DataFrame, *, step_col: str = "epoch") -> None:
        """Per-epoch metrics in one batched call (per-value calls are an order of magnitude slower)."""
        from mlflow.entities import Metric

        now = _now_ms()
        batch = []
        for row in history.to_dict("records"):
            step = int(row[step_col])
            batch += [Metric(k, float(v), now, step) for k, v in row.items() if k != step_col and _finite(v)]
        for start in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, *, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    @contextmanager
    def step(self, name: str, **tags: Any) -> Iterator[Tracker]:
        """A nested run for one pipeline step; FAILED if the body raises."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": self.run_id, "lstm_dist.step": name, **{k: str(v) for k, v in tags.items()}},
        )
        child = Tracker(uri=self.uri, run_id=run.info.run_id, experiment_id=self.experiment_id)
        try:
            yield child
        except BaseException:
            self.client.set_terminated(child.run_id, status="FAILED")
            raise
        self.client.set_terminated(child.run_id, status="FINISHED")

    def finish(self, status: str = "FINISHED") -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        else:
            self.client.set_terminated(self.run_id, status=status)


def start_pipeline_run(cfg: PipelineConfig, *, run_name: str) -> Tracker:
    """Open the pipeline's parent run, creating the experiment (artifacts under work_dir) on first use."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = cfg.tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            location = None
            if uri.startswith("sqlite:"):
                location = Path(cfg.workflow.work_dir, "mlartifacts").resolve().as_uri()
            experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(
            f"cannot use the MLflow store at '{uri}' (tracking.uri or MLFLOW_TRACKING_URI): {exc.message}. "
            "Use sqlite:///path/mlflow.db for a local store or http://host:port for an `mlflow server`."
        ) from exc
    except Exception as exc:  # connection errors surface as requests/OS errors
        raise TrackingError(
            f"cannot reach the MLflow store at '{uri}' (tracking.uri or MLFLOW_TRACKING_URI): {exc}"
        ) from exc
    # The parent run is the fluent API's active run, so that log_model lands in it.
    mlflow.set_tracking_uri(uri)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=_context_tags())
    tracker = Tracker(uri=uri, run_id=run.info.run_id, experiment_id=experiment_id)
    tracker.log_params(cfg.flat())
    tracker.log_text(dump_yaml(cfg), "config/resolved.yaml")
    return tracker


def _context_tags() -> dict[str, str]:
    tags = {"lstm_dist.version": lstm_dist.__version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        if commit.returncode == 0:
            tags["git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


# ---------------------------------------------------------------------------------------------
# The model artifact and the registry


def log_forecaster(
    tracker: Tracker,
    *,
    checkpoint_dir: Path,
    shard_dir: Path,
    input_example: pd.DataFrame,
    registered_name: str | None,
) -> tuple[str, str | None]:
    """Log the pyfunc forecaster (network + scalers + feature definitions); returns (model URI, version)."""
    import mlflow
    from mlflow.models import infer_signature

    from lstm_dist.serving import ForecastModel
    from lstm_dist.train.checkpoints import MODEL_FILE

    artifacts = {"model": str(checkpoint_dir / MODEL_FILE), "manifest": str(shard_dir / "manifest.json")}
    python_model = ForecastModel()
    python_model.load_artifacts(artifacts)
    output_example = python_model.forecast(input_example)
    signature = infer_signature(input_example, output_example)
    # Logged into the active (pipeline) run, which start_pipeline_run opened with the fluent API.
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=python_model,
        artifacts=artifacts,
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_name,
        pip_requirements=_pip_requirements(),
    )
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, (str(version) if version is not None else None)


def _pip_requirements() -> list[str]:
    import mlflow
    import pyarrow
    import torch

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"pyarrow=={pyarrow.__version__}",
        "pandas",
        "pydantic>=2",
        "pyyaml",
    ]


def assign_alias(
    tracker: Tracker,
    *,
    name: str,
    version: str,
    metric: str,
    score: float,
    margin: float,
) -> str:
    """Give a freshly registered version its alias: `champion` when there is none yet, else `challenger`,
    promoted to `champion` only if it beats the champion's recorded score by the relative `margin`.
    The decision and both scores are written as tags on the version."""
    from mlflow.exceptions import MlflowException

    client = tracker.client
    client.set_model_version_tag(name, version, f"test_{metric}", f"{score:.6g}")
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promotion", "first model: champion")
        return CHAMPION
    client.set_registered_model_alias(name, CHALLENGER, version)
    champ_score = champion.tags.get(f"test_{metric}")
    client.set_model_version_tag(name, version, "champion_version", champion.version)
    if champ_score is None:
        decision = f"kept champion v{champion.version}: it has no recorded test_{metric}"
        alias = CHALLENGER
    elif score < float(champ_score) * (1 - margin):
        client.set_registered_model_alias(name, CHAMPION, version)
        decision = f"promoted: {metric} {score:.4g} < champion v{champion.version} {float(champ_score):.4g}"
        alias = CHAMPION
    else:
        decision = f"kept champion v{champion.version}: {metric} {score:.4g} vs {float(champ_score):.4g}"
        alias = CHALLENGER
    client.set_model_version_tag(name, version, "champion_score", champ_score or "")
    client.set_model_version_tag(name, version, "promotion", decision)
    return alias


def ui_command(uri: str) -> str:
    """The one command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def write_json(obj: Any, name: str) -> Path:
    """A JSON file in a fresh temp dir, for logging as an artifact."""
    path = Path(tempfile.mkdtemp()) / name
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
