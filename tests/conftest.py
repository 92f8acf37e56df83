"""Shared fixtures. One local Ray per test session: starting Ray costs seconds, tests share it.
An S3 API (moto's server) on loopback for the object-store work dir tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile

import pytest

import lstm_dist  # noqa: F401 - first: its telemetry defaults hold before any test module imports MLflow or Ray

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(autouse=True)
def _cli_environment_stays_put(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI writes LSTM_DIST_VERBOSE (`-v`) and RAY_IGNORE_UNHANDLED_ERRORS (after an error line) into
    os.environ, for its own Ray workers. Run in-process (CliRunner), that would leak into every later test and
    its subprocesses: each test starts with both unset and leaves them as they were."""
    for key in ("LSTM_DIST_VERBOSE", "RAY_IGNORE_UNHANDLED_ERRORS"):
        monkeypatch.setenv(key, "")  # recorded first, so the teardown restores what was there before
        monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (more than the 2 cores, so a controller and 2 workers fit)."""
    import ray

    from lstm_dist.cluster import set_ray_env

    if ray.is_initialized():
        yield ray
        return
    set_ray_env(local=True)  # as the CLI's local Ray: no preemption watcher; fits poll every 0.2 s
    # A short temp dir: Ray's socket paths must stay under the OS limit of ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on a free loopback port; the endpoint and fake credentials in the environment."""
    import pyarrow.fs as pafs
    from http_wait import free_port, wait_until_up

    pytest.importorskip("moto", reason="moto[server] (the dev extra) serves the S3 API these tests use")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/moto-api/", process=proc, log=log.read_text, timeout=60)
        env = {**AWS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # pyarrow's S3 client honours it
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            fs = pafs.S3FileSystem(
                endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing", secret_key="testing",
                region="us-east-1", allow_bucket_creation=True,
            )  # fmt: skip
            fs.create_dir("lstm-dist")
            yield fs, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# The longest modules, longest first (seconds of a 2-worker run on a 2-core VM, 2026-12-03: 288, 269, 187, 145,
# 111, 100, 67). Started first, they leave the short modules to even out the two workers' ends.
LONGEST_MODULES = (
    "test_e2e.py",
    "test_jobs.py",
    "test_train_ray.py",
    "test_multinode_objectstore.py",
    "test_tracking_server.py",
    "test_workflow_resume.py",
    "test_tracking_ui.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest modules run first (`LONGEST_MODULES`, in that order), then the other modules with slow tests,
    then the rest, each group in its usual order. `make test`'s pytest-xdist workers take whole modules in this
    order: the long modules start early, and the quick ones fill the time left at the end instead of leaving
    one worker idle behind a long module."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), item.path not in slow))
