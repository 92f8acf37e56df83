"""ray_cluster.yaml is a real Ray cluster launcher config: Ray's own schema accepts it, and it says what it should."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def validate(config: dict) -> None:
    """What `ray up` does before anything else: fill in the provider's defaults, then check the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_accepts_the_cluster_config(cluster: dict) -> None:
    validate(cluster)


def test_the_schema_check_is_real(cluster: dict) -> None:
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["resources"] = {"GPU": "one"}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["max_wokers"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_head_cpu_and_gpu_workers_setup_and_a_local_dashboard(cluster: dict) -> None:
    nodes = cluster["available_node_types"]
    assert cluster["head_node_type"] in nodes
    assert nodes["gpu_worker"]["resources"]["GPU"] >= 1 and "GPU" not in nodes["cpu_worker"]["resources"]
    # The right torch build per node type, then this package (copied by file_mounts).
    assert any("whl/cpu" in c for c in nodes["cpu_worker"]["worker_setup_commands"])
    assert not any("whl/cpu" in c for c in nodes["gpu_worker"]["worker_setup_commands"])
    for commands in (
        cluster["setup_commands"],
        *(n["worker_setup_commands"] for n in nodes.values() if "worker_setup_commands" in n),
    ):
        assert any("pip install" in c and "lstm_dist" in c for c in commands)
    assert "." in cluster["file_mounts"].values()
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head and "--disable-usage-stats" in head
    assert "gpu" in nodes["gpu_worker"]["docker"]["worker_image"]
