"""The storage door: path-or-URI -> pyarrow filesystem, `Store`, this machine's cache, file fingerprints.

A locator is a plain path or a URI (`s3://…`, `gs://…`; for an S3-compatible store other than AWS,
`AWS_ENDPOINT_URL` names its endpoint, which pyarrow honours). Everything that reads or writes the work dir
or the inputs goes through `pyarrow.fs`, opened here.

Steps write with local file APIs and memory-map Arrow files, so for a URI work dir this machine keeps a
local stand-in for it, in its node cache (`node_cache`):

    <cache>/work/<hash of work_dir>/train/3f9c0a1d2e4b5c6d.partial/   an attempt, staged on this machine
    <cache>/work/<hash of work_dir>/train/3f9c0a1d2e4b5c6d/          the local copy of a committed output

`<cache>` is `$LSTM_DIST_CACHE`, else `$XDG_CACHE_HOME/lstm_dist`, else `~/.cache/lstm_dist`; it can be
deleted whenever no run is using it. A committed output is a directory whose `_SUCCESS` is written last;
`local_copy` downloads it once per machine and keeps the copy while that `_SUCCESS` stays the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lstm_dist.config import PipelineConfig, dump_yaml

CACHE_ENV = "LSTM_DIST_CACHE"  # the node cache's root (staging and local copies for URI work dirs)
SUCCESS = "_SUCCESS"  # written last into a committed directory: the only mark that it is complete
RECORD = "_STEP.json"  # the workflow's record at the top of a step output; `local_copy` finds the top by it


class StorageError(RuntimeError):
    """A locator does not name what it should (no committed step output there), or the work dir is not writable."""


def filesystem(locator: str | os.PathLike) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, prefix that turns such a path back into a locator) for a path or URI."""
    locator = str(locator)
    if "://" in locator:
        fs, inner = pafs.FileSystem.from_uri(locator)
        return fs, inner, locator.split("://", 1)[0] + "://"
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(locator)), ""


