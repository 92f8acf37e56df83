"""A small, explicit workflow engine: cached, resumable steps with atomic completion.

Each step has a cache key (hash of its config section, its inputs' keys and the package
version). Its output lives in `<work_dir>/<step>/<key>/`; the step is complete only when
`_SUCCESS` exists there, written last. A complete step is skipped on re-run, so a pipeline
killed halfway resumes where it stopped; a step in `force` reruns even when complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lstm_dist
from lstm_dist.tracking import NullTracker

SUCCESS = "_SUCCESS"
RECORD = "_STEP.json"


@dataclass
class StepResult:
    """What a step produced: where, under which key, whether it came from the cache, and its outputs."""

    name: str
    key: str
    path: Path
    cached: bool
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


def cache_key(name: str, parts: dict[str, Any]) -> str:
    """Stable short hash of a step's name, config and inputs, plus the package version."""
    blob = json.dumps({"step": name, "version": lstm_dist.__version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    return (path / SUCCESS).exists()


class Workflow:
    """Runs steps in order under a work dir, recording each as a nested tracker run."""

    def __init__(self, work_dir: str | Path, *, tracker: NullTracker | None = None, force: set[str] | None = None):
        self.work_dir = Path(work_dir)
        self.tracker = tracker or NullTracker()
        self.force = set(force or ())
        self.results: list[StepResult] = []
        self._forcing = False

    def step(
        self,
        name: str,
        fn: Callable[[Path], dict[str, Any]],
        *,
        key_parts: dict[str, Any],
        progress: Callable[[str], None] = print,
    ) -> StepResult:
        """Run `fn(out_dir)` unless this step's output for `key_parts` is already complete.

        `fn` writes into `out_dir` (which may hold a previous, unfinished attempt to resume from)
        and returns a JSON-able dict of outputs, saved beside `_SUCCESS` and returned on cache hits.
        """
        key = cache_key(name, key_parts)
        out = self.work_dir / name / key
        # --force STEP reruns that step and every step after it.
        self._forcing = self._forcing or name in self.force
        if is_complete(out) and not self._forcing:
            record = json.loads((out / RECORD).read_text())
            result = StepResult(name=name, key=key, path=out, cached=True, seconds=0.0, outputs=record["outputs"])
            progress(f"[{name}] cached ({key}) -> {out}")
            with self.tracker.step(name, key=key, cached=True) as run:
                run.set_tags({"output": str(out)})
            self.results.append(result)
            return result
        if is_complete(out):
            (out / SUCCESS).unlink()  # forced: the old output no longer counts as complete
        out.mkdir(parents=True, exist_ok=True)
        progress(f"[{name}] running ({key}) ...")
        started = time.perf_counter()
        with self.tracker.step(name, key=key, cached=False) as run:
            outputs = fn(out)
            seconds = time.perf_counter() - started
            run.log_metrics({"seconds": seconds})
            run.set_tags({"output": str(out)})
        record = {"name": name, "key": key, "key_parts": key_parts, "outputs": outputs, "seconds": seconds}
        tmp = out / (RECORD + ".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.rename(out / RECORD)
        (out / SUCCESS).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        progress(f"[{name}] done in {seconds:.1f}s -> {out}")
        result = StepResult(name=name, key=key, path=out, cached=False, seconds=seconds, outputs=outputs)
        self.results.append(result)
        return result

    def summary(self) -> list[dict[str, Any]]:
        return [
            {k: str(v) if isinstance(v, Path) else v for k, v in asdict(r).items() if k != "outputs"}
            for r in self.results
        ]


def reset_incomplete(path: Path) -> None:
    """Remove a directory left by an unfinished attempt that cannot be resumed (e.g. half-written shards)."""
    if path.exists() and not is_complete(path):
        shutil.rmtree(path)


def fingerprint_inputs(path: str | None) -> list[tuple[str, int, int]]:
    """(file, size, mtime) of every input file behind a path, directory, glob or URI; [] for generated data.

    Cheap (no reading), and changes whenever a file is replaced, grown or touched.
    """
    if path is None:
        return []
    import glob

    import pyarrow.fs as pafs

    if "://" not in path and any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
        return [(f, *_stat(pafs.LocalFileSystem(), f)) for f in files]
    fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        infos = [i for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))]
    else:
        infos = [info]
    return sorted((i.path, int(i.size or 0), int(i.mtime_ns or 0)) for i in infos)


def _stat(fs, path: str) -> tuple[int, int]:
    info = fs.get_file_info(path)
    return int(info.size or 0), int(info.mtime_ns or 0)
