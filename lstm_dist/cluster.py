"""The Ray door: the only `ray.init`, the cluster's resources, its one-line summary and its MLflow tags.

Called by the CLI, the pipelines and the tests only; importing lstm_dist never starts Ray.

A local Ray (no `workflow.ray_address`, no `$RAY_ADDRESS`) is started for one user on one machine:
every Ray process binds to 127.0.0.1 (GCS, raylet, object manager, workers, dashboard and its agents),
token authentication stays on, and Ray's own log lines go to `<work_dir>/logs/ray.log` instead of the
terminal, which keeps the pipeline's lines (and the workers' epoch lines, forwarded by `log_to_driver`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lstm_dist.config import PipelineConfig, terminal_log_level
from lstm_dist.ray_compat import local_gpu_count, loopback_node, quiet_local_ray_worker

RAY_LOG_FILE = "logs/ray.log"  # under the work dir: the driver's Ray, Train and Tune log lines

# Set for every Ray this process starts or joins (setdefault: a value the user exported wins).
_DRIVER_ENV = {
    # Workers import the package from the driver's environment; keep their logs readable.
    "RAY_DEDUP_LOGS": "1",
    # Ray Train patches print() into its logger, which echoes every worker line twice on the driver.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_TRAIN_V2_ENABLED": "1",
}

# Set only before starting a local Ray.
_LOCAL_ENV = {
    # Ray Train's watcher of node preemption (spot instances) means nothing on one machine; each fit's
    # watcher also logs a core_worker ERROR about its constructor arguments (ray-project/ray#53727).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}

# The Train controller polls its workers every 2 s by default, so a fit waits up to 2 s to see that training
# ended (and again while the worker group stops): 4.9 s of teardown per fit on a 2-core machine, 0.9 s at
# 0.2 s (benchmarks/RESULTS.md); a poll is one small task per worker. Set per fit (`quick_train_poll`), not for
# the whole Ray: with it, Tune trials stopped by ASHA left their workers' placement groups reserved
# (tests/test_tracking_server.py hung waiting for CPUs), so trials keep Ray's default.
_TRAIN_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
_started_local = False  # whether this process's Ray is a local one this project set up


def init_ray(cfg: PipelineConfig | None = None) -> dict[str, float]:
    """Start or join Ray once per process; returns the cluster's resources.

    Joins `cfg.workflow.ray_address` or `$RAY_ADDRESS` when set; otherwise starts a local Ray bound
    to 127.0.0.1 with the machine's CPU count (or `workflow.num_cpus`)."""
    import ray

    if ray.is_initialized():
        return resources()
    address = cluster_address(cfg)
    set_ray_env(local=not address)
    _log_ray_to_file(cfg)
    if address:
        check_ray_address(address)
        ray.init(address=address, log_to_driver=True)
        return resources()
    loopback_node()  # every Ray server on 127.0.0.1, not on all interfaces
    # No runtime env without Ray Train: with one, Ray starts no worker ahead of the first task (the ingest task
    # then waits 1.1 s longer for its worker on a 2-core machine, benchmarks/RESULTS.md).
    runtime_env, dashboard = {}, {"include_dashboard": False}
    if uses_ray_train(cfg):
        # Each worker process quiets Ray Train's warnings that mean nothing on one machine.
        runtime_env["worker_process_setup_hook"] = (
            f"{quiet_local_ray_worker.__module__}.{quiet_local_ray_worker.__name__}"
        )
        # The dashboard serves the State API, which Ray Train's placement-group cleaner polls once a
        # second; without it every poll logs "Failed to query Ray Train Controller actor state".
        port = _free_port()
        dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
        # The cleaner finds the State API by looking for a running Ray on the machine, and fails when it
        # finds several (another user's, another run's): tell every process of this job where it is.
        runtime_env["env_vars"] = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(
        num_cpus=local_cpus(cfg),
        **dashboard,
        runtime_env=runtime_env or None,
        log_to_driver=True,  # the workers' epoch lines
    )
    return resources()


def cluster_address(cfg: PipelineConfig | None) -> str | None:
    """The Ray cluster a run of `cfg` joins (`workflow.ray_address`, else `$RAY_ADDRESS`); None: it starts a local
    Ray on this machine, which has this machine's GPUs and no more."""
    return (cfg.workflow.ray_address if cfg else None) or os.environ.get("RAY_ADDRESS") or None