class Store:
    """The work dir's filesystem: `pyarrow.fs` underneath, locators (plain paths or URIs) on top."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.fs, inner, self.prefix = filesystem(root)
        self.root = self.prefix + inner.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def inner(self, loc: str) -> str:
        """The path of a locator inside `self.fs`."""
        return loc[len(self.prefix) :] if self.prefix else loc

    def exists(self, loc: str) -> bool:
        return self.fs.get_file_info(self.inner(loc)).type != pafs.FileType.NotFound

    def mkdir(self, loc: str) -> None:
        self.fs.create_dir(self.inner(loc), recursive=True)

    def rmtree(self, loc: str) -> None:
        if self.exists(loc):
            self.fs.delete_dir(self.inner(loc))

    def read_text(self, loc: str) -> str:
        with self.fs.open_input_stream(self.inner(loc)) as f:
            return f.read().decode()

    def write_text(self, loc: str, text: str) -> None:
        """Replace a small file in one step: temp name + rename locally; a single PUT on object stores."""
        if self.local:
            tmp = f"{loc}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open_output_stream(self.inner(tmp)) as f:
                f.write(text.encode())
            self.fs.move(self.inner(tmp), self.inner(loc))
        else:
            with self.fs.open_output_stream(self.inner(loc)) as f:
                f.write(text.encode())

    def listdir(self, loc: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.inner(loc), allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def upload(self, local: str | os.PathLike, loc: str) -> None:
        """Copy a local file or directory (recursively) to `loc`."""
        pafs.copy_files(
            str(local), self.inner(loc), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )

    def download(self, loc: str, local: str | os.PathLike) -> None:
        """Copy the file or directory (recursively) at `loc` to a local path."""
        pafs.copy_files(
            self.inner(loc), str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )

    def commit(self, attempt: str | os.PathLike, final: str, *, stamp: str) -> None:
        """Put a finished local directory `attempt` in place at `final`, then write `_SUCCESS` (`stamp`), last.

        Locally a rename (atomic). For a URI an upload; `attempt` then becomes this machine's copy of the
        output, so `local_copy` needs no download here. `stamp` should be unique per commit: a local copy
        made before a rerun no longer matches and is replaced."""
        self.rmtree(final)  # a rerun replaces the old output; it was already no longer complete
        if self.local:
            self.fs.move(self.inner(str(attempt)), self.inner(final))
            self.write_text(f"{final}/{SUCCESS}", stamp)
            return
        self.upload(attempt, final)
        self.write_text(f"{final}/{SUCCESS}", stamp)
        Path(attempt, SUCCESS).write_text(stamp)
        _swap_in(Path(attempt), self._copy_dir(final), stamp)
        shutil.rmtree(attempt, ignore_errors=True)  # left only when a copy with this stamp was already there

    def _copy_dir(self, loc: str) -> Path:
        """Where this machine keeps its copy of `loc` (a directory below the root)."""
        return node_cache(self).joinpath(*loc[len(self.root) + 1 :].split("/"))


# ---------------------------------------------------------------------------------------------
# The node cache and local copies


def node_cache(work_dir: str | os.PathLike | Store | None = None) -> Path:
    """This machine's cache: `$LSTM_DIST_CACHE`, else `$XDG_CACHE_HOME/lstm_dist`, else `~/.cache/lstm_dist`.

    With `work_dir`: the local directory standing for that work dir on this machine: the work dir itself
    when it is local (or mounted); for a URI, `<cache>/work/<hash of the URI>/` (staging dirs, local copies
    of outputs, anything a pipeline must have as local files)."""
    if work_dir is None:
        if os.environ.get(CACHE_ENV):
            return Path(os.environ[CACHE_ENV]).expanduser().resolve()
        return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser().resolve() / "lstm_dist"
    store = work_dir if isinstance(work_dir, Store) else Store(work_dir)
    if store.local:
        return Path(store.root)
    return node_cache() / "work" / hashlib.sha256(store.root.encode()).hexdigest()[:16]


def local_copy(locator: str | os.PathLike, *, store: Store | None = None) -> Path:
    """Any path inside a committed step output `<work_dir>/<step>/<key>/…` as a local path on this machine.

    A local (or mounted) path is returned as it is. For a URI the step output is downloaded once per
    machine into `node_cache(work_dir)/<step>/<key>/` (into a temp dir, then renamed, so a reader never
    sees half a copy) and reused while its `_SUCCESS` stays the same (a rerun writes a new one); each call
    reads the remote `_SUCCESS` (one small GET). So a driver hands Ray tasks on any node the same locator
    and each node reads its own copy. `store`: the work dir's `Store`, when the URI alone cannot say how to
    reach it (e.g. a work dir given with an `?endpoint_override=` query); without it the output is the
    nearest directory above the locator that holds a `_STEP.json`.
    """
    locator = str(locator).rstrip("/")
    if "://" not in locator:
        return Path(locator)
    if store is not None and locator.startswith(store.root + "/"):
        name, key, *relative = locator[len(store.root) + 1 :].split("/")
        output = store.join(name, key)
    else:
        output, relative = _enclosing_output(locator)
        store = Store(output.rsplit("/", 2)[0])
    return _fetch_output(store, output).joinpath(*relative)


def _enclosing_output(locator: str, *, levels: int = 4) -> tuple[str, list[str]]:
    """(the step output holding `locator`, the path below it), found by its `_STEP.json` at most `levels` up."""
    base, relative = locator, []
    store = Store(base)
    for _ in range(levels + 1):
        if store.exists(f"{base}/{RECORD}"):  # not _SUCCESS: a shard set inside an output has its own
            return base, relative[::-1]
        base, _, name = base.rpartition("/")
        relative.append(name)
        if "://" not in base or base.endswith(":/"):
            break
    raise StorageError(f"{locator} is not inside a step output (no {RECORD} above it)")


def _fetch_output(store: Store, output: str) -> Path:
    """The local copy of the committed output `output`, downloaded unless this machine has it already."""
    try:
        stamp = store.read_text(f"{output}/{SUCCESS}")
    except OSError as exc:  # FileNotFoundError among them
        raise StorageError(f"{output} is not a complete step output (no {SUCCESS}): {exc}") from exc
    local = store._copy_dir(output)
    if _read_local(local / SUCCESS) == stamp:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f"{local.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        store.download(output, tmp)
        tmp.mkdir(exist_ok=True)  # an output with no files but the markers still gets its directory
        (tmp / SUCCESS).write_text(stamp)
        _swap_in(tmp, local, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


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


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """`src` under a second name: a hard link (no bytes written), a copy where links fail (another
    filesystem, or links not allowed)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def save_resolved(cfg: PipelineConfig) -> Path | str:
    """Create the work dir and save the resolved config there as last_config.yaml (what a run was started with).

    Returns its locator: a path, or a URI for an object-store work dir."""
    store = Store(cfg.workflow.work_dir)
    path = store.join("last_config.yaml")
    try:  # the first write of a run: an unwritable work dir is named here, before Ray or MLflow start
        store.mkdir(store.root)
        store.write_text(path, dump_yaml(cfg))
    except OSError as exc:
        raise StorageError(
            f"workflow.work_dir '{store.root}' is not writable ({exc.strerror or exc}); make it writable "
            "or point workflow.work_dir=DIR at a directory you can write"
        ) from exc
    return Path(path) if store.local else path


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
        fs, inner, _ = filesystem(locator)
        info = fs.get_file_info(inner)
        size, mtime = int(info.size or 0), int(info.mtime_ns or 0)
        old = known.get(locator)
        if old and old["size"] == size and old["mtime_ns"] == mtime:
            out[locator] = old
            continue
        digest = hashlib.sha256()
        with fs.open_input_stream(inner) as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        out[locator] = {"size": size, "mtime_ns": mtime, "sha256": digest.hexdigest()}
    if cache_store is not None and out != {k: known.get(k) for k in out}:
        cache_store.mkdir(cache_store.root)
        cache_store.write_text(cache_loc, json.dumps({**known, **out}, indent=1))
    return out


def data_fingerprint(files: dict[str, dict[str, Any]]) -> str:
    """One hash for a whole input: the files' contents (not their names' order)."""
    # "extra": None keeps the hashes that registered versions are tagged with (it once held a config).
    blob = json.dumps({"files": {f: v["sha256"] for f, v in sorted(files.items())}, "extra": None}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
