"""The only uses of Ray's internals (`ray._private`, `ray.*._internal`), each with why no public API does it (Ray 2.60).

Each degrades to doing nothing on a Ray version where the internal is gone, so an upgrade loses a
safeguard or a nicety, never a run. Exercised by tests/test_local_ray.py (loopback), tests/test_train_ray.py
(report logs) and tests/test_tracking_server.py (a tuned run, whose trials' placement groups are freed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any


def loopback_node() -> None:
    """Make the next local Ray this process starts take 127.0.0.1 as its node address, so that its GCS,
    raylet, object manager, workers and agents listen on loopback only.

    Why: on Linux, ray.init replaces `_node_ip_address="127.0.0.1"` with the machine's routable address.
    The one switch that keeps loopback is the single-machine mode Ray uses on macOS and Windows,
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`; Ray reads it once, when `ray` is imported, which in this process
    already happened. So the variable is set for the processes Ray starts, and the constant that this
    process's `ray` read from it is set too. A value the user exported wins."""
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") != "0":
        return
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    ray_constants.ENABLE_RAY_CLUSTER = False


def local_gpu_count() -> int:
    """The GPUs a local Ray started by this process would have: NVIDIA ones seen by NVML (or another vendor's),
    at most as many as CUDA_VISIBLE_DEVICES lists. 0 when none, or when the detection fails.

    Why: `train.backend=auto` decides before `ray.init` whether the run will use Ray Train (which needs the
    dashboard's State API, started only then), and no public API says what Ray would detect."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        count = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
    except Exception:  # noqa: BLE001 - another Ray version, or no driver: count none
        return 0
    return count if visible is None else min(count, len(visible))


def quiet_train_report_logs() -> None:
    """Ray Train 2.60 logs every `ray.train.report` with all its metrics at INFO, in each worker, under a
    logger named by its file path; `RunConfig(logging_config=...)` does not reach that logger, and our
    own epoch line says what matters. Call it in the worker, before the first report."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: leave its logging alone
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


# Ray Train 2.60's controller asks Ray Data's autoscaling coordinator (an actor it creates) for its workers'
# resources and waits 5 s for the answer; on a loaded machine the first fit's coordinator is not up by then and
# the controller logs a warning with a full traceback, which the driver prints. One machine has no autoscaler.
_AUTOSCALING_REQUEST_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"


def quiet_local_ray_worker() -> None:
    """Run by every worker process of a local Ray this project starts (`cluster.init_ray` passes it as the
    runtime env's `worker_process_setup_hook`), before the process runs anything: the Train controller's
    "Failed to send resource request" warning (and its traceback) is dropped; errors still show.

    Why: no public setting turns the controller's autoscaling requests off, and the logger is the one thing
    that reaches into the controller's process. A filter, not a level: the controller then configures its
    `ray.train` logger with `logging.config.dictConfig`, which resets the level of every logger under it to
    NOTSET (and keeps their filters). Naming the logger needs no import of Ray Train."""
    logger = logging.getLogger(_AUTOSCALING_REQUEST_LOGGER)
    logger.setLevel(logging.ERROR)
    logger.addFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def placement_group_callbacks(record: Callable[[Any], None]) -> list:
    """[A Train run callback] that calls `record(placement_group)` each time the run's worker group starts.

    Why: a Tune trial's Train controller is killed with the trial (always when ASHA stops it) before it
    removes the placement group of its workers, which then stays reserved for the whole job (Ray 2.60);
    tune.py removes the recorded groups itself when the trial ends. Ray's public `UserCallback` sees
    reports and errors, not worker groups, so this subclasses the internal `WorkerGroupCallback` and
    reads the group from the worker group's internal state. [] on a Ray without them."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:
        return []

    class PlacementGroupRecorder(WorkerGroupCallback):
        def after_worker_group_start(self, worker_group) -> None:
            state = getattr(worker_group, "_worker_group_state", None)
            handle = getattr(state, "placement_group_handle", None)
            group = getattr(handle, "placement_group", None)
            if group is not None:
                record(group)

    return [PlacementGroupRecorder()]