def uses_ray_train(cfg: PipelineConfig | None) -> bool:
    """Whether a run of `cfg` may start Ray Train (unknown without a config): only then does a local Ray start
    its dashboard's modules (Ray Train's State API), about ten more processes and 2.5 s more start-up on a
    2-core machine, which nothing else here needs. Ray's API server starts either way."""
    if cfg is None or train_backend(cfg) == "ray":
        return True
    return cfg.tune.enabled and cfg.tune.workers_per_trial > 1  # tune.in_process_trials is false


def train_backend(cfg: PipelineConfig) -> str:
    """`train.backend` as a run of `cfg` uses it, `ray` or `local`. `auto` is `ray` (DDP over
    `train.num_workers`) when the run joins a Ray cluster or its local Ray has two GPUs or more, and `local`
    otherwise: one worker in the driver's process, with the CPUs of all `train.num_workers`
    (`local_train_config`). On one machine's CPUs, DDP over processes does the same work per CPU-second as one
    process (benchmarks/RESULTS.md, Training) but pays Ray Train's start-up, 15-20 s a fit on 2 cores."""
    if cfg.train.backend != "auto":
        return cfg.train.backend
    if cluster_address(cfg):
        return "ray"
    if cfg.train.use_gpu == "no":
        return "local"
    return "ray" if ray_gpus() >= 2 else "local"


