"""The MLflow runs door: the pipeline's parent run, nested step and trial runs, params, metrics, artifacts, datasets.

Other modules get a `Tracker` (or a `NullTracker` that records nothing) and never import mlflow.
A pipeline execution is one parent run; each workflow step is a nested run under it, and each
tune trial a nested run under the tune step. Registered models live in `registry.py`, the pyfunc
model in `serving.py`, promotion rules in `promotion.py`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lstm_dist.config import PipelineConfig, dump_yaml, is_secret_key, redact_uri, terminal_log_level, verbosity
from lstm_dist.version import __version__

SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "mysql://", "databricks", "file:")
# MLflow 3's UI opens an experiment on the page of its kind; without the tag it guesses (often GenAI).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Per-epoch metrics that mean something only on a GPU or with fp16, with their value otherwise: a history
# in which they never leave it (a CPU run) does not log them, so the UI shows no flat line of zeros.
DEVICE_ONLY = {"peak_gpu_mem_mb": 0.0, "loss_scale": 1.0}
MLFLOW_LOG_FILE = "logs/mlflow.log"  # under the work dir: MLflow's and alembic's own log lines
# The UI groups charts by the part of a name before '/': losses and scores by split, the optimiser's figures
# with training, throughput and memory beside MLflow's own system/ metrics. Other names stay as they are.
PREFIX_GROUPS = (("best_val_", "val/best_"), ("train_", "train/"), ("val_", "val/"), ("test_", "test/"))
NAME_GROUPS = {
    **dict.fromkeys(("lr", "grad_norm", "loss_scale", "skipped_steps"), "train/"),
    **dict.fromkeys(("epoch_time_s", "samples_per_s", "samples_per_cpu_s", "peak_gpu_mem_mb"), "system/"),
}


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or used as configured."""


