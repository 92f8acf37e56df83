"""An object-store work dir on a 2-node Ray cluster: nothing may depend on the driver's disk.

Two `ray start` nodes on 127.0.0.1 (a head and a second node), each raylet with its own `LSTM_DIST_CACHE`,
which its worker processes inherit: each node has its own node-local cache, as on separate machines. The
driver has a third one. The debug pipeline runs against the cluster with an `s3://` work dir (moto's S3
server): training workers and the evaluate task read the shards and checkpoints through their own node's
copy (`storage.local_copy`), Ray Train writes checkpoints into the bucket. A second run is all cached, and a
retrain finds no new data in the bucket.

The head gets 1 CPU and the second node 2, so the two training workers (1 CPU each, packed) cannot both
sit on the head. All processes share one file system here, so a driver path leaking to a worker would
still open; the test shows instead that the second node's workers downloaded their own copies. Two quick
tests before it pin down the pieces: `local_copy` and `Workflow.shared_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from http_wait import VENV_BIN, clean_env, free_port

from lstm_dist.storage import CACHE_ENV, SUCCESS, StorageError, local_copy
from lstm_dist.workflow import CACHED, DONE, PARTIAL, Workflow

ROOT = Path(__file__).resolve().parent.parent


def start_node(args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start --block` in its own process group (stopped by signalling the group)."""
    ports = {
        name: free_port()
        for name in (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    cmd = [
        str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
        *args, *(f"--{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_port(port: int, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s (see the head's log)")


def stop_node(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the node's raylet, workers, ...: one process group
    except ProcessLookupError:
        pass


def start_second_node(args: list[str], *, env: dict[str, str], log: Path, attempts: int = 3) -> subprocess.Popen:
    """`start_node`, tried again when the node does not come up. On a slow, loaded 2-core machine a joining
    raylet can die at start-up: Ray 2.60 gives its dashboard agent a fixed 15 s to write its port file
    (`NodeManager::WaitForDashboardAgentPorts`, ray-project/ray#65983), and `ray start` then exits."""
    for attempt in range(1, attempts + 1):
        attempt_log = log.with_suffix(f".{attempt}.log")
        proc = start_node(args, env=env, log=attempt_log)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in attempt_log.read_text():
                return proc
            time.sleep(0.5)
        stop_node(proc)
    raise RuntimeError(f"the second Ray node did not start in {attempts} attempts; see {log.parent}/node2.*.log")


@pytest.fixture(scope="module")
def cluster(s3):
    """A head (1 CPU) and a second node (2 CPUs) on 127.0.0.1; {address, caches, temp_dir, env}."""
    _, s3_env = s3
    temp_dir = tempfile.mkdtemp(prefix="raym-", dir="/tmp")  # short: socket paths must stay < 107 bytes
    caches = {name: Path(temp_dir) / f"cache-{name}" for name in ("head", "node2", "driver")}
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        procs.append(
            start_node(
                ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
                env=clean_env(**s3_env, **{CACHE_ENV: str(caches["head"])}),
                log=Path(temp_dir) / "head.log",
            )
        )
        wait_for_port(port, seconds=120)  # the head's GCS: a loaded machine takes a while to start it
        procs.append(
            start_second_node(
                [f"--address={address}", "--num-cpus=2", f"--temp-dir={temp_dir}"],
                env=clean_env(**s3_env, **{CACHE_ENV: str(caches["node2"])}),
                log=Path(temp_dir) / "node2.log",
            )
        )
        yield {"address": address, "caches": caches, "temp_dir": temp_dir, "env": s3_env}
    finally:
        for proc in reversed(procs):
            stop_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


SCRIPT = """
import json, os, sys, time
import ray
from lstm_dist.cluster import init_ray
from lstm_dist.config import load_config
from lstm_dist.storage import save_resolved
from lstm_dist.pipelines import retrain
from lstm_dist.pipelines.train import run

cfg = load_config({conf!r}, {overrides!r}).resolved()
save_resolved(cfg)
init_ray(cfg)
deadline = time.time() + 90
while len([n for n in ray.nodes() if n["Alive"]]) < 2:
    assert time.time() < deadline, ray.nodes()
    time.sleep(0.5)

@ray.remote(num_cpus=0)
def where():
    return ray.get_runtime_context().get_node_id(), os.environ.get({cache_env!r})

# One probe per node: each worker process sees its own raylet's cache dir.
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
probe = dict(ray.get([where.options(scheduling_strategy=On(n, soft=False)).remote() for n in nodes]))
driver = ray.get_runtime_context().get_node_id()
runs = [run(cfg, progress=lambda _: None) for _ in range(2)]
out = [{{"steps": r.steps, "version": r.version, "mae": r.metrics["test_model_mae"]}} for r in runs]
decision = retrain.run(cfg, progress=lambda _: None).decision
print(json.dumps({{"runs": out, "probe": probe, "driver": driver, "decision": decision}}))
"""


def test_local_copy_finds_the_step_output_above_a_locator(s3, tmp_path: Path, monkeypatch) -> None:
    """A locator inside an output (here a sub-dir with its own `_SUCCESS`, like a shard set) is read through
    this machine's copy of the whole output; a local path stays as it is."""
    work = f"s3://lstm-dist/{uuid.uuid4().hex[:8]}/w"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "driver"))

    def shards(out: str) -> dict:
        (Path(out) / "shards" / "train").mkdir(parents=True)
        (Path(out) / "shards" / "train" / "part-0.arrow").write_text("rows")
        (Path(out) / "shards" / SUCCESS).write_text("")
        return {}

    r = Workflow(work, pipeline="t", steps=["shard"], progress=lambda _: None).step("shard", shards)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node2"))  # another node: an empty cache
    local = local_copy(r.file("shards/train"))
    assert local.is_relative_to(tmp_path / "node2") and (local / "part-0.arrow").read_text() == "rows"
    assert (local.parent.parent / SUCCESS).exists() and local == local_copy(r.file("shards") + "/train")
    assert local_copy(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(StorageError, match="not inside a step output"):
        local_copy(f"{work}/shard/0000000000000000/shards")


def test_shared_dir_is_in_the_bucket_survives_a_kill_and_goes_at_commit(s3, tmp_path: Path, monkeypatch) -> None:
    """What workers write under `shared_dir(out)` (Ray Train's checkpoints) is in the store: a run on another
    machine finds it and resumes; the step's commit deletes it."""
    fs, _ = s3
    work = f"s3://lstm-dist/{uuid.uuid4().hex[:8]}/w"
    seen: list[bool] = []

    def train(wf: Workflow):
        def fn(out: str) -> dict:
            shared = wf.shared_dir(out)
            assert shared.startswith(f"{work}/train/") and shared.endswith(PARTIAL)
            ckpt = shared.split("://", 1)[1] + "/ckpt.txt"
            seen.append(fs.get_file_info(ckpt).is_file)
            if not seen[-1]:
                with fs.open_output_stream(ckpt) as f:
                    f.write(b"epoch 1")
                raise KeyboardInterrupt  # killed after the first checkpoint
            (Path(out) / "model.txt").write_text(fs.open_input_stream(ckpt).read().decode())
            return {}

        return fn

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a"))
    wf = Workflow(work, pipeline="t", steps=["train"], progress=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        wf.step("train", train(wf), resumable=True)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "b"))  # another machine: no local attempt, the shared part is there
    wf = Workflow(work, pipeline="t", steps=["train"], progress=lambda _: None)
    r = wf.step("train", train(wf), resumable=True)
    assert seen == [False, True] and (r.local_copy() / "model.txt").read_text() == "epoch 1"
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{work[5:]}/train"))]
    assert names == [r.key]  # the .partial prefix is gone


@pytest.mark.slow
def test_debug_pipeline_on_two_nodes_with_an_s3_work_dir(s3, cluster, tmp_path: Path) -> None:
    fs, _ = s3
    work = f"s3://lstm-dist/{uuid.uuid4().hex[:8]}/w"
    caches = cluster["caches"]
    overrides = [
        f"workflow.work_dir={work}",
        f"workflow.ray_address={cluster['address']}",
        "train.epochs=1",
        "train.backend=ray",
        "train.num_workers=2",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    script = SCRIPT.format(conf=str(ROOT / "conf/debug.yaml"), overrides=overrides, cache_env=CACHE_ENV)
    env = clean_env(**cluster["env"], **{CACHE_ENV: str(caches["driver"]), "RAY_TMPDIR": cluster["temp_dir"]})
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = report["runs"]

    # Each node's workers inherit their raylet's cache dir: two nodes, two node-local caches.
    assert sorted(report["probe"].values()) == sorted([str(caches["head"]), str(caches["node2"])])
    assert {s["name"] for s in first["steps"]} == {"ingest", "shard", "train", "evaluate", "register"}
    assert all(s["state"] == DONE and s["uri"].startswith(work) for s in first["steps"])
    assert all(s["state"] == CACHED for s in second["steps"]) and second["version"] == first["version"] == "1"
    assert second["mae"] == first["mae"]
    assert report["decision"] == "no new data"  # the retrain reads the same fingerprint back from the bucket

    bucket = fs.get_file_info(pafs.FileSelector(work.removeprefix("s3://"), recursive=True))
    files = {i.path[len(work.removeprefix("s3://")) + 1 :] for i in bucket if i.type == pafs.FileType.File}
    for s in first["steps"]:
        assert f"{s['name']}/{s['key']}/{SUCCESS}" in files, s
    assert any(k.startswith("sample/") and k.endswith(".parquet") for k in files)  # generated into the bucket
    assert {"_fingerprints.json", "last_config.yaml", "retrain_decisions.jsonl"} <= set(files)
    assert any(k.startswith("mlartifacts/") and "/model" in k for k in files)  # sqlite store, artifacts in the bucket
    assert len([k for k in files if k.startswith("_runs/")]) == 2
    assert not [k for k in files if ".partial" in k]
    assert not (tmp_path / "s3:").exists()  # nothing went to a local directory named after the URI

    # The second node's processes read the shards through their own copy, downloaded from the bucket.
    node2_shards = list(caches["node2"].glob("work/*/shard/*/shards/manifest.json"))
    assert node2_shards, sorted(str(p) for p in caches["node2"].rglob("*"))[:50]
    assert (node2_shards[0].parent.parent / SUCCESS).exists()
    # Ray Train wrote the checkpoints into the bucket; the committed train step holds them, no attempt is left.
    train = next(s for s in first["steps"] if s["name"] == "train")
    inner = train["uri"].split("://", 1)[1]
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True)) if i.type == pafs.FileType.File]
    assert any("/ray_train/checkpoint_" in f and f.endswith("model.pt") for f in files), files
    parent = inner.rsplit("/", 1)[0]
    assert not [i for i in fs.get_file_info(pafs.FileSelector(parent)) if i.base_name.endswith(".partial")]
    print(f"2-node pipeline (two runs) took {time.time() - t0:.0f}s; driver node {report['driver'][:8]}")
