"""Connecting to Ray: a local cluster by default, or the one named by the config / RAY_ADDRESS.

Called by the CLI, the pipelines and the tests only; importing lstm_dist never starts Ray.
"""

from __future__ import annotations

import os

from lstm_dist.config import PipelineConfig


def init_ray(cfg: PipelineConfig) -> dict[str, float]:
    """Start or join Ray once per process; returns the cluster's resources."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.workflow.ray_address or os.environ.get("RAY_ADDRESS")
    # Workers import the package from the driver's environment; keep their logs readable.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Train patches print() into its logger, which echoes every worker line twice on the driver.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if address:
        check_ray_address(address)
        ray.init(address=address, log_to_driver=True)
    else:
        # Logical CPUs, not cores: the Train controller, each worker and the ingest tasks each hold one,
        # so on a 2-core laptop 2 workers + controller would otherwise wait forever for a free CPU.
        wanted = cfg.workflow.num_cpus or max(os.cpu_count() or 1, cfg.train.num_workers + 2, 4)
        ray.init(num_cpus=wanted, include_dashboard=False, log_to_driver=True)
    return ray.cluster_resources()


def check_ray_address(address: str, *, timeout: float = 3.0) -> None:
    """Refuse a Ray address that nothing answers within `timeout` seconds (ray.init would retry for minutes).

    A TCP connect to the GCS port (or the Ray Client port of a ray:// address) is enough to tell a dead or
    mistyped address from a live one; "auto" and "local" are Ray's own and left to it."""
    import socket

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
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise WorkflowError(
            f"workflow.ray_address '{address}': nothing answers at {host}:{port} within {timeout:.0f}s "
            f"({exc.strerror or exc}); start the cluster (ray start --head) or leave workflow.ray_address empty "
            "(and RAY_ADDRESS unset) for a local Ray"
        ) from exc


def cluster_summary() -> str:
    import ray

    res = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {res.get('CPU', 0):.0f} CPU, {res.get('GPU', 0):.0f} GPU"