class NullTracker:
    """A tracker that records nothing, for non-zero ranks and code paths that do not care: `Tracker`'s methods,
    each doing nothing (it stands in for a Tracker; it is not one, and a Tracker is not one of these)."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], *, step: int | None = None) -> None:
        pass

    def log_history(self, history: pd.DataFrame, *, step_col: str = "epoch", prefix: str = "") -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, *, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def log_table(self, table: pd.DataFrame, name: str) -> None:
        pass

    def log_datasets(self, shard_dir: str | Path, *, splits: dict[str, str]) -> None:
        pass

    @property
    def active_step(self) -> NullTracker:
        return self

    @contextmanager
    def system_metrics(self, *, interval_s: float = 5.0) -> Iterator[None]:
        yield

    @contextmanager
    def step(self, name: str, **tags: Any) -> Iterator[NullTracker]:
        yield self


class Tracker:
    """One MLflow run (the pipeline's parent run, or a nested step run) in a given store."""

    def __init__(self, *, uri: str, run_id: str, experiment_id: str) -> None:
        import mlflow

        self.uri, self.run_id, self.experiment_id = uri, run_id, experiment_id
        self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        self._open_steps: list[Tracker] = []

    def log_metrics(self, metrics: dict[str, float], *, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(metric_name(k), float(v), now, step or 0) for k, v in metrics.items() if _finite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_history(self, history: pd.DataFrame, *, step_col: str = "epoch", prefix: str = "") -> None:
        """Per-epoch metrics in batched calls (per-value calls are an order of magnitude slower), with the
        epoch as step; a `timestamp` column (unix seconds), when present, dates each point."""
        from mlflow.entities import Metric

        idle = [c for c, v in DEVICE_ONLY.items() if c in history and (history[c].fillna(v) == v).all()]
        history = history.drop(columns=idle)
        now = _now_ms()
        batch = []
        for row in history.to_dict("records"):
            step = int(row[step_col])
            stamp = int(float(row["timestamp"]) * 1000) if _finite(row.get("timestamp")) else now
            batch += [
                Metric(metric_name(prefix + k), float(v), stamp, step)
                for k, v in row.items()
                if k not in (step_col, "timestamp") and _finite(v)
            ]
        for start in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        """Params, without keys that name secrets and with credentials in URIs redacted."""
        from mlflow.entities import Param

        items = [Param(k, redact_uri(_param_value(v))) for k, v in params.items() if not is_secret_key(k)]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, *, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_table(self, table: pd.DataFrame, name: str) -> None:
        """A table as `<name>.csv` and `<name>.json` (records) artifacts."""
        self.log_text(table.to_csv(index=False), f"{name}.csv")
        self.log_text(table.to_json(orient="records", indent=1, date_format="iso"), f"{name}.json")

    def log_datasets(self, shard_dir: str | Path, *, splits: dict[str, str]) -> None:
        """Dataset lineage: each split of the shards as an MLflow dataset input ({split: context})."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = []
        for split, context in splits.items():
            dataset, tags = shard_dataset(shard_dir, split=split)
            tags = [InputTag(k, str(v)) for k, v in tags.items()] + [InputTag(MLFLOW_DATASET_CONTEXT, context)]
            inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags))
        self.client.log_inputs(self.run_id, datasets=inputs)

    @property
    def active_step(self) -> Tracker:
        """The innermost step run open under this tracker (itself when none): where a step logs its details."""
        return self._open_steps[-1].active_step if self._open_steps else self

    @contextmanager
    def system_metrics(self, *, interval_s: float = 5.0) -> Iterator[None]:
        """MLflow system metrics (CPU, memory, disk, network; GPU with pynvml) on this run while the body runs.

        They are sampled on the driver's node: on a local Ray that is the machine the workers run on."""
        try:
            import psutil  # noqa: F401  (mlflow's monitors need it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as exc:
            warnings.warn(f"no MLflow system metrics: {exc} (pip install psutil)", stacklevel=2)
            yield
            return
        import logging

        # Its start/stop INFO lines would interleave with the pipeline's progress lines.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            _publish_last_sample(monitor)

    @contextmanager
    def step(self, name: str, **tags: Any) -> Iterator[Tracker]:
        """A nested run for one pipeline step; FAILED if the body raises."""
        child = self.child_run(name, tags={"lstm_dist.step": name, **tags})
        self._open_steps.append(child)
        try:
            yield child
        except BaseException:
            self.client.set_terminated(child.run_id, status="FAILED")
            raise
        finally:
            self._open_steps.pop()
        self.client.set_terminated(child.run_id, status="FINISHED")

    def child_run(self, name: str, *, tags: dict[str, Any], start_time: int | None = None) -> Tracker:
        """A run nested under this one (the caller ends it)."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            start_time=start_time,
            tags={"mlflow.parentRunId": self.run_id, **{k: str(v) for k, v in tags.items()}},
        )
        return Tracker(uri=self.uri, run_id=run.info.run_id, experiment_id=self.experiment_id)

    def finish(self, status: str = "FINISHED") -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        else:
            self.client.set_terminated(self.run_id, status=status)


def step_runs(tracker: NullTracker) -> Callable[[Any], AbstractContextManager[NullTracker]]:
    """The workflow's `on_step` hook: each step a nested run under `tracker`, open while the step runs (the
    step logs into it through `Workflow.step_context`), tagged with its key, inputs (lineage), output,
    timing and outputs once the step committed."""

    @contextmanager
    def on_step(event) -> Iterator[NullTracker]:  # a workflow.StepEvent
        with tracker.step(event.name, **{"lstm_dist.key": ",".join(event.keys)}) as run:
            yield run
            inputs = {k: {"key": r.key, "uri": r.uri} for k, r in event.inputs.items()}
            run.set_tags(
                {
                    "lstm_dist.state": event.state,
                    "lstm_dist.inputs": json.dumps(inputs),
                    "lstm_dist.output": event.output,
                    "lstm_dist.workflow_run": event.workflow_run,
                }
            )
            run.log_metrics({"seconds": event.seconds, "num_items": len(event.results)})
            detail = {str(k): {"key": r.key, "uri": r.uri, "outputs": r.outputs} for k, r in event.results.items()}
            run.log_text(json.dumps(detail, indent=2, default=str), "step.json")

    return on_step


# ---------------------------------------------------------------------------------------------
# The store and the pipeline's parent run


def store_uri(given: str | None, cfg: PipelineConfig | None) -> str | None:
    """The MLflow store a command reads models from: the URI given, else $MLFLOW_TRACKING_URI, else the store of
    `cfg`; None when there is none of the three."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or (cfg.tracking_uri() if cfg else None)


def check_tracking_uri(uri: str) -> None:
    """Fail fast, with the fix, on a tracking URI that cannot work (MLflow itself retries for minutes)."""
    where = f"'{redact_uri(uri)}' (tracking.uri or MLFLOW_TRACKING_URI)"
    if not uri.startswith(SCHEMES):
        raise TrackingError(
            f"the MLflow tracking URI {where} is not one MLflow can use: use sqlite:///path/mlflow.db for a local "
            "store or http://host:port for an `mlflow server`"
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the folder of the sqlite store {where}: {exc}") from exc
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"the folder '{folder}' of the sqlite store {where} is not writable")
    elif uri.startswith("file:"):
        warnings.warn(
            f"the file store {uri} is deprecated in MLflow 3 and has no model registry; use sqlite:///…/mlflow.db",
            stacklevel=2,
        )
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=10) as reply:
                reply.read()
        except urllib.error.HTTPError:
            pass  # it answered: a server (or a proxy in front of one) is there; MLflow will say more
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"cannot reach the MLflow server at {where}: {reason}. Start one with "
                "`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db` "
                "or point tracking.uri at a sqlite:/// store"
            ) from None


