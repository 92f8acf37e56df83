"""The only uses of Ray's internals (`ray.*._internal`), each with why no public API does it (Ray 2.60).

Each degrades to doing nothing on a Ray version where the internal is gone, so an upgrade loses a
nicety, never a run; tests/test_tune_space.py and tests/test_train_ray.py exercise both uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


def quiet_train_report_logs() -> None:
    """Ray Train 2.60 logs every `ray.train.report` with all its metrics at INFO, in each worker, under a
    logger named by its file path; `RunConfig(logging_config=...)` does not reach that logger, and our
    own epoch line says what matters. Call it in the worker, before the first report."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: leave its logging alone
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


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
