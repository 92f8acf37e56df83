"""Is a shard set what its manifest says? Checked before an ingest commits (`check_output`), when a shard set
is opened for training or evaluation (`require_intact`) and by `data inspect --verify` (`verify_shards`).

A flipped byte or a truncated copy then fails naming the shard, instead of being trained on. The checksum is
the sha256 the ingest recorded per shard (about 0.7 GB/s here); each process hashes a file once per version
of it (path, size, mtime, inode), so the train and val datasets of a worker share the work.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from lstm_dist.data.errors import DataError
from lstm_dist.data.manifest import MANIFEST_FILE, Manifest, ShardInfo

RERUN = (
    "rerun the ingest: `lstm-dist run CONFIG --force shard` for a pipeline's shard set, "
    "`lstm-dist data ingest CONFIG` for a standalone one"
)
_verified: set[tuple[str, int, int, int, str]] = set()  # shard file versions whose sha256 matched, this process


def manifest_problems(manifest: Manifest) -> list[str]:
    """Series whose scaler stats or Box-Cox lambdas are not finite numbers."""
    problems = []
    for s in manifest.series:
        bad = [c for c, st in s.scaler.items() if not (math.isfinite(st.loc) and math.isfinite(st.scale))]
        bad += [f"{c} (Box-Cox lambda)" for c, lam in s.target_lambda.items() if not math.isfinite(lam)]
        if bad:
            problems.append(f"series '{s.name}' has non-finite scaler stats for {bad}")
    return problems


def shard_problem(
    directory: str | os.PathLike, shard: ShardInfo, *, checksum: bool, remember: bool = False
) -> str | None:
    """What is wrong with one shard file (missing, another size, another sha256), or None. `remember`: skip
    the hash of a file version that matched before in this process."""
    path = Path(directory) / shard.file
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{shard.file} is missing"
    if st.st_size != shard.num_bytes:
        return f"{shard.file} has {st.st_size} bytes, the manifest says {shard.num_bytes}"
    version = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, shard.sha256)
    if not checksum or (remember and version in _verified):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != shard.sha256:
        return f"{shard.file} has another sha256 than the manifest records (it changed after the ingest)"
    _verified.add(version)
    return None


def verify_shards(path: str | os.PathLike) -> list[str]:
    """Everything wrong with the shard set at `path` (empty: intact): an unreadable or unfinished manifest,
    non-finite scaler stats, shard files missing, resized or with another checksum. For `data inspect
    --verify` and a workflow check that a cached shard step is still valid."""
    try:
        manifest = Manifest.load(path)
    except (DataError, ValueError, OSError) as err:  # ValueError: a manifest pydantic cannot read
        return [str(err).splitlines()[0]]
    files = [shard_problem(path, s, checksum=True) for s in manifest.shards]
    return manifest_problems(manifest) + [p for p in files if p]


def require_intact(directory: str | os.PathLike, manifest: Manifest) -> None:
    """Raise DataError naming the damaged shards of a shard set about to be read, and how to rebuild it."""
    problems = manifest_problems(manifest)
    problems += [p for s in manifest.shards if (p := shard_problem(directory, s, checksum=True, remember=True))]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"shard set {directory} is damaged: {'; '.join(problems[:3])}{more}; {RERUN}")


def check_output(directory: str | os.PathLike, manifest: Manifest) -> None:
    """Before an ingest commits: its manifest.json parses back, its scaler stats are finite and every shard
    file has the size recorded. Raises DataError otherwise (then no `_SUCCESS` is written)."""
    bad = manifest_problems(manifest)
    if bad:
        raise DataError(
            f"{'; '.join(bad[:3])}: the values are too large (or too spread) to scale in float64; check those "
            "series for corrupt values, or rescale the column in the input (e.g. to thousands)"
        )
    try:
        back = Manifest.model_validate_json((Path(directory) / MANIFEST_FILE).read_text())
    except (ValueError, OSError) as err:
        raise DataError(f"{directory}/{MANIFEST_FILE} does not read back: {str(err).splitlines()[0]}") from None
    files = [p for s in back.shards if (p := shard_problem(directory, s, checksum=False))]
    if files:
        raise DataError(f"shards written to {directory} do not match the manifest: {'; '.join(files[:3])}")