def _health_request(uri: str) -> urllib.request.Request:
    """GET <server>/health; credentials in the URI (http://user:pw@host) go in a Basic auth header, as MLflow's
    own client sends them, not in the host name (urllib would try to resolve `user:pw@host`)."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc  # an IPv6 address
    if parts.port is not None:
        netloc += f":{parts.port}"
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    request = urllib.request.Request(url)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    return request


def use_tracking_uri(uri: str) -> None:
    """Point this process's fluent MLflow API at `uri` without exporting MLFLOW_TRACKING_URI.

    mlflow.set_tracking_uri (MLflow 3) also writes the variable into os.environ: every child process started
    afterwards (a Ray job submitted from here, a test's subprocess) and every config resolved later in this
    process would then use this run's store instead of its own default."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def route_mlflow_logs(work_dir: str | None, *, verbose: int | None = None) -> Path | None:
    """MLflow's own log lines (`Creating initial MLflow database tables`, migrations, its warnings) and
    alembic's go to `<work_dir>/logs/mlflow.log` (returned; none for a URI work dir), not the terminal: there
    only errors, INFO and up with `verbose=1`, DEBUG with 2. Imports mlflow first, because its import
    installs the terminal handler that this replaces."""
    import logging

    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM  # sys.stderr as it is when a line is written

    verbose = verbosity() if verbose is None else verbose  # `lstm-dist -v` / `-vv`
    terminal = logging.StreamHandler(MLFLOW_LOGGING_STREAM)
    terminal.setLevel(terminal_log_level(verbose))
    handlers: list[logging.Handler] = [terminal]
    path = Path(work_dir, MLFLOW_LOG_FILE) if work_dir and "://" not in work_dir else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("mlflow", "alembic"):
        logger = logging.getLogger(name)
        for old in logger.handlers:  # a second pipeline in this process: its file replaces the first's
            old.close()
        logger.handlers = list(handlers)
        logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
        logger.propagate = False
    return path


def seed_sqlite_store(uri: str) -> None:
    """A sqlite store that does not exist yet starts as a copy of an empty store made by this MLflow version.

    MLflow builds a new store by running every one of its schema migrations (about 2 s on a 2-core machine,
    for each new work dir); a copy takes milliseconds. The empty store is made once per MLflow version by
    MLflow itself and kept in this machine's cache (`storage.node_cache`), without the Default experiment,
    which MLflow then adds to each copy with that store's own location. Nothing is overwritten: the copy is
    linked into place only where no file is. Any problem with the cache leaves MLflow to build the store."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    try:
        template = _empty_store()
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.tmp-") as tmp:
            copy = Path(tmp, path.name)
            copy.write_bytes(template.read_bytes())
            os.link(copy, path)  # fails, and changes nothing, when a store appeared there meanwhile
    except (OSError, sqlite3.Error):
        return


def _empty_store() -> Path:
    """This MLflow version's empty sqlite store, without the Default experiment: made once, then reused."""
    import mlflow

    from lstm_dist.storage import node_cache

    cached = node_cache() / f"mlflow-{mlflow.__version__}-empty.db"
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".mlflow-empty-") as tmp:
        db = Path(tmp, "empty.db")
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # MLflow's own migrations
        with sqlite3.connect(db) as con:  # its Default experiment points into this temp dir
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        con.close()
        os.replace(db, cached)  # concurrent makers write the same content: the last one wins
    return cached


