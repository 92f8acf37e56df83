"""`lstm-dist data ingest` and `lstm-dist data inspect`, as plain functions the CLI wires up.

They return text to print and never start Ray: the CLI runs `ray.init` before `ingest_command`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstm_dist.config import PipelineConfig
from lstm_dist.data.errors import DataError
from lstm_dist.data.ingest import IngestReport, ingest, split_coverage
from lstm_dist.data.integrity import RERUN, verify_shards
from lstm_dist.data.manifest import Manifest

DEFAULT_SUBDIR = "data/shards"


def ingest_command(cfg: PipelineConfig, *, out_dir: str | None = None) -> tuple[Manifest, IngestReport, str]:
    """Ingest `cfg.data` into `out_dir` (default `<work_dir>/data/shards`); returns the manifest, report and text."""
    work_dir = Path(cfg.workflow.work_dir).resolve()
    out = Path(out_dir).resolve() if out_dir else work_dir / DEFAULT_SUBDIR
    manifest, report = ingest(cfg.data, out_dir=str(out), work_dir=str(work_dir))
    text = f"shards: {out}\n{report.summary()}\n\n{inspect_text(manifest)}"
    return manifest, report, text


def inspect_command(shard_dir: str, *, verify: bool = False, max_series: int = 10) -> str:
    """Describe a shard directory; with `verify`, recompute every shard's sha256 against the manifest and
    raise DataError (the CLI's exit code 1) naming the shards that differ."""
    manifest = Manifest.load(shard_dir)
    text = inspect_text(manifest, max_series=max_series)
    if verify:
        problems = verify_shards(shard_dir)
        if problems:
            raise DataError(
                f"{len(problems)} problem(s) in shard set {shard_dir}, it differs from its manifest: "
                f"{'; '.join(problems[:5])}; {RERUN}"
            )
        text += "\nchecksums: all shards match"
    return text


def inspect_text(manifest: Manifest, *, max_series: int = 10) -> str:
    """A readable description of a manifest: columns, shapes, splits, storage, shards and per-series stats."""
    m, t = manifest, manifest.totals
    ratio = t.num_bytes / max(t.raw_numeric_bytes, 1)
    lines = [
        f"format v{m.format_version}, created {m.created_at}; freq {m.frequency().alias}; lookback {m.lookback}, "
        f"horizon {m.horizon}, stride {m.stride}",
        f"series: {t.num_series}, rows: {t.num_rows:,} (stored {t.num_stored_rows:,} with halos"
        f"{' and padding' if t.num_pad_rows else ''})",
        "windows: " + ", ".join(f"{k} {v:,}" for k, v in t.windows.items()),
        (split_coverage(t.series_per_split, num_padded=sum(s.pad > 0 for s in m.series)) if t.series_per_split else "")
        + (f"; {t.num_pad_rows:,} padding rows stored, mask column '{m.pad_col}'" if m.pad_col else ""),
        f"x features ({len(m.x_features)}): {m.x_features}",
        f"future features ({len(m.future_features)}): {m.future_features}",
        f"targets: {m.target_cols}; scaler {m.scaler} per {m.scaler_scope}, fitted on train rows only",
        f"storage: {t.num_shards} shard(s), {t.num_bytes / 2**20:.2f} MiB = {ratio:.2f}x the raw numeric data",
        "",
        f"{'shard':<18}{'rows':>10}{'MiB':>8}{'series':>8}{'train':>10}{'val':>9}{'test':>9}",
    ]
    for s in m.shards[:20]:
        lines.append(
            f"{s.file:<18}{s.num_rows:>10,}{s.num_bytes / 2**20:>8.2f}{len(s.segments):>8}"
            f"{s.windows['train']:>10,}{s.windows['val']:>9,}{s.windows['test']:>9,}"
        )
    if len(m.shards) > 20:
        lines.append(f"... {len(m.shards) - 20} more shards")
    lines += ["", f"{'series':<14}{'rows':>8}{'val@':>8}{'test@':>8}  first .. last (UTC)          target loc/scale"]
    tgt = m.target_cols[0]
    for s in m.series[:max_series]:
        first = str(np.datetime64(s.first_timestamp, "s"))
        last = str(np.datetime64(s.last_timestamp, "s"))
        st = s.scaler[tgt]
        lines.append(
            f"{s.name:<14}{s.num_rows:>8,}{s.val_start:>8}{s.test_start:>8}  {first} .. {last}  {st.loc:.4g}/{st.scale:.4g}"
        )
    if len(m.series) > max_series:
        lines.append(f"... {len(m.series) - max_series} more series")
    return "\n".join(lines)
