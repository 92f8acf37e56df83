"""The local Ray that lstm-dist starts (cluster.init_ray): loopback only, the machine's CPUs, Ray's logs in a file,
Ray Train's one-machine warnings quiet in its worker processes.

The Ray test starts its own Ray in a subprocess (the session's shared Ray is started differently)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lstm_dist.cluster import local_cpus
from lstm_dist.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf/debug.yaml"

# Started by init_ray, then: every TCP socket that a process of this Ray listens on.
LISTENERS = """
import json, sys, psutil, ray
from lstm_dist.cluster import init_ray
from lstm_dist.config import load_config

init_ray(load_config(sys.argv[1], ["workflow.work_dir=" + sys.argv[2], *sys.argv[3:]]))


class Probe:  # an actor with env vars of its own, as Ray Train starts its controller
    def passed(self):
        import logging, logging.config
        from lstm_dist.ray_compat import _AUTOSCALING_REQUEST_LOGGER

        # What Ray Train's controller then does to its logging (LoggingManager.configure_controller_logger):
        # dictConfig of "ray.train", which resets every logger under it to NOTSET.
        logging.config.dictConfig(
            {"version": 1, "disable_existing_loggers": False, "loggers": {"ray.train": {"level": "DEBUG"}}}
        )
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.levelname)
        logging.getLogger("ray.train").addHandler(Keep())
        log = logging.getLogger(_AUTOSCALING_REQUEST_LOGGER)
        log.warning("Failed to send resource request for train-1")
        log.error("a real error")
        return seen


probe = ray.remote(Probe).options(runtime_env={"env_vars": {"PROBE": "1"}}).remote()
hook_passed = ray.get(probe.passed.remote())  # a worker process too
procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
names = {p.pid: p.name() for p in procs}
commands = {p.pid: " ".join(p.cmdline()[:3]) for p in procs}
found = [
    {"name": names[c.pid], "ip": c.laddr.ip, "port": c.laddr.port, "command": commands[c.pid]}
    for c in psutil.net_connections(kind="inet")
    if c.status == psutil.CONN_LISTEN and c.pid in names
]
modules = [c for c in commands.values() if c.startswith("ray-dashboard-")]  # the dashboard's module processes
print(json.dumps({"listeners": found, "node_ip": ray.util.get_node_ip_address(), "hook_passed": hook_passed,
                  "dashboard_modules": modules, "job_runtime_env": sorted(ray.get_runtime_context().runtime_env)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "local"])
def test_a_local_ray_listens_on_loopback_only(tmp_path: Path, backend: str) -> None:
    """With train.backend=ray the dashboard runs too (Ray Train's State API) and listens on loopback as well;
    a run that never starts Ray Train (train.backend=local, debug.yaml's) starts none of its modules, and no
    worker set-up hook (a job runtime env keeps Ray from starting workers ahead of the first task)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", LISTENERS, str(DEBUG), str(tmp_path / "w"), f"train.backend={backend}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    names = {entry["name"] for entry in seen["listeners"]}
    assert {"gcs_server", "raylet"} <= names, seen  # the check saw Ray's servers, not an empty list
    # Ray always starts its API server; the dashboard's modules (a process each) only for Ray Train.
    assert bool(seen["dashboard_modules"]) == (backend == "ray"), seen["dashboard_modules"]
    exposed = [e for e in seen["listeners"] if e["ip"] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert seen["node_ip"] == "127.0.0.1"
    if backend == "ray":
        # Every worker process ran the setup hook, one with env vars of its own (as Train's controller) included:
        # Train's autoscaling-request warning is dropped there, even after Train's own logging set-up; errors pass.
        assert seen["hook_passed"] == ["ERROR"]
    else:  # no Ray Train, so no hook: the job has no runtime env, and Ray starts workers before the first task
        assert seen["job_runtime_env"] == [], seen["job_runtime_env"]
        assert seen["hook_passed"] == ["WARNING", "ERROR"]
    # Ray's own driver-side lines (token auth, "Started a local Ray instance") went to the work dir's log file.
    log = (tmp_path / "w/logs/ray.log").read_text()
    assert "Started a local Ray instance" in log and "\x1b[" not in log
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_local_ray_gets_the_machine_cpus_unless_the_config_says_otherwise() -> None:
    cores = len(os.sched_getaffinity(0))
    one_worker = load_config(DEBUG, ["train.num_workers=1"])
    assert local_cpus(one_worker) == cores
    assert local_cpus(load_config(DEBUG, ["workflow.num_cpus=7"])) == 7
    # More workers than cores: enough logical CPUs for one run, or its workers would wait forever.
    many = load_config(DEBUG, ["train.backend=ray", f"train.num_workers={cores + 3}"])
    assert local_cpus(many) == cores + 3
    assert local_cpus(
        load_config(DEBUG, ["train.backend=ray", "train.num_workers=3", "train.cpus_per_worker=1.5"])
    ) == max(cores, 5)


def test_a_local_fit_polls_quickly_and_a_users_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's controller takes the poll interval from the driver's environment at fit(): set around a fit
    on a local Ray only (never for the whole Ray, whose Tune trials must keep the default), then removed."""
    from lstm_dist import cluster

    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(cluster, "_started_local", True)
    with cluster.quick_train_poll():
        assert os.environ[key] == "0.2"
    assert key not in os.environ
    monkeypatch.setattr(cluster, "_started_local", False)  # a cluster joined by address: Ray's default
    with cluster.quick_train_poll():
        assert key not in os.environ
    monkeypatch.setattr(cluster, "_started_local", True)
    monkeypatch.setenv(key, "1.5")
    with cluster.quick_train_poll():
        assert os.environ[key] == "1.5"
    assert os.environ[key] == "1.5"
