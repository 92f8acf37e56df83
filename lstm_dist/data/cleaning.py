"""Per-series cleaning on sorted numpy blocks: sort, duplicates, frequency grid and gaps, missing values.

A `Block` holds several series back to back (series i in rows offsets[i]:offsets[i+1]); every operation is
vectorised over the whole block and never lets one series' values leak into another's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_dist.data.errors import DataError
from lstm_dist.data.frequency import Frequency, valid_aliases
from lstm_dist.data.readers import Notes


@dataclass
class Block:
    names: list[str]
    """Series names, sorted."""
    offsets: np.ndarray
    """int64 [S+1]: series i is rows offsets[i]:offsets[i+1]."""
    ts: np.ndarray
    """int64 [N] unix seconds, increasing within a series."""
    values: np.ndarray
    """float64 [N, V] value columns."""

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take_series(self, keep: np.ndarray) -> Block:
        """The block restricted to the series where `keep` [S] is True."""
        rows = np.repeat(keep, self.lengths)
        lengths = self.lengths[keep]
        return Block(
            names=[n for n, k in zip(self.names, keep, strict=True) if k],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            ts=self.ts[rows],
            values=self.values[rows],
        )

    def take_rows(self, keep: np.ndarray) -> Block:
        """The block without the rows where `keep` [N] is False (series left empty are dropped)."""
        codes = self.codes()[keep]
        counts = np.bincount(codes, minlength=len(self.names))
        nonempty = counts > 0
        return Block(
            names=[n for n, k in zip(self.names, nonempty, strict=True) if k],
            offsets=np.concatenate([[0], np.cumsum(counts[nonempty])]).astype(np.int64),
            ts=self.ts[keep],
            values=self.values[keep],
        )

    def codes(self) -> np.ndarray:
        """int64 [N] series position of each row."""
        return np.repeat(np.arange(len(self.names)), self.lengths)


def _iso(ts: int) -> str:
    return str(np.datetime64(int(ts), "s"))


def build_block(names: list[str], codes: np.ndarray, ts: np.ndarray, values: np.ndarray, *, notes: Notes) -> Block:
    """Sort rows by (series, timestamp), stably, so among duplicates the later input row stays last.

    `names` must be sorted and `codes` [N] index into it.
    """
    by_series = np.argsort(codes, kind="stable")  # input order within each series
    back = (np.diff(ts[by_series]) < 0) & (np.diff(codes[by_series]) == 0)
    if back.any():
        notes.add("unsorted_series_sorted", len(np.unique(codes[by_series][1:][back])))
    order = np.lexsort((ts, codes))
    counts = np.bincount(codes, minlength=len(names))
    keep = counts > 0
    return Block(
        names=[n for n, k in zip(names, keep, strict=True) if k],
        offsets=np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64),
        ts=ts[order],
        values=values[order],
    )


def merge_parts(
    parts: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate (names, codes, ts, values) parts of several files onto one sorted name list, in part order."""
    names = sorted(set().union(*(p[0] for p in parts))) if parts else []
    where = {n: i for i, n in enumerate(names)}
    codes = [np.asarray([where[n] for n in p[0]], dtype=np.int64)[p[1]] if len(p[1]) else p[1] for p in parts]
    width = parts[0][3].shape[1] if parts else 0
    return (
        names,
        np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64),
        np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=np.int64),
        np.concatenate([p[3] for p in parts]) if parts else np.zeros((0, width)),
    )


def dedupe(block: Block, *, policy: str, notes: Notes) -> Block:
    """Handle rows with equal (series, timestamp): error | keep_last | mean."""
    codes = block.codes()
    dup = (codes[1:] == codes[:-1]) & (block.ts[1:] == block.ts[:-1])  # [N-1] row i+1 repeats row i
    if not dup.any():
        return block
    first = int(np.argmax(dup))
    if policy == "error":
        raise DataError(
            f"series '{block.names[codes[first]]}' has {int(dup.sum())} duplicate (series, timestamp) rows, "
            f"first at {_iso(block.ts[first])}; set data.duplicates to keep_last or mean"
        )
    is_new = np.concatenate([[True], ~dup])  # [N] first row of each (series, ts) group
    starts = np.flatnonzero(is_new)
    if policy == "keep_last":
        last = np.concatenate([starts[1:] - 1, [len(is_new) - 1]])
        keep = np.zeros(len(is_new), dtype=bool)
        keep[last] = True
        notes.add("duplicate_rows_dropped", int(dup.sum()))
        return block.take_rows(keep)
    if policy == "mean":
        valid = ~np.isnan(block.values)
        sums = np.add.reduceat(np.where(valid, block.values, 0.0), starts, axis=0)
        counts = np.add.reduceat(valid.astype(np.int64), starts, axis=0)
        merged = block.take_rows(is_new)
        merged.values = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        notes.add("duplicate_rows_averaged", int(dup.sum()))
        return merged
    raise DataError(f"data.duplicates must be error, keep_last or mean, got '{policy}'")


