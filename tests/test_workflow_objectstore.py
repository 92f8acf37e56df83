"""The workflow engine on an object-store work dir: a real S3 API (moto's server) on 127.0.0.1.

Steps write into a node-local staging dir; a finished attempt is uploaded to `<work_dir>/<step>/<key>/` with
`_SUCCESS` last; `StepResult.local_copy()` downloads an output once into the node-local cache. The whole training
pipeline on an s3:// work dir runs in tests/test_multinode_objectstore.py, on two Ray nodes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from lstm_dist.storage import CACHE_ENV, RECORD, SUCCESS, StorageError, Store, local_copy, node_cache
from lstm_dist.workflow import CACHED, DONE, FAILED, Workflow, read_runs

pytest.importorskip("moto", reason="moto[server] (the dev extra) serves the S3 API these tests use")

STEPS = ("a", "b")


@pytest.fixture
def work(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix in the bucket as the work dir; this test's own node-local cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return f"s3://lstm-dist/{uuid.uuid4().hex[:8]}/w"


def files_under(fs: pafs.FileSystem, uri: str) -> dict[str, pafs.FileInfo]:
    inner = uri.split("://", 1)[1]
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return {i.path[len(inner) + 1 :]: i for i in infos if i.type == pafs.FileType.File}


def wf(work: str, **kw) -> Workflow:
    return Workflow(work, pipeline="test", steps=STEPS, progress=lambda _: None, **kw)


def writer(calls: list[str], text: str = "A"):
    def fn(out: str) -> dict:
        calls.append(out)
        assert "://" not in out and Path(out).is_dir()  # a local staging dir, whatever the work dir
        (Path(out) / "data.txt").write_text(text)
        (Path(out) / "sub").mkdir()
        (Path(out) / "sub" / "deep.txt").write_text("deep")
        return {"file": "data.txt"}

    return fn


def test_a_step_commits_to_the_bucket_with_success_last_and_is_cached(s3, work: str) -> None:
    fs, _ = s3
    calls: list[str] = []
    w = wf(work)
    r = w.step("a", writer(calls), config={"x": 1})
    w.finish()
    assert r.state == DONE and r.uri == f"{work}/a/{r.key}"
    assert Path(calls[0]).is_relative_to(node_cache(work))  # staged in the node-local cache, not in the bucket
    files = files_under(fs, work)
    step_files = {k for k in files if k.startswith(f"a/{r.key}/")}
    assert step_files == {f"a/{r.key}/{n}" for n in ("data.txt", "sub/deep.txt", RECORD, SUCCESS)}
    assert not [k for k in files if ".partial" in k or ".tmp-" in k]
    success = files[f"a/{r.key}/{SUCCESS}"].mtime
    assert all(files[k].mtime <= success for k in step_files)
    assert json.loads(fs.open_input_stream(f"{work[5:]}/a/{r.key}/{RECORD}").read())["outputs"] == {"file": "data.txt"}
    # The staging dir became this machine's copy: no download needed, nothing left staged.
    assert (
        r.local_copy() == node_cache(work) / "a" / r.key and (r.local_copy() / "sub" / "deep.txt").read_text() == "deep"
    )
    assert not (node_cache(work) / "a" / f"{r.key}.partial").exists()

    again = wf(work).step("a", writer(calls), config={"x": 1})
    assert again.state == CACHED and again.key == r.key and len(calls) == 1
    runs = read_runs(work)
    assert [run["status"] for run in runs[1:]] == [DONE] and runs[1]["steps"][0]["uri"] == r.uri


def test_path_downloads_once_and_follows_a_forced_rerun(
    s3, work: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    first = wf(work).step("a", writer(calls, "v1"), config={"x": 1})
    # Another machine: an empty cache. The cached result's path downloads the output, then reuses it.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-node"))
    downloads = []
    real = Store.download
    monkeypatch.setattr(Store, "download", lambda self, loc, local: downloads.append(loc) or real(self, loc, local))
    r = wf(work).step("a", writer(calls), config={"x": 1})
    assert r.cached and downloads == []  # nothing is downloaded until a path is asked for
    local = r.local_copy()
    assert local.is_relative_to(tmp_path / "other-node") and (local / "data.txt").read_text() == "v1"
    assert (local / SUCCESS).exists() and (local / "sub" / "deep.txt").exists()
    assert r.local_copy() == local and local_copy(r.uri) == local and len(downloads) == 1
    assert not [p for p in local.parent.iterdir() if ".tmp-" in p.name]

    # A forced rerun elsewhere replaces the output under the same key: the stale copy here is replaced.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    forced = wf(work, force={"a"}).step("a", writer(calls, "v2"), config={"x": 1})
    assert forced.key == first.key and (forced.local_copy() / "data.txt").read_text() == "v2"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-node"))
    assert (local_copy(r.uri) / "data.txt").read_text() == "v2" and len(downloads) == 2

    with pytest.raises(StorageError, match=SUCCESS):  # where the output should be, but no _SUCCESS
        local_copy(f"{work}/a/0000000000000000", store=Store(work))
    with pytest.raises(StorageError, match=RECORD):  # no step output above it at all
        local_copy(f"{work}/a/0000000000000000")


def test_a_failing_step_leaves_no_success_in_the_bucket(s3, work: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, _ = s3

    def boom(out: str) -> dict:
        (Path(out) / "half.txt").write_text("half")
        raise ValueError("bad input")

    w = wf(work)
    with pytest.raises(ValueError, match="bad input"):
        w.step("a", boom)
    w.finish(FAILED, message="ValueError: bad input")
    assert not [k for k in files_under(fs, work) if not k.startswith("_runs/")]  # nothing but the run record
    (run,) = read_runs(work)
    assert run["status"] == FAILED and run["steps"][0]["state"] == FAILED

    # An upload that breaks half-way leaves files but no _SUCCESS: a rerun does not take the step as done.
    real = Store.upload

    def broken_upload(self, local, loc):
        real(self, local, loc)
        raise OSError("connection reset")

    calls: list[str] = []
    with monkeypatch.context() as mp, pytest.raises(OSError, match="connection reset"):
        mp.setattr(Store, "upload", broken_upload)
        wf(work).step("a", writer(calls))
    files = files_under(fs, work)
    assert any(k.endswith("data.txt") for k in files) and not any(k.endswith(SUCCESS) for k in files)
    r = wf(work).step("a", writer(calls))
    assert r.state == DONE and len(calls) == 2


def test_a_resumable_attempt_stays_in_the_staging_dir_on_this_machine(s3, work: str) -> None:
    seen: list[bool] = []

    def train(out: str) -> dict:
        ckpt = Path(out) / "ckpt.txt"
        seen.append(ckpt.exists())
        if not ckpt.exists():
            ckpt.write_text("epoch 1")
            raise KeyboardInterrupt  # killed after the first checkpoint
        return {"resumed": True}

    with pytest.raises(KeyboardInterrupt):
        wf(work).step("a", train, resumable=True)
    r = wf(work).step("a", train, resumable=True)
    assert seen == [False, True] and r.outputs == {"resumed": True}
    assert (r.local_copy() / "ckpt.txt").read_text() == "epoch 1"
