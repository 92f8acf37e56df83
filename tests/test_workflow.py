"""The workflow engine on its own (no Ray, no MLflow): keys, caching, atomic commit, --force, run records."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lstm_dist.storage import SUCCESS, data_fingerprint, fingerprint_files
from lstm_dist.workflow import (
    CACHED,
    DONE,
    FAILED,
    INTERRUPTED,
    PARTIAL,
    RUNNING,
    RUNS,
    Workflow,
    WorkflowError,
    cache_key,
    format_status,
    read_runs,
)

STEPS = ("a", "b", "c")


def wf(work: Path, **kw) -> Workflow:
    return Workflow(work, pipeline="test", steps=STEPS, progress=lambda _: None, **kw)


def writer(text: str, calls: list[str], name: str):
    def fn(out: str) -> dict:
        calls.append(name)
        (Path(out) / "data.txt").write_text(text)
        return {"file": "data.txt", "text": text}

    return fn


def three_steps(work: Path, calls: list[str], *, cfg_b: dict | None = None, force=()) -> list:
    w = wf(work, force=force)
    a = w.step("a", writer("A", calls, "a"), config={"x": 1})
    b = w.step("b", writer("B", calls, "b"), config=cfg_b or {"y": 1}, inputs={"a": a})
    c = w.step("c", writer("C", calls, "c"), inputs={"b": b})
    w.finish()
    return [a, b, c]


def test_cache_key_depends_on_config_inputs_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    base = cache_key("s", {"config": {"x": 1}, "inputs": {"a": "k1"}})
    assert base == cache_key("s", {"inputs": {"a": "k1"}, "config": {"x": 1}})  # order-free
    assert base != cache_key("s", {"config": {"x": 2}, "inputs": {"a": "k1"}})
    assert base != cache_key("s", {"config": {"x": 1}, "inputs": {"a": "k2"}})
    assert base != cache_key("t", {"config": {"x": 1}, "inputs": {"a": "k1"}})
    import lstm_dist.workflow

    monkeypatch.setattr(lstm_dist.workflow, "__version__", "9.9.9")
    assert base != cache_key("s", {"config": {"x": 1}, "inputs": {"a": "k1"}})


def test_outputs_are_committed_and_a_rerun_is_cached(tmp_path: Path) -> None:
    calls: list[str] = []
    a, b, c = three_steps(tmp_path, calls)
    assert calls == ["a", "b", "c"] and [r.state for r in (a, b, c)] == [DONE] * 3
    for r in (a, b, c):
        assert r.local_copy() == tmp_path / r.name / r.key
        assert (r.local_copy() / SUCCESS).exists() and (r.local_copy() / "data.txt").exists()
        assert not Path(r.uri + PARTIAL).exists()
    record = json.loads((b.local_copy() / "_STEP.json").read_text())
    assert record["inputs"] == {"a": a.uri} and record["key_parts"]["config"] == {"y": 1}

    calls.clear()
    again = three_steps(tmp_path, calls)
    assert calls == [] and [r.state for r in again] == [CACHED] * 3
    assert again[2].outputs == {"file": "data.txt", "text": "C"}


def test_a_changed_config_reruns_that_step_and_what_depends_on_it(tmp_path: Path) -> None:
    calls: list[str] = []
    three_steps(tmp_path, calls)
    calls.clear()
    a, b, c = three_steps(tmp_path, calls, cfg_b={"y": 2})
    assert calls == ["b", "c"] and (a.state, b.state, c.state) == (CACHED, DONE, DONE)


def test_force_reruns_the_step_and_its_dependents_only(tmp_path: Path) -> None:
    calls: list[str] = []
    first = three_steps(tmp_path, calls)
    calls.clear()
    a, b, c = three_steps(tmp_path, calls, force={"b"})
    assert calls == ["b", "c"] and a.state == CACHED
    assert (b.key, c.key) == (first[1].key, first[2].key)  # same keys, fresh outputs
    with pytest.raises(WorkflowError, match="no such step.*steps are a, b, c"):
        wf(tmp_path, force={"trian"})


def test_a_failing_step_leaves_nothing_complete_and_is_recorded(tmp_path: Path) -> None:
    w = wf(tmp_path)

    def boom(out: str) -> dict:
        (Path(out) / "half.txt").write_text("half")
        raise ValueError("bad row 7\nmore detail")

    with pytest.raises(ValueError):
        w.step("a", boom, config={})
    w.finish(FAILED, message="ValueError: bad row 7")
    assert [p.name for p in tmp_path.rglob(SUCCESS)] == []
    (run,) = read_runs(tmp_path)
    assert run["status"] == FAILED and run["steps"][0]["state"] == FAILED
    assert run["steps"][0]["error"] == "ValueError: bad row 7"

    # Not resumable: the next attempt starts from an empty directory.
    seen = []
    wf(tmp_path).step("a", lambda out: seen.append(sorted(os.listdir(out))) or {}, config={})
    assert seen == [[]]


def test_a_run_whose_work_dir_stops_taking_writes_still_reads_as_failed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LSTM_DIST_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    w = wf(work)

    def lose_the_disk(out: str) -> dict:
        shutil.rmtree(work / RUNS)
        (work / RUNS).write_text("")  # its run records can no longer be written (as on a read-only disk)
        raise OSError(30, "Read-only file system")

    with pytest.raises(OSError):
        w.step("a", lose_the_disk, config={})
    w.finish(FAILED, message="OSError: Read-only file system")
    (run,) = read_runs(work)
    assert run["status"] == FAILED and run["steps"][0]["state"] == FAILED  # not `interrupted`
    assert "failed" in format_status([run])


def test_a_resumable_step_finds_its_unfinished_attempt(tmp_path: Path) -> None:
    def killed(out: str) -> dict:
        (Path(out) / "checkpoint_1").mkdir()
        raise KeyboardInterrupt  # stands in for a kill: nothing after this line runs

    with pytest.raises(KeyboardInterrupt):
        wf(tmp_path).step("a", killed, config={}, resumable=True)
    seen = []
    result = wf(tmp_path).step("a", lambda out: seen.append(os.listdir(out)) or {"ok": 1}, config={}, resumable=True)
    assert seen == [["checkpoint_1"]] and (result.local_copy() / "checkpoint_1").is_dir()
    # --force starts afresh even for a resumable step
    seen.clear()
    wf(tmp_path, force={"a"}).step("a", lambda out: seen.append(os.listdir(out)) or {}, config={}, resumable=True)
    assert seen == [[]]


def test_validate_checks_the_attempt_before_it_commits(tmp_path: Path) -> None:
    seen: list[str] = []

    def check(path: Path) -> None:
        seen.append((path / "data.txt").read_text())  # the finished attempt, before _SUCCESS
        if seen[-1] != "good":
            raise ValueError(f"{path / 'data.txt'}: not good")

    w = wf(tmp_path)
    with pytest.raises(ValueError, match="not good"):
        w.step("a", writer("bad", [], "a"), config={}, validate=check)
    w.finish(FAILED)
    assert seen == ["bad"] and [p.name for p in tmp_path.rglob(SUCCESS)] == []
    assert not [p for p in (tmp_path / "a").iterdir() if not p.name.endswith(PARTIAL)]  # no committed dir
    assert read_runs(tmp_path)[0]["steps"][0]["state"] == FAILED

    calls: list[str] = []
    r = wf(tmp_path).step("a", writer("good", calls, "a"), config={}, validate=check)
    assert calls == ["a"] and r.state == DONE and seen == ["bad", "good"]
    assert (r.local_copy() / SUCCESS).exists()


def test_a_cached_step_that_is_no_longer_valid_runs_again_with_its_dependents(tmp_path: Path) -> None:
    calls: list[str] = []
    first = three_steps(tmp_path, calls)
    asked: list[str] = []

    def run(valid: bool) -> tuple[list, list[str]]:
        lines: list[str] = []
        w = Workflow(tmp_path, pipeline="test", steps=STEPS, progress=lines.append)
        a = w.step("a", writer("A", calls, "a"), config={"x": 1})
        still = lambda r: asked.append(r.outputs["text"]) or valid  # noqa: E731
        b = w.step("b", writer("B2", calls, "b"), config={"y": 1}, inputs={"a": a}, still_valid=still)
        c = w.step("c", writer("C", calls, "c"), inputs={"b": b})
        w.finish()
        return [a, b, c], lines

    calls.clear()
    results, _ = run(valid=True)
    assert calls == [] and asked == ["B"] and [r.state for r in results] == [CACHED] * 3
    (a, b, c), lines = run(valid=False)
    assert calls == ["b", "c"] and asked == ["B", "B"] and (a.state, b.state, c.state) == (CACHED, DONE, DONE)
    assert (b.key, c.key) == (first[1].key, first[2].key) and b.outputs["text"] == "B2"
    assert any("[b] cached" in line and "running it again" in line for line in lines), lines
    assert (b.local_copy() / "data.txt").read_text() == "B2"


def test_on_step_wraps_each_step_and_its_context_reaches_the_step(tmp_path: Path) -> None:
    events: list[tuple[str, str, str, list]] = []

    @contextlib.contextmanager
    def on_step(event):
        events.append(("enter", event.name, event.state, []))
        yield f"run-of-{event.name}"
        events.append(("exit", event.name, event.state, sorted(r.uri for r in event.results.values())))

    def step_fn(out: str) -> dict:
        return {"context": w.step_context}

    w = Workflow(tmp_path, pipeline="test", steps=STEPS, progress=lambda _: None, on_step=on_step)
    a = w.step("a", step_fn, config={})
    assert a.outputs == {"context": "run-of-a"} and w.step_context is None
    assert events == [("enter", "a", RUNNING, []), ("exit", "a", DONE, [a.uri])]
    events.clear()
    w = Workflow(tmp_path, pipeline="test", steps=STEPS, progress=lambda _: None, on_step=on_step)
    w.step("a", step_fn, config={})
    assert events == [("enter", "a", CACHED, []), ("exit", "a", CACHED, [a.uri])]
    events.clear()
    with pytest.raises(ValueError):
        w.step("b", lambda out: (_ for _ in ()).throw(ValueError("boom")), config={})
    assert events == [("enter", "b", RUNNING, [])]  # the exception passed through: no exit record


def test_map_runs_only_the_items_that_changed(tmp_path: Path) -> None:
    def run(items: dict) -> tuple[list, dict]:
        ran: list = []

        def fn(outs: dict) -> dict:
            ran.extend(sorted(outs))
            return {label: {"n": len(label)} for label in outs}

        return ran, wf(tmp_path).map("a", items, fn, config={"read": 1})

    ran, first = run({"x.csv": {"sha": "1"}, "y.csv": {"sha": "2"}})
    assert ran == ["x.csv", "y.csv"] and {r.state for r in first.values()} == {DONE}
    ran, second = run({"x.csv": {"sha": "1"}, "y.csv": {"sha": "3"}})
    assert ran == ["y.csv"]
    assert second["x.csv"].state == CACHED and second["y.csv"].key != first["y.csv"].key


def test_status_shows_each_step_with_its_state_and_a_dead_run_as_interrupted(tmp_path: Path) -> None:
    calls: list[str] = []
    three_steps(tmp_path, calls)
    three_steps(tmp_path, calls)
    # A run whose process died mid-step (its record still says running).
    script = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from lstm_dist.workflow import Workflow
w = Workflow({str(tmp_path)!r}, pipeline="test", steps=("a", "b", "c"), progress=lambda _: None)
w.step("a", lambda out: os._exit(9), config={{"x": 99}})
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    runs = read_runs(tmp_path, limit=3)
    assert [r["status"] for r in runs] == [INTERRUPTED, DONE, DONE]
    assert runs[0]["steps"][0]["state"] == INTERRUPTED
    assert [s["state"] for s in runs[1]["steps"]] == [CACHED] * 3
    assert [s["state"] for s in runs[2]["steps"]] == [DONE] * 3
    text = format_status(runs, now=time.time())
    assert "interrupted" in text and "cached" in text and text.count("done") >= 4
    assert len(list((tmp_path / RUNS).glob("*.json"))) == 3


def test_a_second_live_run_in_the_same_work_dir_is_refused(tmp_path: Path) -> None:
    first = wf(tmp_path)
    record = json.loads((tmp_path / RUNS / f"{first.run_id}.json").read_text())
    record["pid"] = os.getppid()  # pretend a live process of this host owns it
    (tmp_path / RUNS / f"{first.run_id}.json").write_text(json.dumps(record))
    with pytest.raises(WorkflowError, match="is working in"):
        wf(tmp_path)


def test_fingerprints_follow_content_not_mtime(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("t,v\n1,2\n")
    b.write_text("t,v\n1,3\n")
    cache = tmp_path / "work" / "_fingerprints.json"
    first = fingerprint_files([str(a), str(b)], cache=cache)
    assert cache.exists()
    os.utime(a, (time.time() + 10, time.time() + 10))  # touched, same content
    second = fingerprint_files([str(a), str(b)], cache=cache)
    assert data_fingerprint(first) == data_fingerprint(second)
    b.write_text("t,v\n1,4\n")
    third = fingerprint_files([str(a), str(b)], cache=cache)
    assert third[str(b)]["sha256"] != first[str(b)]["sha256"] and third[str(a)] == second[str(a)]
    assert data_fingerprint(third) != data_fingerprint(first)


def test_work_dir_may_be_a_uri(tmp_path: Path) -> None:
    calls: list[str] = []
    uri = (tmp_path / "store").as_uri()  # file:// goes through pyarrow.fs like s3:// would
    w = Workflow(uri, pipeline="test", steps=STEPS, progress=lambda _: None)
    r = w.step("a", lambda out: calls.append(out) or {"k": 1}, config={})
    assert r.uri.startswith("file://") and calls[0].endswith(PARTIAL)
    assert (tmp_path / "store" / "a" / r.key / SUCCESS).exists()
    again = Workflow(uri, pipeline="test", steps=STEPS, progress=lambda _: None).step("a", lambda out: {}, config={})
    assert again.cached and again.outputs == {"k": 1}