def infer_freq(block_ts: np.ndarray, offsets: np.ndarray) -> dict[int, int]:
    """Histogram {step in seconds: count} of the positive steps between consecutive rows of each series."""
    diffs = np.diff(block_ts)
    inside = np.ones(len(diffs), dtype=bool)
    inside[offsets[1:-1] - 1] = False  # a step across two series is not a step
    diffs = diffs[inside & (diffs > 0)]
    steps, counts = np.unique(diffs, return_counts=True)
    return {int(s): int(c) for s, c in zip(steps, counts, strict=True)}


def _grid_error(block: Block, i: int, freq: Frequency) -> DataError:
    """Rows i and i+1 of one series are not whole steps of `freq` apart: name both and the aliases that fit."""
    a, b = int(block.ts[i]), int(block.ts[i + 1])
    fits = [x for x in valid_aliases(a, b, tz=freq.tz) if x != freq.alias][:5]
    hint = f"data.freq values that fit these two: {', '.join(fits)}; " if fits else ""
    if freq.fixed:
        what = f"{b - a} s apart, not a multiple of the frequency {freq.seconds} s ({freq.alias})"
    else:
        what = f"not both on the grid of data.freq = {freq.alias}"
    return DataError(
        f"series '{block.names[block.codes()[i]]}': timestamps {_iso(a)} and {_iso(b)} are {what}; {hint}"
        "set data.freq to the sampling period of the data (a pandas offset alias) or resample it"
    )


def regularize(block: Block, *, freq: Frequency, gaps: str, notes: Notes) -> tuple[Block, np.ndarray]:
    """Check every row is on the `freq` grid of its series; fill gaps (policy `gaps`) with NaN rows to be filled later.

    The grid of a series starts at its first row (fixed frequencies) or is the calendar grid of the alias
    (month starts, business days, ...). Returns the block on a complete grid and a mask [N] of the inserted rows.
    """
    codes = block.codes()
    first_ts = block.ts[block.offsets[:-1]]  # [S]
    inside = codes[1:] == codes[:-1]
    pos = None
    if freq.fixed:  # the fast path (10M rows): integer steps between neighbours
        diffs = np.diff(block.ts)
        off, on_grid = inside & (diffs % freq.seconds != 0), np.ones(1, dtype=bool)
        steps = diffs // freq.seconds
    else:
        pos, on_grid = freq.positions(block.ts, first_ts[codes])  # [N] steps from the series' first row
        off, steps = inside & ~on_grid[1:], np.diff(pos)
    if off.any() or not on_grid.all():
        i = int(np.argmax(off)) if off.any() else max(int(np.argmax(~on_grid)) - 1, 0)
        raise _grid_error(block, i, freq)
    gap = inside & (steps > 1)
    if not gap.any():
        return block, np.zeros(len(block.ts), dtype=bool)
    if gaps == "error":
        i = int(np.argmax(gap))
        grid = f"{freq.seconds} s" if freq.fixed else freq.alias
        raise DataError(
            f"series '{block.names[codes[i]]}' has {int(gap.sum())} gap(s) in its {grid} grid, the first of "
            f"{int(steps[i]) - 1} missing step(s) between {_iso(block.ts[i])} and {_iso(block.ts[i + 1])}; "
            "set data.gaps to ffill, interpolate or zero to fill gaps"
        )
    if pos is None:
        pos, _ = freq.positions(block.ts, first_ts[codes])
    lengths = pos[block.offsets[1:] - 1] + 1  # [S] steps from first to last row, inclusive
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    where = offsets[codes] + pos  # [N] where each old row lands
    total = int(offsets[-1])
    values = np.full((total, block.values.shape[1]), np.nan)
    values[where] = block.values
    inserted = np.ones(total, dtype=bool)
    inserted[where] = False
    ts = freq.at(np.arange(total) - np.repeat(offsets[:-1], lengths), np.repeat(first_ts, lengths))
    notes.add("gap_rows_inserted", int(inserted.sum()))
    return Block(names=block.names, offsets=offsets, ts=ts, values=values), inserted


