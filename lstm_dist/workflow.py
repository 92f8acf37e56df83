"""A small, explicit workflow engine: cached, resumable steps with atomic completion and a run record.

A step declares what it depends on: a config section, the results of earlier steps (`inputs`) and any
extra facts (e.g. an input file's checksum). Its cache key hashes those, the inputs' keys and the package
version. Its output lives in `<work_dir>/<step>/<key>/`:

    <work_dir>/train/3f9c0a1d2e4b5c6d.partial/   an attempt in progress (a killed one stays, to resume from)
    <work_dir>/train/3f9c0a1d2e4b5c6d/           committed: the attempt renamed, then `_SUCCESS` written last
        _STEP.json                               key, what went into it, outputs, timing
        _SUCCESS

Only `_SUCCESS` makes a step complete, so a step killed at any point leaves nothing a later run could take
for finished. A complete step is skipped on re-run; `force` reruns the named steps and every step that
(transitively) takes their results as input. Each run writes `<work_dir>/_runs/<run_id>.json` as it goes
(`lstm-dist status` reads them) and records every step as a nested MLflow run with its key, inputs,
outputs and timing.

All bookkeeping goes through `pyarrow.fs`, so `work_dir` may be a local path, an NFS mount or an object
store URI (`s3://…`, `gs://…`; for an S3-compatible store other than AWS, `AWS_ENDPOINT_URL` names its
endpoint, which pyarrow honours). Steps write with local file APIs and memory-map Arrow files, so on an
object store a step gets a node-local staging directory instead, and its outputs are read back through a
node-local copy (`StepResult.path`, `localize`):

    <cache>/work/<hash of work_dir>/train/3f9c0a1d2e4b5c6d.partial/   the attempt, on the driver's machine
    <work_dir>/train/3f9c0a1d2e4b5c6d/                               committed: uploaded, `_SUCCESS` last
    <cache>/work/<hash of work_dir>/train/3f9c0a1d2e4b5c6d/          the local copy of a committed output

`<cache>` is `$LSTM_DIST_CACHE`, else `$XDG_CACHE_HOME/lstm_dist`, else `~/.cache/lstm_dist`; it can be
deleted whenever no run is using it. The engine runs steps in the driver, one after the other; a step's
heavy work is Ray tasks, Ray Train or Ray Tune. Nothing here starts Ray.

On a multi-node cluster with a URI work dir no node sees another's disk, so: tasks and workers that read
an output get its locator (`StepResult.file(...)`) and open `local_path(locator)`, their own node's copy;
writers that may run on any node (Ray Train's checkpoints) write into the store at `Workflow.shared_dir`
(`<work_dir>/<step>/<key>.partial/`, deleted once the step commits); tasks that write into the staging
dir must run on the driver's node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

import lstm_dist
from lstm_dist.tracking import NullTracker

SUCCESS = "_SUCCESS"
RECORD = "_STEP.json"
RUNS = "_runs"
PARTIAL = ".partial"
CACHE_ENV = "LSTM_DIST_CACHE"  # the node-local cache's root (staging and local copies for URI work dirs)

# States of a step in a run record. `interrupted` is what `status` shows for a `running` step (or run)
# whose process is gone (killed, or its machine lost) without having written an outcome.
DONE, CACHED, FAILED, RUNNING, INTERRUPTED = "done", "cached", "failed", "running", "interrupted"


class WorkflowError(RuntimeError):
    """A workflow cannot run as asked (unknown --force step, another run busy in the same work dir)."""


# ---------------------------------------------------------------------------------------------
# Storage: a work dir is a local path or a URI; every path below is a locator of the same kind.


class Store:
    """The work dir's filesystem: `pyarrow.fs` underneath, locators (plain paths or URIs) on top."""

    def __init__(self, root: str | os.PathLike) -> None:
        root = str(root)
        if "://" in root:
            self.fs, inner = pafs.FileSystem.from_uri(root)
            self.prefix = root.split("://", 1)[0] + "://"
        else:
            self.fs, inner, self.prefix = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root)), ""
        self.root = self.prefix + inner.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _inner(self, loc: str) -> str:
        return loc[len(self.prefix) :] if self.prefix else loc

    def exists(self, loc: str) -> bool:
        return self.fs.get_file_info(self._inner(loc)).type != pafs.FileType.NotFound

    def mkdir(self, loc: str) -> None:
        self.fs.create_dir(self._inner(loc), recursive=True)

    def rmtree(self, loc: str) -> None:
        if self.exists(loc):
            self.fs.delete_dir(self._inner(loc))

    def read_text(self, loc: str) -> str:
        with self.fs.open_input_stream(self._inner(loc)) as f:
            return f.read().decode()

    def write_text(self, loc: str, text: str) -> None:
        """Replace a small file in one step: temp name + rename locally; a single PUT on object stores."""
        if self.local:
            tmp = f"{loc}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open_output_stream(self._inner(tmp)) as f:
                f.write(text.encode())
            self.fs.move(self._inner(tmp), self._inner(loc))
        else:
            with self.fs.open_output_stream(self._inner(loc)) as f:
                f.write(text.encode())

    def listdir(self, loc: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self._inner(loc), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def commit_dir(self, src: str, dst: str) -> None:
        """Move a finished attempt into place: a rename locally (atomic), copy + delete on object stores."""
        self.rmtree(dst)  # a forced rerun replaces the old output; it was already no longer complete
        if self.local:
            self.fs.move(self._inner(src), self._inner(dst))
        else:
            pafs.copy_files(
                self._inner(src), self._inner(dst), source_filesystem=self.fs, destination_filesystem=self.fs
            )
            self.fs.delete_dir(self._inner(src))

    def upload(self, local: str | os.PathLike, loc: str) -> None:
        """Copy a local file or directory (recursively) to `loc`."""
        pafs.copy_files(
            str(local), self._inner(loc), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )

    def download(self, loc: str, local: str | os.PathLike) -> None:
        """Copy the file or directory (recursively) at `loc` to a local path."""
        pafs.copy_files(
            self._inner(loc), str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )


def cache_root() -> Path:
    """The node-local cache: `$LSTM_DIST_CACHE`, else `$XDG_CACHE_HOME/lstm_dist`, else `~/.cache/lstm_dist`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser().resolve() / "lstm_dist"


def work_cache(work_dir: str | os.PathLike | Store) -> Path:
    """The local directory standing for a work dir on this machine: the work dir itself when it is local
    (or mounted); for a URI, `<cache>/work/<hash of the URI>/` (staging dirs, local copies of outputs,
    anything a pipeline must have as local files)."""
    store = work_dir if isinstance(work_dir, Store) else Store(work_dir)
    if store.local:
        return Path(store.root)
    return cache_root() / "work" / hashlib.sha256(store.root.encode()).hexdigest()[:16]


def localize(uri: str | os.PathLike, *, store: Store | None = None) -> Path:
    """A committed step output `<work_dir>/<step>/<key>` as a local directory; for Ray tasks too.

    A local (or mounted) output is returned as it is. A URI is downloaded once per machine into
    `work_cache(work_dir)/<step>/<key>/` (into a temp dir, then renamed, so a reader never sees half a
    copy) and reused while the output's `_SUCCESS` stays the same (a forced rerun writes a new one).
    Each call reads the remote `_SUCCESS` (one small GET). `store`: the work dir's `Store`, when the URI
    alone cannot say how to reach it (e.g. a work dir given with an `?endpoint_override=` query).
    """
    uri = str(uri)
    if "://" not in uri:
        return Path(uri)
    root, name, key = uri.rstrip("/").rsplit("/", 2)
    store = store or Store(root)
    final = store.join(name, key)
    try:
        stamp = store.read_text(f"{final}/{SUCCESS}")
    except OSError as exc:  # FileNotFoundError among them
        raise WorkflowError(f"{final} is not a complete step output (no {SUCCESS}): {exc}") from exc
    local = work_cache(store) / name / key
    if _read_local(local / SUCCESS) == stamp:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f"{key}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        store.download(final, tmp)
        tmp.mkdir(exist_ok=True)  # an output with no files but the markers still gets its directory
        (tmp / SUCCESS).write_text(stamp)
        _swap_in(tmp, local, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def local_path(locator: str | os.PathLike, *, levels: int = 4) -> Path:
    """Any path inside a committed step output as a local path on this machine; for Ray tasks and workers.

    A local (or mounted) path is returned as it is. For a URI `<work_dir>/<step>/<key>/<relative>` the
    nearest enclosing directory with a `_STEP.json` (at most `levels` up) is the step output: it is
    `localize`d (downloaded once into this machine's cache) and `<relative>` is joined to the copy. So a
    driver hands tasks on any node the same string (e.g. `StepResult.file("shards")`), and each node reads
    its own copy: nothing depends on the driver's disk being visible elsewhere.
    """
    locator = str(locator)
    if "://" not in locator:
        return Path(locator)
    base, relative = locator.rstrip("/"), []
    store = Store(base)
    for _ in range(levels + 1):
        if store.exists(f"{base}/{RECORD}"):  # not _SUCCESS: a shard set inside an output has its own
            return localize(base).joinpath(*reversed(relative))
        base, _, name = base.rpartition("/")
        relative.append(name)
        if "://" not in base or base.endswith(":/"):
            break
    raise WorkflowError(f"{locator} is not inside a step output (no {RECORD} above it)")


def _read_local(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _swap_in(new: Path, local: Path, stamp: str) -> None:
    """Rename `new` to `local`, replacing an outdated copy; a copy with `stamp` that got there first wins."""
    old = None
    if local.exists():
        if _read_local(local / SUCCESS) == stamp:
            return  # another process on this machine downloaded the same output meanwhile
        old = local.with_name(f"{local.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(local, old)  # readers that hold files open (memory maps) keep them
    try:
        os.rename(new, local)
    except OSError:
        if _read_local(local / SUCCESS) != stamp:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Keys


def cache_key(name: str, parts: dict[str, Any]) -> str:
    """Stable short hash of a step's name and everything it depends on, plus the package version."""
    blob = json.dumps({"step": name, "version": lstm_dist.__version__, **_plain(parts)}, sort_keys=True, default=str)
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
    """It ran because of --force (its own or an input's), so every step using it must run again too."""
    store: Store | None = field(default=None, repr=False, compare=False)
    """The work dir's store (how to reach a URI output); None: made from the URI."""

    @property
    def path(self) -> Path:
        """The output directory as a local path: itself for a local or mounted work dir; for a URI, a copy
        in the node-local cache, downloaded on first use (`localize`)."""
        return localize(self.uri, store=self.store)

    @property
    def cached(self) -> bool:
        return self.state == CACHED

    def file(self, relative: str) -> str:
        """A file inside the output, as a locator."""
        return f"{self.uri}/{relative}"


# ---------------------------------------------------------------------------------------------
# The engine


class Workflow:
    """Runs the steps of one pipeline execution under a work dir and keeps its run record.

    `steps` names every step the pipeline can run, so that `force` is checked before anything starts.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike,
        *,
        pipeline: str,
        steps: Sequence[str],
        tracker: NullTracker | None = None,
        force: Iterable[str] | None = None,
        progress: Callable[[str], None] = print,
    ) -> None:
        self.work_dir = str(work_dir)
        self.store = Store(work_dir)
        # Where attempts are written: in the work dir itself when it is local (committed by a rename), on
        # this machine's disk for a URI (committed by an upload), so that steps can use local file APIs.
        self.stage = self.store if self.store.local else Store(work_cache(self.store))
        self.pipeline = pipeline
        self.tracker = tracker or NullTracker()
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
            "mlflow_run_id": getattr(self.tracker, "run_id", None),
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
    ) -> StepResult:
        """Run `fn(out)` unless this step's output for these dependencies is already complete.

        `out` is the attempt directory, always a local path: `<work_dir>/<step>/<key>.partial` for a local
        work dir, a staging dir in this machine's cache (`work_cache`) for a URI one, uploaded to
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
        """
        return self.map(
            name,
            {None: extra or {}},
            lambda outs: {None: fn(outs[None])},
            config=config,
            inputs=inputs,
            resumable=resumable,
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
    ) -> dict[Any, StepResult]:
        """One step over many items (e.g. one per input file), each cached under its own key.

        `items` maps a label to the facts that identify that item; `fn` gets {label: out} for the items
        that must run (all at once, so it can start one Ray task each) and returns {label: outputs}.
        """
        inputs = inputs or {}
        forced = name in self.force or any(r.forced for r in inputs.values())
        results: dict[Any, StepResult] = {}
        todo: dict[Any, tuple[str, str, str, dict[str, Any]]] = {}
        for label, facts in items.items():
            parts = {"config": config, "inputs": {k: r.key for k, r in inputs.items()}, **facts}
            key = cache_key(name, parts)
            final = self.store.join(name, key)
            attempt = self.stage.join(name, key + PARTIAL)
            if not forced and self.store.exists(f"{final}/{SUCCESS}"):
                if not self.store.local:
                    self.stage.rmtree(attempt)  # an attempt here that another machine finished meanwhile
                results[label] = self._cached(name, label, key, final)
                continue
            if forced or not resumable:
                self.stage.rmtree(attempt)  # a forced rerun starts afresh; a non-resumable attempt cannot continue
                if not self.store.local:
                    self.store.rmtree(self.store.join(name, key + PARTIAL))  # and so does its shared part
            elif self.stage.exists(attempt):
                self.progress(f"[{_title(name, label)}] resuming an unfinished attempt in {attempt}")
            self.stage.mkdir(attempt)
            todo[label] = (key, final, attempt, parts)
        many = list(items) != [None]  # a map over labelled items (not a single step) also gets a summary line
        if results:  # one nested MLflow run for everything this step took from the cache
            cached = {label: (r.key, r.uri, r.uri, {}) for label, r in results.items()}
            with self.tracker.step(name, **{"lstm_dist.key": ",".join(r.key for r in results.values())}) as run:
                outputs = {label: r.outputs for label, r in results.items()}
                self._log_step(run, name, cached, inputs, outputs, seconds=0.0, cached=True)
        if not todo:
            if many:
                self.progress(f"[{name}] cached ({len(results)} item(s))")
            return results

        started = time.time()
        entries = {}
        for label, (key, _, attempt, _) in todo.items():
            self.progress(f"[{_title(name, label)}] running ({key}) ...")
            entries[label] = self._add_entry(name, label, key, state=RUNNING, uri=attempt, started=started)
        self._save_record()
        t0 = time.perf_counter()
        run_ctx = self.tracker.step(name, **{"lstm_dist.key": ",".join(k for k, *_ in todo.values())})
        try:
            with run_ctx as run:
                outputs = fn({label: attempt for label, (_, _, attempt, _) in todo.items()})
                seconds = time.perf_counter() - t0
                missing = [label for label in todo if label not in outputs]
                assert not missing, f"step {name} returned no outputs for {missing}"
                for label, (key, final, attempt, parts) in todo.items():
                    record = {
                        "name": name,
                        "label": label,
                        "key": key,
                        "key_parts": _plain(parts),
                        "inputs": {k: r.uri for k, r in inputs.items()},
                        "outputs": outputs[label],
                        "seconds": seconds,
                        "finished_at": time.time(),
                    }
                    self.stage.write_text(f"{attempt}/{RECORD}", json.dumps(record, indent=2, default=str))
                    self._commit(attempt, final)
                    results[label] = StepResult(
                        name=name, key=key, uri=final, state=DONE, seconds=seconds, outputs=outputs[label],
                        label=label, forced=forced, store=self.store,
                    )  # fmt: skip
                    entries[label].update(state=DONE, seconds=seconds, uri=final)
                self._log_step(run, name, todo, inputs, outputs, seconds=seconds, cached=False)
        except BaseException as exc:
            state = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
            for entry in entries.values():
                entry.update(state=state, seconds=time.perf_counter() - t0, error=_one_line(exc))
            self._save_record()
            raise
        self._save_record()
        for label in todo:
            self.progress(f"[{_title(name, label)}] done in {seconds:.1f}s -> {results[label].uri}")
            self.results.append(results[label])
        if many:
            self.progress(f"[{name}] done in {seconds:.1f}s: {len(todo)} ran, {len(items) - len(todo)} cached")
        return {label: results[label] for label in items}

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

    def _commit(self, attempt: str, final: str) -> None:
        """Put a finished attempt (with its _STEP.json) in place, then write `_SUCCESS`, last.

        Locally a rename. For a URI an upload of the staging dir; the staging dir then becomes this
        machine's local copy of the output, so `StepResult.path` needs no download here.
        """
        # Unique per commit: a local copy made before a forced rerun no longer matches and is replaced.
        stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {self.run_id}\n"
        if self.store.local:
            self.store.commit_dir(attempt, final)
            self.store.write_text(f"{final}/{SUCCESS}", stamp)
            return
        self.store.rmtree(final)  # a forced rerun replaces the old output; it was already no longer complete
        self.store.upload(attempt, final)
        self.store.write_text(f"{final}/{SUCCESS}", stamp)
        self.store.rmtree(f"{final}{PARTIAL}")  # the attempt's shared part (`shared_dir`), if it had one
        Path(attempt, SUCCESS).write_text(stamp)
        _, name, key = final.rsplit("/", 2)
        local = work_cache(self.store) / name / key
        _swap_in(Path(attempt), local, stamp)
        shutil.rmtree(attempt, ignore_errors=True)  # left only when a copy with this stamp was already there

    def _cached(self, name: str, label: Any, key: str, final: str) -> StepResult:
        record = json.loads(self.store.read_text(f"{final}/{RECORD}"))
        result = StepResult(
            name=name, key=key, uri=final, state=CACHED, seconds=0.0, outputs=record["outputs"], label=label,
            store=self.store,
        )  # fmt: skip
        self.progress(f"[{_title(name, label)}] cached ({key}) -> {final}")
        self._add_entry(name, label, key, state=CACHED, uri=final, started=time.time(), seconds=0.0)
        self._save_record()
        self.results.append(result)
        return result

    def _log_step(self, run, name, todo, inputs, outputs, *, seconds: float, cached: bool) -> None:
        """The nested MLflow run of a step: key, inputs (lineage), outputs and timing."""
        labels = list(todo)
        run.set_tags(
            {
                "lstm_dist.state": CACHED if cached else DONE,
                "lstm_dist.inputs": json.dumps({k: {"key": r.key, "uri": r.uri} for k, r in inputs.items()}),
                "lstm_dist.output": todo[labels[0]][1] if len(labels) == 1 else self.store.join(name),
                "lstm_dist.workflow_run": self.run_id,
            }
        )
        run.log_metrics({"seconds": seconds, "num_items": len(labels)})
        detail = {
            str(label): {"key": todo[label][0], "uri": todo[label][1], "outputs": outputs[label]} for label in labels
        }
        run.log_text(json.dumps(detail, indent=2, default=str), "step.json")

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
        self.store.mkdir(self.store.join(RUNS))
        self.store.write_text(self.store.join(RUNS, f"{self.run_id}.json"), json.dumps(self.record, indent=1))

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
    store = Store(work_dir)
    names = [n for n in store.listdir(store.join(RUNS)) if n.endswith(".json")]
    runs = []
    for name in sorted(names, reverse=True)[: limit + 5]:  # a few more: runs started in the same millisecond
        try:
            run = json.loads(store.read_text(store.join(RUNS, name)))
        except (OSError, ValueError):
            continue  # a record being replaced right now; the next call sees it
        if run["status"] == RUNNING and run.get("host") == socket.gethostname() and not _alive(run.get("pid")):
            run["status"] = INTERRUPTED
            for step in run["steps"]:
                if step["state"] == RUNNING:
                    step["state"] = INTERRUPTED
        runs.append(run)
    return sorted(runs, key=lambda r: r["started_at"], reverse=True)[:limit]


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


# ---------------------------------------------------------------------------------------------
# Input fingerprints: what "new data" means for caching and for retraining


def fingerprint_files(files: Sequence[str], *, cache: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """{file: {size, mtime_ns, sha256}} for input files (paths or URIs).

    The content hash decides; size and mtime only say when a file must be hashed again, through the
    optional `cache` file (a JSON map kept in the work dir), so unchanged inputs are not re-read each run.
    A file that was touched but not changed keeps its hash: no rerun, no retrain.
    """
    known: dict[str, dict[str, Any]] = {}
    cache_store, cache_loc = None, ""
    if cache is not None:
        parent, _, base = str(cache).rpartition("/")
        cache_store = Store(parent or ".")
        cache_loc = cache_store.join(base)
        if cache_store.exists(cache_loc):
            try:
                known = json.loads(cache_store.read_text(cache_loc))
            except ValueError:
                known = {}
    out: dict[str, dict[str, Any]] = {}
    for locator in files:
        store = Store(locator)
        info = store.fs.get_file_info(store._inner(store.root))
        size, mtime = int(info.size or 0), int(info.mtime_ns or 0)
        old = known.get(locator)
        if old and old["size"] == size and old["mtime_ns"] == mtime:
            out[locator] = old
            continue
        digest = hashlib.sha256()
        with store.fs.open_input_stream(store._inner(store.root)) as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        out[locator] = {"size": size, "mtime_ns": mtime, "sha256": digest.hexdigest()}
    if cache_store is not None and out != {k: known.get(k) for k in out}:
        cache_store.mkdir(cache_store.root)
        cache_store.write_text(cache_loc, json.dumps({**known, **out}, indent=1))
    return out


def data_fingerprint(files: dict[str, dict[str, Any]], *, extra: Any = None) -> str:
    """One hash for a whole input: the files' contents (not their names' order) plus e.g. the data config."""
    blob = json.dumps(
        {"files": {f: v["sha256"] for f, v in sorted(files.items())}, "extra": _plain(extra)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
