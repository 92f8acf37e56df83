"""The imports and the MLflow store a pipeline run is about to need, made in a background thread while the
driver waits for Ray to start.

`ray.init` of a local Ray takes about 5 s on a 2-core machine, nearly all of it spent waiting for Ray's own
processes. After it, a small run used to pay one after the other for MLflow's SQL store (1.6 s), the compiler
front end of torch that the first optimizer imports (2.0 s), statsforecast for the evaluate step's baselines and
matplotlib for the report's plots (benchmarks/RESULTS.md, issue 11). Started just before `ray.init`, they overlap
it instead.

Nothing here is required. An import that fails is left for the step that needs it, which imports it again and
reports the error in its place. Python's import locks make a module that both threads import load once; the
pipeline waits for the store (`Warmup.store_ready`) before it opens its MLflow run, so that only one thread
ever creates a store.
"""

from __future__ import annotations

import importlib
import logging
import threading

from lstm_dist.cluster import train_backend
from lstm_dist.config import PipelineConfig

log = logging.getLogger(__name__)


class Warmup:
    """A daemon thread warming up for one run of `cfg`; `start` begins it."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self._store = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lstm_dist-warmup", daemon=True)

    def start(self) -> Warmup:
        self.thread.start()
        return self

    def store_ready(self, timeout: float = 60.0) -> None:
        """Wait until the thread is done with the MLflow store (made or given up), at most `timeout` seconds."""
        self._store.wait(timeout)

    def _run(self) -> None:
        from lstm_dist.tracking import warm_store

        try:
            warm_store(self.cfg.tracking_uri())
        except Exception as exc:  # noqa: BLE001 - start_pipeline_run meets it again and says what to do
            log.debug("warm-up: MLflow store not opened: %s", exc)
        finally:
            self._store.set()
        for name in modules(self.cfg):
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - the step that needs it imports it again and reports it
                log.debug("warm-up: %s not imported: %s", name, exc)


def modules(cfg: PipelineConfig) -> list[str]:
    """What the run's later steps import, in the order they need it."""
    names = ["torch", "lstm_dist.train.trainer"]
    if train_backend(cfg) == "local":
        names.append("torch._dynamo")  # imported by the first optimizer this process builds
    return [*names, "statsforecast.models", "utilsforecast.losses", "lstm_dist.plots"]