def _prev_valid(valid: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """[N] index of the latest valid row at or before each row within its series, -1 if none."""
    idx = np.maximum.accumulate(np.where(valid, np.arange(len(valid)), -1))
    return np.where(idx >= seg_start, idx, -1)


def _next_valid(valid: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """[N] index of the earliest valid row at or after each row within its series, -1 if none."""
    n = len(valid)
    idx = np.minimum.accumulate(np.where(valid, np.arange(n), n)[::-1])[::-1]
    return np.where(idx < seg_end, idx, -1)


def fill(block: Block, *, rows: np.ndarray, method: str, notes: Notes, what: str, columns: list[str]) -> Block:
    """Fill the NaNs of the rows marked in `rows` [N] by `method` (ffill | interpolate | zero | drop | error).

    Values are filled from valid rows of the same series only. A NaN with nothing before it to fill from
    (the start of a series) is dropped with its row and counted.
    """
    nan = np.isnan(block.values) & rows[:, None]  # [N, V]
    if not nan.any():
        return block
    if method == "error":
        r, c = np.argwhere(nan)[0]
        codes = block.codes()
        raise DataError(
            f"series '{block.names[codes[r]]}': column '{columns[c]}' has a missing value at {_iso(block.ts[r])}; "
            "set data.missing to ffill, interpolate, zero or drop"
        )
    if method == "drop":
        keep = ~nan.any(axis=1)
        notes.add(f"{what}_rows_dropped", int((~keep).sum()))
        notes.warn(
            f"data.missing=drop removed {int((~keep).sum())} rows: those series now have holes in their time grid"
        )
        return block.take_rows(keep)
    values = block.values.copy()
    if method == "zero":
        values[nan] = 0.0
        notes.add(f"{what}_values_filled", int(nan.sum()))
        return Block(block.names, block.offsets, block.ts, values)
    lengths = block.lengths
    seg_start = np.repeat(block.offsets[:-1], lengths)
    seg_end = np.repeat(block.offsets[1:], lengths)
    unfillable = np.zeros(len(values), dtype=bool)
    for c in range(values.shape[1]):
        todo = nan[:, c]
        if not todo.any():
            continue
        valid = ~np.isnan(block.values[:, c])
        prev = _prev_valid(valid, seg_start)
        col = values[:, c]
        if method == "ffill":
            ok = todo & (prev >= 0)
            col[ok] = block.values[prev[ok], c]
        elif method == "interpolate":
            nxt = _next_valid(valid, seg_end)
            both = todo & (prev >= 0) & (nxt >= 0)
            p, q = prev[both], nxt[both]
            # Linear in grid steps (rows are a complete grid here): a month is one step whatever its days.
            w = (np.flatnonzero(both) - p) / (q - p)
            col[both] = block.values[p, c] + w * (block.values[q, c] - block.values[p, c])
            tail = todo & (prev >= 0) & (nxt < 0)  # after the last valid value: hold it
            col[tail] = block.values[prev[tail], c]
            ok = both | tail
        else:
            raise DataError(f"unknown fill method '{method}'; use error, ffill, interpolate, zero or drop")
        unfillable |= todo & ~ok
    notes.add(f"{what}_values_filled", int(nan.sum() - unfillable.sum()))
    out = Block(block.names, block.offsets, block.ts, values)
    if unfillable.any():
        notes.add(f"{what}_leading_rows_dropped", int(unfillable.sum()))
        notes.warn(
            f"dropped {int(unfillable.sum())} leading row(s) with missing values and nothing earlier to fill from"
        )
        out = out.take_rows(~unfillable)
    return out
