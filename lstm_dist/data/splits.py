"""Time-based train/val/test boundaries per series and the window starts each split owns.

A window starting at row s reads inputs s .. s+L-1 and targets s+L .. s+L+H-1. It belongs to the split that
holds all of its targets: train windows lie entirely in train; val/test windows may read inputs from
earlier parts (that is the past, not leakage). Windows whose targets straddle a boundary belong to none.

Start padding (`data.start_padding`): a series too short for that layout but with at least horizon + 1 rows is
stored after `lookback - 1` padding rows, so its windows may start at rows -(lookback - 1) .. -1 (their inputs
begin in the padding; their targets are always real rows). Its hold-out parts are then cut by
`padded_bounds`: the configured parts where they fit, else one horizon each where the series allows it (test
first, then validation), else none, so a short series contributes train windows (and test, val when it can).
All row numbers here count real rows; padding rows are negative.

The extra split `all` is every window whose targets lie anywhere in the series (train + val + test and the
windows straddling their boundaries): what the final fit trains on before a model is registered.
"""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "val", "test", "all"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")  # the disjoint splits a manifest counts windows for
WINDOW_SPLITS: tuple[Split, ...] = (*SPLITS, "all")  # what a reader can be asked for


def part_steps(size: float, num_rows: int) -> int:
    """A val/test size as steps: a fraction of the series if < 1, else a number of steps."""
    return int(round(size * num_rows)) if size < 1 else int(size)


def split_bounds(num_rows: int, *, val_size: float, test_size: float) -> tuple[int, int]:
    """(val_start, test_start): the rows where the validation and test parts begin."""
    test_start = num_rows - part_steps(test_size, num_rows)
    val_start = test_start - part_steps(val_size, num_rows)
    return val_start, test_start


def shortfall(num_rows: int, *, lookback: int, horizon: int, val_size: float, test_size: float) -> str | None:
    """Why a series of `num_rows` cannot give one window per split, or None when it can."""
    val_start, test_start = split_bounds(num_rows, val_size=val_size, test_size=test_size)
    n_val, n_test = test_start - val_start, num_rows - test_start
    if n_test < horizon:
        return f"its test part has {n_test} rows, fewer than horizon {horizon}"
    if n_val < horizon:
        return f"its validation part has {n_val} rows, fewer than horizon {horizon}"
    if val_start < lookback + horizon:
        return f"its train part has {val_start} rows, fewer than lookback + horizon = {lookback + horizon}"
    return None


def rows_needed(*, lookback: int, horizon: int, val_size: float, test_size: float, start: int = 1) -> int:
    """The smallest series length (>= start) that yields a window in every split."""
    n = max(start, 1)
    while shortfall(n, lookback=lookback, horizon=horizon, val_size=val_size, test_size=test_size) is not None:
        n += 1
    return n


def needs_padding(
    num_rows: int, *, lookback: int, horizon: int, val_size: float, test_size: float, start_padding: bool
) -> bool:
    """Whether a series is stored with start padding: it falls short of one window per split, padding is on
    and it has at least horizon + 1 rows (one real input row and a horizon of real targets)."""
    kw = {"lookback": lookback, "horizon": horizon, "val_size": val_size, "test_size": test_size}
    return start_padding and num_rows >= horizon + 1 and shortfall(num_rows, **kw) is not None


def padded_bounds(num_rows: int, *, horizon: int, val_size: float, test_size: float) -> tuple[int, int]:
    """(val_start, test_start) of a padded series: the configured parts when each holds a horizon and train
    keeps horizon + 1 rows; otherwise hold-out parts of one horizon each, test before validation, each taken
    only when train still keeps horizon + 1 rows (an empty part gets no windows)."""
    val_start, test_start = split_bounds(num_rows, val_size=val_size, test_size=test_size)
    if num_rows - test_start >= horizon and test_start - val_start >= horizon and val_start >= horizon + 1:
        return val_start, test_start
    test_start = num_rows - horizon if num_rows >= 2 * horizon + 1 else num_rows
    val_start = test_start - horizon if test_start >= 2 * horizon + 1 else test_start
    return val_start, test_start


def start_range(
    split: Split, *, num_rows: int, val_start: int, test_start: int, lookback: int, horizon: int, pad: int = 0
) -> tuple[int, int]:
    """(lo, hi): inclusive range of window starts whose targets all lie in `split`; empty when hi < lo.
    `pad`: padding rows stored before row 0 (starts may go down to -pad)."""
    if split == "train":
        lo, hi = -pad, val_start - lookback - horizon
    elif split == "val":
        lo, hi = val_start - lookback, test_start - lookback - horizon
    elif split == "test":
        lo, hi = test_start - lookback, num_rows - lookback - horizon
    elif split == "all":
        lo, hi = -pad, num_rows - lookback - horizon
    else:
        raise ValueError(f"split must be one of {WINDOW_SPLITS}, got '{split}'")
    return max(lo, -pad), hi


def starts_in(lo: int, hi: int, *, stride: int, begin: int, end: int) -> tuple[int, int]:
    """(first, count) of the starts lo, lo+stride, ... <= hi that fall in [begin, end)."""
    last = min(hi, end - 1)
    first = max(lo, begin)
    first = lo + -(-(first - lo) // stride) * stride  # round up onto the stride grid anchored at lo
    if last < first:
        return first, 0
    return first, (last - first) // stride + 1