def warm_store(uri: str) -> None:
    """Make a local sqlite store ready, as `start_pipeline_run` would, and leave MLflow's client for it in
    MLflow's cache of stores (1.6 s on a 2-core machine, most of it importing MLflow's SQL store): `warmup` calls
    it in a background thread while Ray starts. A store behind a server needs nothing here."""
    if not uri.startswith("sqlite:///"):
        return
    import mlflow

    seed_sqlite_store(uri)
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def start_pipeline_run(cfg: PipelineConfig, *, run_name: str, tags: dict[str, Any] | None = None) -> Tracker:
    """Open the pipeline's parent run, creating the experiment (artifacts under work_dir) on first use."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = cfg.tracking_uri()
    check_tracking_uri(uri)
    seed_sqlite_store(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            location = None
            if uri.startswith("sqlite:"):
                work_dir = cfg.workflow.work_dir  # a URI one (s3://...) takes the artifacts too (MLflow needs boto3)
                location = (
                    f"{work_dir.rstrip('/')}/mlartifacts"
                    if "://" in work_dir
                    else Path(work_dir, "mlartifacts").resolve().as_uri()
                )
            experiment_id = client.create_experiment(
                cfg.tracking.experiment, artifact_location=location, tags=EXPERIMENT_KIND
            )
        else:
            experiment_id = experiment.experiment_id
            for key, value in EXPERIMENT_KIND.items():  # experiments created before the tag existed
                if key not in experiment.tags:
                    client.set_experiment_tag(experiment_id, key, value)
    except MlflowException as exc:
        raise TrackingError(
            f"cannot use the MLflow store at '{redact_uri(uri)}' (tracking.uri or MLFLOW_TRACKING_URI): "
            f"{redact_uri(exc.message)}. "
            "Use sqlite:///path/mlflow.db for a local store or http://host:port for an `mlflow server`."
        ) from None
    except Exception as exc:  # connection errors surface as requests/OS errors
        raise TrackingError(
            f"cannot reach the MLflow store at '{redact_uri(uri)}' (tracking.uri or MLFLOW_TRACKING_URI): "
            f"{redact_uri(str(exc))}"
        ) from None
    end_dead_runs(client, cfg.workflow.work_dir)
    # The parent run is the fluent API's active run, so that log_model lands in it.
    use_tracking_uri(uri)
    run = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags={**context_tags(), **{k: str(v) for k, v in (tags or {}).items()}},
    )
    tracker = Tracker(uri=uri, run_id=run.info.run_id, experiment_id=experiment_id)
    tracker.log_params(cfg.flat())
    tracker.log_text(dump_yaml(cfg), "config/resolved.yaml")
    return tracker


def end_dead_runs(client: Any, work_dir: str) -> list[str]:
    """End as KILLED the MLflow runs (and their step runs) of this work dir's pipeline runs whose process died
    on this host: killed by a signal, it could not end them, and they would stay RUNNING for ever.
    Returns the ids of the runs ended."""
    from lstm_dist.workflow import INTERRUPTED, read_runs

    ended = []
    for record in read_runs(work_dir, limit=20):
        run_id = record.get("mlflow_run_id")
        if record["status"] != INTERRUPTED or not run_id:
            continue
        try:
            info = client.get_run(run_id).info
        except Exception:  # a run of another store (tracking.uri changed since), or deleted
            continue
        if info.status != "RUNNING":
            continue
        end_ms = int(record["ended_at"] * 1000)
        steps = client.search_runs(
            [info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
        )
        for step in steps:
            client.set_terminated(step.info.run_id, status="KILLED", end_time=end_ms)
        client.set_terminated(run_id, status="KILLED", end_time=end_ms)
        ended.append(run_id)
    return ended


def context_tags() -> dict[str, str]:
    """Package version, git commit (when the package runs from a checkout) and the Ray cluster, if connected."""
    tags = {"lstm_dist.version": __version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        if commit.returncode == 0:
            tags["git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            )
            tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    from lstm_dist.cluster import ray_tags

    tags.update(ray_tags())
    return tags


def tag_active_run(tags: dict[str, Any]) -> None:
    """`tags` on the fluent API's active run (the pipeline's parent run), when one is open."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def shard_fingerprint(shard_dir: str | Path) -> str:
    """A short hash of the shards' content (their checksums) and of the data config that made them."""
    from lstm_dist.data.manifest import Manifest

    m = Manifest.load(shard_dir)
    blob = json.dumps({"shards": [s.sha256 for s in m.shards], "data": m.data_config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_dataset(shard_dir: str | Path, *, split: str):
    """(MLflow dataset, input tags) for one split of the shards: source, digest, feature schema, window count."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, DataType, Schema

    from lstm_dist.data.manifest import Manifest

    m = Manifest.load(shard_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local path is a local path
        source = resolve_dataset_source(str(shard_dir))
    schema = Schema([ColSpec(DataType.float, name) for name in m.x_features])
    digest = hashlib.sha256(f"{shard_fingerprint(shard_dir)}:{split}".encode()).hexdigest()[:16]
    tags = {
        "split": split,
        "windows": m.totals.windows.get(split, 0),
        "series": m.num_series,
        "lookback": m.lookback,
        "horizon": m.horizon,
    }
    return MetaDataset(source, name=f"shards-{split}", digest=digest, schema=schema), tags


def log_trials(tune_run: Tracker, trials: pd.DataFrame, *, best_trial: str) -> list[str]:
    """One nested run per tune trial under the tune step's run: sampled values, per-epoch metrics, outcome."""
    run_ids = []
    for _, row in trials.iterrows():
        history = row.get("history")
        history = pd.DataFrame(history) if isinstance(history, dict) else pd.DataFrame()
        started = int(float(history["timestamp"].min()) * 1000) if "timestamp" in history and len(history) else None
        run = tune_run.child_run(
            f"trial-{row['trial_id']}",
            tags={
                "lstm_dist.step": "tune-trial",
                "tune.trial_id": row["trial_id"],
                "tune.stopped": row["stopped"],
                "tune.best": str(row["trial_id"] == best_trial).lower(),
            },
            start_time=started,
        )
        run.log_params({k: v for k, v in row.items() if "." in str(k)})
        if len(history):
            run.log_history(history)
        run.log_metrics(
            {"best_val_loss": row["best_val_loss"], "epochs_run": row["epochs"], "best_epoch": row["best_epoch"]}
        )
        if row.get("error"):
            run.set_tags({"tune.error": str(row["error"])[:500]})
        ended = int(float(history["timestamp"].max()) * 1000) if "timestamp" in history and len(history) else None
        tune_run.client.set_terminated(
            run.run_id, status="FAILED" if row["stopped"] == "error" else "FINISHED", end_time=ended
        )
        run_ids.append(run.run_id)
    return run_ids


def ui_command(uri: str) -> str:
    """The one command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact_uri(uri)}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   (or: lstm-dist ui <config>)"


def metric_name(key: str) -> str:
    """The name a metric is logged under: `val_loss` -> `val/loss`, `test_model_mae` -> `test/model_mae`,
    `lr` -> `train/lr`, `epoch_time_s` -> `system/epoch_time_s` (see PREFIX_GROUPS, NAME_GROUPS)."""
    if key in NAME_GROUPS:
        return NAME_GROUPS[key] + key
    for prefix, group in PREFIX_GROUPS:
        if key.startswith(prefix):
            return group + key.removeprefix(prefix)
    return key


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _publish_last_sample(monitor) -> None:
    """One more sample as the body ends, with what was sampled since the last one: a body shorter than the
    sampling interval (a small local fit) would otherwise log no system metrics at all."""
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as exc:  # the run's metrics matter more than its last system sample
        warnings.warn(f"no final MLflow system metrics sample: {exc}", stacklevel=2)