def local_train_config(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg` as `train.backend=local` trains it: one worker holding the CPUs of all `train.num_workers` (threads),
    so a config written for DDP keeps its CPU budget, its global batch and so its optimizer steps."""
    if cfg.train.backend == "local":
        return cfg
    local = cfg.model_copy(deep=True)
    local.train.cpus_per_worker = cfg.train.num_workers * cfg.train.cpus_per_worker
    local.train.num_workers = 1
    local.train.backend = "local"
    return local


def ray_started() -> bool:
    """Whether this process has started or joined Ray."""
    import ray

    return ray.is_initialized()


def stop_ray() -> None:
    """Shut down this process's Ray, if it started or joined one, as the command ends. Ray's own exit hook
    first sleeps 0.5 s so that the workers' last log lines reach the terminal; a finished command has none left
    to wait for. Importing this never imports Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def set_ray_env(*, local: bool) -> None:
    """The environment this project gives a Ray it starts (`local`) or joins, set before `ray.init`
    (setdefault: a value the user exported wins). Tests that start their own Ray call it too."""
    global _started_local
    _started_local = local
    for key, value in (_DRIVER_ENV | _LOCAL_ENV if local else _DRIVER_ENV).items():
        os.environ.setdefault(key, value)
    if not sys.stdout.isatty() or not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour codes in a file or a pipe


@contextmanager
def quick_train_poll() -> Iterator[None]:
    """Around one Ray Train fit on a local Ray: its controller polls the workers every 0.2 s (Ray Train
    passes the driver's value to the controller it starts). A value the user exported wins."""
    key, value = _TRAIN_POLL
    if not _started_local or key in os.environ:
        yield
        return
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _free_port() -> int:
    """A port the OS says is free on 127.0.0.1 now (Ray binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_cpus(cfg: PipelineConfig | None) -> int:
    """Logical CPUs for a local Ray: `workflow.num_cpus`, else the CPUs this process may run on.

    Raised to what one training run needs (the Train controller holds none, each worker
    `train.cpus_per_worker`), so a config asking for more workers than cores oversubscribes them
    rather than waiting forever for a free CPU."""
    if cfg is not None and cfg.workflow.num_cpus:
        return cfg.workflow.num_cpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cfg is None:
        return cores
    return max(cores, math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker))


def resources() -> dict[str, float]:
    """The connected cluster's total resources ({"CPU": 4.0, "GPU": 1.0, ...}); {} without Ray started."""
    import ray

    return ray.cluster_resources() if ray.is_initialized() else {}


def ray_gpus() -> float:
    """GPUs of the Ray this process started or joined; before that, those a local Ray would find here."""
    return resources().get("GPU", 0) if ray_started() else local_gpu_count()


def node_cpus(cap: int) -> int:
    """CPUs of the connected cluster's largest node, at most `cap` (at least 1): how many a task that wants
    a whole node's cores can ask for and still be placed."""
    import ray

    cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return max(1, min(cap, int(max(cpus, default=1))))


def ray_tags() -> dict[str, str]:
    """Size of the connected Ray cluster and its GPU type, as MLflow tags ({} without Ray started)."""
    try:
        import ray
    except ImportError:
        return {}
    if not ray.is_initialized():
        return {}
    res = resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpu_types = sorted(
        {k.split(":", 1)[1] for n in nodes for k in n.get("Resources", {}) if k.startswith("accelerator_type:")}
    )
    return {
        "ray.num_nodes": str(len(nodes)),
        "ray.num_cpus": f"{res.get('CPU', 0):g}",
        "ray.num_gpus": f"{res.get('GPU', 0):g}",
        "ray.gpu_type": ",".join(gpu_types) or ("unknown" if res.get("GPU", 0) else "none"),
    }


def check_ray_address(address: str, *, timeout: float = 3.0) -> None:
    """Refuse a Ray address that nothing answers within `timeout` seconds (ray.init would retry for minutes).

    A TCP connect to the GCS port (or the Ray Client port of a ray:// address) is enough to tell a dead or
    mistyped address from a live one; "auto" and "local" are Ray's own and left to it."""
    from lstm_dist.workflow import WorkflowError

    if address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.split("/")[0].rpartition(":")
    if not host or not port.isdigit():
        raise WorkflowError(
            f"workflow.ray_address '{address}' is not host:port (e.g. 10.0.0.5:6379, or ray://host:10001); "
            "fix it, or leave it empty (and RAY_ADDRESS unset) for a local Ray"
        )
    failure = _no_answer(host.strip("[]"), int(port), timeout=timeout)
    if failure is not None:
        raise WorkflowError(
            f"workflow.ray_address '{address}': nothing answers at {host}:{port} within {timeout:.0f}s "
            f"({failure.strerror or failure}); start the cluster (ray start --head) or leave workflow.ray_address "
            "empty (and RAY_ADDRESS unset) for a local Ray"
        ) from failure


def _no_answer(host: str, port: int, *, timeout: float) -> OSError | None:
    """None once a TCP connect to host:port succeeds; the last error if none does within `timeout` seconds
    (a cluster that is still starting refuses for a moment, so a refusal is asked again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.2, deadline - time.monotonic())).close()
            return None
        except OSError as exc:
            if time.monotonic() >= deadline:
                return exc
            time.sleep(0.2)


def cluster_summary(tags: dict[str, str] | None = None) -> str:
    """One line for the terminal: '1 node(s), 2 CPU, 0 GPU' (from `ray_tags()`, asked here unless given)."""
    tags = tags or ray_tags()
    return f"{tags['ray.num_nodes']} node(s), {tags['ray.num_cpus']} CPU, {tags['ray.num_gpus']} GPU"


class _NoColour(logging.Filter):
    """Ray colours some of its own messages (the dashboard URL); a file gets them without escape codes.
    (A filter, not a formatter: ray.init replaces the formatters of the handlers on its logger.)"""

    _ansi = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._ansi.sub("", record.getMessage()), None
        return True


def _log_ray_to_file(cfg: PipelineConfig | None) -> None:
    """Ray's driver-side logger (and Train's, Tune's under it): INFO and up to `<work_dir>/logs/ray.log`,
    only errors to the terminal (INFO with `lstm-dist -v`, DEBUG with `-vv`). Ray's processes keep their own logs in its session directory."""
    logger = logging.getLogger("ray")
    for handler in list(logger.handlers):  # Ray's own: everything from INFO to the terminal
        logger.removeHandler(handler)
    logger.propagate = False
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(terminal_log_level())  # -v / -vv
    logger.addHandler(terminal)
    work_dir = cfg.workflow.work_dir if cfg else None
    if work_dir and "://" not in work_dir:
        path = Path(work_dir, RAY_LOG_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(path)
        file.addFilter(_NoColour())
        logger.addHandler(file)
