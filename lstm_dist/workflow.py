"""A small, explicit workflow engine: cached, resumable steps with atomic completion and a run record.

A step declares what it depends on: a config section, the results of earlier steps (`inputs`) and any
extra facts (e.g. an input file's checksum). Its cache key hashes those, the inputs' keys and the package
version. Its output lives in `<work_dir>/<step>/<key>/`:

    <work_dir>/train/3f9c0a1d2e4b5c6d.partial/   an attempt in progress (a killed one stays, to resume from)
    <work_dir>/train/3f9c0a1d2e4b5c6d/           committed: the attempt renamed, then `_SUCCESS` written last
        _STEP.json                               key, what went into it, outputs, timing
        _SUCCESS

Only `_SUCCESS` makes a step complete, so a step killed at any point leaves nothing a later run could take
for finished; a step may check its output (`validate`) before that. A complete step is skipped on re-run
(unless its `still_valid` check says what it wrote elsewhere is gone); `force` reruns the named steps and
every step that (transitively) takes their results as input. Each run writes
`<work_dir>/_runs/<run_id>.json` as it goes (`lstm-dist status` reads them), and tells the `on_step` hook
about every step (the pipelines record each as a nested MLflow run with its key, inputs, outputs, timing).

The work dir may be a local path, an NFS mount or an object store URI (lstm_dist.storage). Steps write
with local file APIs and memory-map Arrow files, so on an object store a step gets a staging directory in
this machine's node cache instead, uploaded when it commits, and its outputs are read back through a local
copy (`StepResult.local_copy()`, `storage.local_copy`). The engine runs steps in the driver, one after
the other; a step's heavy work is Ray tasks, Ray Train or Ray Tune. Nothing here starts Ray.

On a multi-node cluster with a URI work dir no node sees another's disk, so: tasks and workers that read
an output get its locator (`StepResult.file(...)`) and open `storage.local_copy(locator)`, their own node's
copy; writers that may run on any node (Ray Train's checkpoints) write into the store at
`Workflow.shared_dir` (`<work_dir>/<step>/<key>.partial/`, deleted once the step commits); tasks that write
into the staging dir must run on the driver's node.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_dist.storage import RECORD, SUCCESS, Store, local_copy, node_cache
from lstm_dist.version import __version__

RUNS = "_runs"
PARTIAL = ".partial"

# States of a step in a run record. `interrupted` is what `status` shows for a `running` step (or run)
# whose process is gone (killed, or its machine lost) without having written an outcome.
DONE, CACHED, FAILED, RUNNING, INTERRUPTED = "done", "cached", "failed", "running", "interrupted"


class WorkflowError(RuntimeError):
    """A workflow cannot run as asked (unknown --force step, another run busy in the same work dir)."""


# ---------------------------------------------------------------------------------------------
# Keys


def cache_key(name: str, parts: dict[str, Any]) -> str:
    """Stable short hash of a step's name and everything it depends on, plus the package version."""
    blob = json.dumps({"step": name, "version": __version__, **_plain(parts)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Config sections (pydantic models), paths and containers of them as JSON-able values."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class StepResult:
    """A complete step: where its output is, under which key, whether it came from the cache, its outputs."""

    name: str
    key: str
    uri: str
    state: str
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    forced: bool = False
    """It ran because of --force (its own or an input's) or replaced a cached output that was no longer valid,
    so every step using it must run again too."""
    store: Store | None = field(default=None, repr=False, compare=False)
    """The work dir's store (how to reach a URI output); None: made from the URI."""

    def local_copy(self) -> Path:
        """The output directory as a local path: itself for a local or mounted work dir; for a URI this
        machine's copy in its node cache, downloaded unless it is there already (storage.local_copy)."""
        return local_copy(self.uri, store=self.store)

    @property
    def cached(self) -> bool:
        return self.state == CACHED

    def file(self, relative: str) -> str:
        """A file inside the output, as a locator."""
        return f"{self.uri}/{relative}"


StepHook = Callable[["StepEvent"], AbstractContextManager[Any]]


@dataclass
class StepEvent:
    """One step as the `on_step` hook sees it (all its items at once). The hook's context is entered before
    the step runs and exits once it committed, with `state`, `results` and `seconds` filled in; a failing
    step's exception passes through it."""

    name: str
    state: str
    """CACHED, or RUNNING until the step committed, then DONE."""
    keys: list[str]
    output: str
    """The step's output: its one item's, else `<work_dir>/<step>`."""
    inputs: dict[str, StepResult]
    workflow_run: str
    results: dict[Any, StepResult] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Attempt:
    """An item of a step that must run: its key, committed place, attempt dir and what went into its key."""

    key: str
    final: str
    attempt: str
    parts: dict[str, Any]
    forced: bool


# ---------------------------------------------------------------------------------------------
# The engine


class Workflow:
    """Runs the steps of one pipeline execution under a work dir and keeps its run record.

    `steps` names every step the pipeline can run, so that `force` is checked before anything starts.
    `on_step(event)` returns a context manager around each step (the pipelines open a nested MLflow run
    there); what it yields is `step_context` while the step runs. `mlflow_run_id` goes into the run record.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike,
        *,
        pipeline: str,
        steps: Sequence[str],
        on_step: StepHook | None = None,
        mlflow_run_id: str | None = None,
        force: Iterable[str] | None = None,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.work_dir = str(work_dir)
        self.store = Store(work_dir)
        # Where attempts are written: in the work dir itself when it is local (committed by a rename), on
        # this machine's disk for a URI (committed by an upload), so that steps can use local file APIs.
        self.stage = self.store if self.store.local else Store(node_cache(self.store))
        self.pipeline = pipeline
        self.on_step = on_step or (lambda event: nullcontext())
        self.step_context: Any = None
        self.force = set(force or ())
        unknown = sorted(self.force - set(steps))
        if unknown:
            raise WorkflowError(
                f"--force {', '.join(unknown)}: no such step in {pipeline}; steps are {', '.join(steps)}"
            )
        self.progress = progress
        self.results: list[StepResult] = []
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        self.run_id = f"{stamp}-{pipeline}-{uuid.uuid4().hex[:6]}"  # names sort by start time
        self._check_not_busy()
        self.record: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": pipeline,
            "status": RUNNING,
            "started_at": time.time(),
            "ended_at": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "mlflow_run_id": mlflow_run_id,
            "force": sorted(self.force),
            "message": "",
            "steps": [],
        }
        self._save_record()

    # -- public API ---------------------------------------------------------------------------

    def step(
        self,
        name: str,
        fn: Callable[[str], dict[str, Any]],
        *,
        config: Any = None,
        inputs: dict[str, StepResult] | None = None,
        extra: dict[str, Any] | None = None,
        resumable: bool = False,
        validate: Callable[[Path], None] | None = None,
        still_valid: Callable[[StepResult], bool] | None = None,
    ) -> StepResult:
        """Run `fn(out)` unless this step's output for these dependencies is already complete.

        `out` is the attempt directory, always a local path: `<work_dir>/<step>/<key>.partial` for a local
        work dir, a staging dir in this machine's node cache for a URI one, uploaded to
        `<work_dir>/<step>/<key>/` when `fn` returns. `fn` writes its files there and returns a JSON-able
        dict of outputs, which later runs get back from the cache. Paths among the outputs should be
        relative to `out`: the directory moves when the step commits. With a URI work dir `out` is on the
        driver's disk only: Ray tasks that write into it must run on the driver's node (pin them with
        `NodeAffinitySchedulingStrategy(node_id=<driver node>, soft=False)`), and writers that may run on
        any node (Ray Train workers) write under `shared_dir(out)` instead.
        `resumable`: a killed attempt's files are left for `fn` to continue from (training checkpoints);
        otherwise they are deleted before `fn` starts. With a URI work dir the attempt lives on the machine
        that ran it: a run on another machine does not see it and starts the step afresh (except for what
        the step keeps under `shared_dir(out)`, e.g. Ray Train's checkpoints, which any machine resumes from).
        `validate(out)`: checks the finished attempt before it commits; what it raises fails the step, and
        nothing complete is left. `still_valid(result)`: asked on a cache hit, for a step that wrote into a
        store outside the work dir (the model registry); False reruns the step (and the steps after it).
        """
        return self.map(
            name,
            {None: extra or {}},
            lambda outs: {None: fn(outs[None])},
            config=config,
            inputs=inputs,
            resumable=resumable,
            validate=validate,
            still_valid=still_valid,
        )[None]

    def map(
        self,
        name: str,
        items: dict[Any, dict[str, Any]],
        fn: Callable[[dict[Any, str]], dict[Any, dict[str, Any]]],
        *,
        config: Any = None,
        inputs: dict[str, StepResult] | None = None,
        resumable: bool = False,
        validate: Callable[[Path], None] | None = None,
        still_valid: Callable[[StepResult], bool] | None = None,
    ) -> dict[Any, StepResult]:
        """One step over many items (e.g. one per input file), each cached under its own key.

        `items` maps a label to the facts that identify that item; `fn` gets {label: out} for the items
        that must run (all at once, so it can start one Ray task each) and returns {label: outputs}.
        `validate` runs on each item's attempt, `still_valid` on each cached item (see `step`).
        """
        inputs = inputs or {}
        forced = name in self.force or any(r.forced for r in inputs.values())
        results: dict[Any, StepResult] = {}
        todo: dict[Any, _Attempt] = {}
        for label, facts in items.items():
            parts = {"config": config, "inputs": {k: r.key for k, r in inputs.items()}, **facts}
            cached = None if forced else self._cached(name, label, parts, still_valid=still_valid)
            if cached is not None:
                results[label] = cached
            else:
                todo[label] = self._prepare(name, label, parts, forced=forced, resumable=resumable)
        many = list(items) != [None]  # a map over labelled items (not a single step) also gets a summary line
        if results:  # one on_step call (nested MLflow run) for everything this step took from the cache
            self._took_cached(name, results, inputs)
        if not todo:
            if many:
                self.progress(f"[{name}] cached ({len(results)} item(s))")
            return results
        done = self._run(name, todo, fn, inputs=inputs, validate=validate)
        if many:
            seconds = next(iter(done.values())).seconds
            self.progress(f"[{name}] done in {seconds:.1f}s: {len(todo)} ran, {len(items) - len(todo)} cached")
        return {label: results[label] if label in results else done[label] for label in items}

    def shared_dir(self, out: str) -> str:
        """Where writers on any node put files of the attempt `out`: `out` itself for a local (or mounted)
        work dir; for a URI the attempt's place in the store, `<work_dir>/<step>/<key>.partial`, which
        survives a killed run (any machine can resume from it) and is deleted once the step commits. What
        the step's output should hold from there, `fn` copies into `out` before it returns."""
        if self.store.local:
            return out
        return self.store.join(*Path(out).relative_to(self.stage.root).parts)

    def finish(self, status: str = DONE, *, message: str = "") -> None:
        """Close the run record: `done`, or `failed` with the error's first line."""
        self.record.update(status=status, ended_at=time.time(), message=message)
        self._save_record()

    def summary(self) -> list[dict[str, Any]]:
        """One line per step of this run (for the pipeline run's artifacts and for tests)."""
        return [
            {"name": r.name, "label": r.label, "key": r.key, "state": r.state, "seconds": r.seconds, "uri": r.uri}
            for r in self.results
        ]

    # -- internals ----------------------------------------------------------------------------

    def _cached(self, name: str, label: Any, parts: dict[str, Any], *, still_valid) -> StepResult | None:
        """The complete output of this item, if there is one that `still_valid` (if given) accepts."""
        key = cache_key(name, parts)
        final = self.store.join(name, key)
        if not self.store.exists(f"{final}/{SUCCESS}"):
            return None
        record = json.loads(self.store.read_text(f"{final}/{RECORD}"))
        result = StepResult(
            name=name, key=key, uri=final, state=CACHED, seconds=0.0, outputs=record["outputs"], label=label,
            store=self.store,
        )  # fmt: skip
        if still_valid is not None and not still_valid(result):
            self.progress(
                f"[{_title(name, label)}] cached ({key}) but no longer valid (damaged, or what it wrote outside "
                "the work dir is gone): running it again"
            )
            return None
        if not self.store.local:
            self.stage.rmtree(self.stage.join(name, key + PARTIAL))  # an attempt here that another machine finished
        self.progress(f"[{_title(name, label)}] cached ({key}) -> {final}")
        self._add_entry(name, label, key, state=CACHED, uri=final, started=time.time(), seconds=0.0)
        self._save_record()
        self.results.append(result)
        return result

    def _prepare(self, name: str, label: Any, parts: dict[str, Any], *, forced: bool, resumable: bool) -> _Attempt:
        """The attempt dir of an item that must run: emptied unless a killed attempt may be resumed."""
        key = cache_key(name, parts)
        final, attempt = self.store.join(name, key), self.stage.join(name, key + PARTIAL)
        # An item whose complete output is there but was not taken (forced, or no longer valid) is redone
        # afresh, and so is every step that uses it.
        redo = forced or self.store.exists(f"{final}/{SUCCESS}")
        if redo or not resumable:
            self.stage.rmtree(attempt)  # a non-resumable attempt cannot continue
            if not self.store.local:
                self.store.rmtree(self.store.join(name, key + PARTIAL))  # and neither can its shared part
        elif self.stage.exists(attempt):
            self.progress(f"[{_title(name, label)}] resuming an unfinished attempt in {attempt}")
        self.stage.mkdir(attempt)
        return _Attempt(key=key, final=final, attempt=attempt, parts=parts, forced=redo)

    def _took_cached(self, name: str, results: dict[Any, StepResult], inputs: dict[str, StepResult]) -> None:
        uris = [r.uri for r in results.values()]
        event = StepEvent(
            name=name, state=CACHED, keys=[r.key for r in results.values()],
            output=uris[0] if len(uris) == 1 else self.store.join(name), inputs=inputs,
            workflow_run=self.run_id, results=results,
        )  # fmt: skip
        with self.on_step(event):
            pass

    def _run(self, name, todo: dict[Any, _Attempt], fn, *, inputs, validate) -> dict[Any, StepResult]:
        """Run `fn` on the attempts of `todo`, validate and commit them; the run record follows along."""
        started = time.time()
        entries = {}
        for label, a in todo.items():
            self.progress(f"[{_title(name, label)}] running ({a.key}) ...")
            entries[label] = self._add_entry(name, label, a.key, state=RUNNING, uri=a.attempt, started=started)
        self._save_record()
        finals = [a.final for a in todo.values()]
        event = StepEvent(
            name=name, state=RUNNING, keys=[a.key for a in todo.values()],
            output=finals[0] if len(finals) == 1 else self.store.join(name), inputs=inputs, workflow_run=self.run_id,
        )  # fmt: skip
        t0 = time.perf_counter()
        try:
            with self.on_step(event) as self.step_context:
                outputs = fn({label: a.attempt for label, a in todo.items()})
                event.seconds = time.perf_counter() - t0
                missing = [label for label in todo if label not in outputs]
                assert not missing, f"step {name} returned no outputs for {missing}"
                event.results = self._commit_all(name, todo, outputs, inputs, event.seconds, validate)
                event.state = DONE
                for label, result in event.results.items():
                    entries[label].update(state=DONE, seconds=event.seconds, uri=result.uri)
        except BaseException as exc:
            state = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
            for entry in entries.values():
                entry.update(state=state, seconds=time.perf_counter() - t0, error=_one_line(exc))
            self._save_record()
            raise
        finally:
            self.step_context = None
        self._save_record()
        for label, result in event.results.items():
            self.progress(f"[{_title(name, label)}] done in {event.seconds:.1f}s -> {result.uri}")
            self.results.append(result)
        return event.results

    def _commit_all(self, name, todo: dict[Any, _Attempt], outputs, inputs, seconds, validate) -> dict:
        """Validate every attempt first (so a failing check commits none), then commit each with its record."""
        if validate is not None:
            for a in todo.values():
                validate(Path(a.attempt))
        results = {}
        for label, a in todo.items():
            record = {
                "name": name,
                "label": label,
                "key": a.key,
                "key_parts": _plain(a.parts),
                "inputs": {k: r.uri for k, r in inputs.items()},
                "outputs": outputs[label],
                "seconds": seconds,
                "finished_at": time.time(),
            }
            self.stage.write_text(f"{a.attempt}/{RECORD}", json.dumps(record, indent=2, default=str))
            self._commit(a.attempt, a.final)
            results[label] = StepResult(
                name=name, key=a.key, uri=a.final, state=DONE, seconds=seconds, outputs=outputs[label],
                label=label, forced=a.forced, store=self.store,
            )  # fmt: skip
        return results

    def _commit(self, attempt: str, final: str) -> None:
        """Put a finished attempt (with its _STEP.json) in place, then write `_SUCCESS`, last (Store.commit)."""
        # Unique per commit: a local copy made before a forced rerun no longer matches and is replaced.
        stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {self.run_id}\n"
        self.store.commit(attempt, final, stamp=stamp)
        if not self.store.local:
            self.store.rmtree(f"{final}{PARTIAL}")  # the attempt's shared part (`shared_dir`), if it had one

    def _add_entry(self, name: str, label: Any, key: str, *, state: str, uri: str, started: float, seconds=None):
        entry = {
            "name": name,
            "label": None if label is None else str(label),
            "key": key,
            "state": state,
            "started_at": started,
            "seconds": seconds,
            "uri": uri,
            "error": None,
        }
        self.record["steps"].append(entry)
        return entry

    def _save_record(self) -> None:
        self.record["updated_at"] = time.time()  # a killed run's duration ends here (read_runs)
        text = json.dumps(self.record, indent=1)
        try:
            self.store.mkdir(self.store.join(RUNS))
            self.store.write_text(self.store.join(RUNS, f"{self.run_id}.json"), text)
        except OSError:  # the work dir went read-only or full: keep the record where `status` still finds it
            folder = _spare_runs(self.work_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{self.run_id}.json").write_text(text)

    def _check_not_busy(self) -> None:
        """Refuse to start while another live run of this machine works in the same work dir."""
        for run in read_runs(self.work_dir, limit=20):
            if run["status"] == RUNNING and run.get("host") == socket.gethostname() and _alive(run.get("pid")):
                if run.get("pid") == os.getpid():
                    continue
                raise WorkflowError(
                    f"another {run['pipeline']} run ({run['run_id']}, pid {run['pid']}) is working in "
                    f"{self.store.root}; wait for it to end (lstm-dist status shows it) or stop that process"
                )


class NotCached(Exception):
    """A `Plan` met a step (or an item of one) that would have to run."""


class Plan(Workflow):
    """A pipeline's steps answered from the work dir alone, to learn before starting Ray whether a run has
    anything to do. The same calls as a `Workflow`, with the same keys and checks: a complete item is taken as
    the engine takes it (its `still_valid` check included); one that would run raises NotCached, before any
    attempt dir is made. The run record is kept in memory and written only by `finish`."""

    _recording = False

    def finish(self, status: str = DONE, *, message: str = "") -> None:
        """Write the run record (every step cached), closed with `status`."""
        self._recording = True
        super().finish(status, message=message)

    def _prepare(self, name: str, label: Any, parts: dict[str, Any], *, forced: bool, resumable: bool) -> _Attempt:
        raise NotCached(_title(name, label))

    def _save_record(self) -> None:
        if self._recording:
            super()._save_record()


def _title(name: str, label: Any) -> str:
    return name if label is None else f"{name}[{label}]"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Reading run records back: `lstm-dist status`


def read_runs(work_dir: str | os.PathLike, *, limit: int = 5) -> list[dict[str, Any]]:
    """The latest run records of a work dir, newest first; a dead `running` run reads as `interrupted`."""
    runs = []
    for run in _newest_records(work_dir, limit=limit + 5):  # a few more: runs started in the same millisecond
        if run["status"] == RUNNING and run.get("host") == socket.gethostname() and not _alive(run.get("pid")):
            run["status"] = INTERRUPTED
            run["ended_at"] = _last_seen(run)  # a fixed duration: the process is gone, the clock stops
            for step in run["steps"]:
                if step["state"] == RUNNING:
                    step["state"] = INTERRUPTED
        runs.append(run)
    return sorted(runs, key=lambda r: r["started_at"], reverse=True)[:limit]


def _spare_runs(work_dir: str | os.PathLike) -> Path:
    """Where this machine keeps the run records a work dir could not take (it went read-only or full)."""
    return node_cache() / "runs" / hashlib.sha256(Store(work_dir).root.encode()).hexdigest()[:16]


def _newest_records(work_dir: str | os.PathLike, *, limit: int) -> list[dict[str, Any]]:
    """The newest run records in the work dir and this machine's spares; of two copies of a run, the later save."""
    store, spare = Store(work_dir), _spare_runs(work_dir)
    try:
        newest = sorted(n for n in store.listdir(store.join(RUNS)) if n.endswith(".json"))[-limit:]
    except OSError:  # the records folder is unreadable (or not a folder): the spares may still tell
        newest = []
    readers = [lambda n=n: store.read_text(store.join(RUNS, n)) for n in newest]
    if spare.is_dir():
        readers += [p.read_text for p in sorted(spare.glob("*.json"))[-limit:]]
    runs: dict[str, dict[str, Any]] = {}
    for read in readers:
        try:
            run = json.loads(read())
        except (OSError, ValueError):
            continue  # a record being replaced right now; the next call sees it
        kept = runs.get(run["run_id"])
        if kept is None or run.get("updated_at", 0) > kept.get("updated_at", 0):
            runs[run["run_id"]] = run
    return list(runs.values())


def _last_seen(run: dict[str, Any]) -> float:
    """When a run that died without closing its record was last heard of: its last record save (records
    from before `updated_at` existed: the end of its last finished step)."""
    ends = [s["started_at"] + s["seconds"] for s in run["steps"] if s.get("seconds") is not None]
    return max([run["started_at"], run.get("updated_at") or 0, *ends])


def format_status(runs: list[dict[str, Any]], *, now: float | None = None) -> str:
    """A readable table per run: each step with its state, key and timing."""
    if not runs:
        return "no runs recorded here yet"
    now = now or time.time()
    lines = []
    for run in runs:
        ended = run.get("ended_at") or now
        head = (
            f"{run['run_id']}  {run['status']}  started {_clock(run['started_at'])}  "
            f"{_duration(ended - run['started_at'])}"
        )
        if run.get("mlflow_run_id"):
            head += f"  mlflow run {run['mlflow_run_id']}"
        lines.append(head)
        if run.get("message"):
            lines.append(f"  {run['message']}")
        for step in run["steps"]:
            title = _title(step["name"], step.get("label"))
            if step["state"] == RUNNING:
                timing = f"running for {_duration(now - step['started_at'])}"
            elif step["state"] == CACHED:
                timing = "-"
            else:
                timing = _duration(step["seconds"]) if step.get("seconds") is not None else "?"
            line = f"  {title:<28} {step['state']:<12} {timing:>12}  {step['key']}"
            if step.get("error"):
                line += f"  {step['error']}"
            lines.append(line)
        lines.append("")
    return "\n".join(lines).rstrip()


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
