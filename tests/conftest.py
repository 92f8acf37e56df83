"""Shared fixtures. One local Ray per test session: starting Ray costs seconds, tests share it."""

from __future__ import annotations

import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (more than the 2 cores, so a controller and 2 workers fit)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    # A short temp dir: Ray's socket paths must stay under the OS limit of ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
