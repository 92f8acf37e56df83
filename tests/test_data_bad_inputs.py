"""A corpus of bad inputs: each fails with its exact error (or is cleaned with a counted warning), and a failed
ingest leaves nothing that looks like a complete shard set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lstm_dist.config import DataConfig
from lstm_dist.data.errors import DataError
from lstm_dist.data.ingest import ingest
from lstm_dist.data.synthetic import generate_sample

pytestmark = pytest.mark.usefixtures("ray_local")

BASE = {"lookback": 8, "horizon": 4, "val_size": 0.15, "test_size": 0.15, "covariate_cols": ["temperature"]}


def good_frame() -> pd.DataFrame:
    return generate_sample(num_series=3, num_steps=120, seed=1).to_pandas()


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


# Each case: (id, make the input file(s) under a dir -> data.path, config overrides, error regex)
def _rename(col: str, new: str) -> Callable[[Path], Path]:
    return lambda d: write_csv(good_frame().rename(columns={col: new}), d / "in.csv")


def _set(col: str, row: int, value: object, *, parquet: bool = False) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        df = good_frame()
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        if parquet:
            df[col] = df[col].astype(str)
            df.to_parquet(d / "in.parquet", index=False)
            return d / "in.parquet"
        return write_csv(df, d / "in.csv")

    return make


def _late_row_group(d: Path) -> Path:
    """A Parquet file of 4 row groups: the bad value sits in the third, read by its own task."""
    df = good_frame()
    df["target"] = df["target"].astype(str)
    df.loc[250, "target"] = "n/a?"
    df.to_parquet(d / "in.parquet", index=False, row_group_size=100)
    return d / "in.parquet"


def _drop_rows(rows: list[int]) -> Callable[[Path], Path]:
    return lambda d: write_csv(good_frame().drop(index=rows), d / "in.csv")


def _dup_rows(rows: list[int]) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        df = good_frame()
        extra = df.loc[rows].copy()
        extra["target"] = extra["target"] + 1000.0
        return write_csv(pd.concat([df, extra]), d / "in.csv")

    return make


def _shift(row: int, seconds: int) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        df = good_frame()
        df.loc[row, "timestamp"] = df.loc[row, "timestamp"] + pd.Timedelta(seconds=seconds)
        return write_csv(df, d / "in.csv")

    return make


def _short(d: Path) -> Path:
    df = good_frame()
    df = df[~((df.series_id == "s002") & (df.timestamp >= df.timestamp.min() + pd.Timedelta(hours=20)))]
    return write_csv(df, d / "in.csv")


def _text(content: str, name: str = "in.csv") -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_text(content)
        return d / name

    return make


ERRORS = [
    (
        "missing_target",
        _rename("target", "value"),
        {},
        r"in\.csv: column 'target' \(data\.target_cols\) not found; the file has columns \['timestamp', 'series_id', 'value', 'temperature'\]",
    ),
    (
        "misnamed_timestamp",
        _rename("timestamp", "time"),
        {},
        r"column 'timestamp' \(data\.timestamp_col\) not found.*Did you mean 'time'\?",
    ),
    ("missing_series_col", _rename("series_id", "sid"), {}, r"column 'series_id' \(data\.series_col\) not found"),
    (
        "missing_covariate",
        lambda d: write_csv(good_frame().drop(columns="temperature"), d / "in.csv"),
        {},
        r"column 'temperature' \(data\.covariate_cols\) not found",
    ),
    (
        "non_numeric_target",
        _set("target", 4, "abc"),
        {},
        r"column 'target' must be numeric, but row 5 \(line 6\) holds 'abc'",
    ),
    (
        "non_numeric_parquet",
        _set("temperature", 7, "warm", parquet=True),
        {},
        r"in\.parquet: column 'temperature' must be numeric, but row 8 holds 'warm'",
    ),
    (
        "bad_timestamp",
        _set("timestamp", 10, "2024-13-45 99:00"),
        {},
        r"unparseable timestamp '2024-13-45 99:00' at row 11 \(line 12\)",
    ),
    ("null_timestamp", _set("timestamp", 3, None), {}, r"column 'timestamp' has no timestamp at row 4 \(line 5\)"),
    ("null_series", _set("series_id", 2, None), {}, r"column 'series_id' \(data\.series_col\) is empty at row 3"),
    (
        "missing_value",
        _set("target", 6, None),
        {},
        r"column 'target' has a missing value \(an empty field\) at row 7 \(line 8\) \(series 's000', 2024-01-01T06:00:00\); set data\.missing",
    ),
    (
        "duplicates",
        _dup_rows([5, 6]),
        {},
        r"series 's000' has 2 duplicate \(series, timestamp\) rows, first at 2024-01-01T05:00:00; set data\.duplicates",
    ),
    (
        "gap",
        _drop_rows([20, 21, 22]),
        {},
        r"series 's000' has 1 gap\(s\) in its 3600 s grid, the first of 3 missing step\(s\) between 2024-01-01T19:00:00 and 2024-01-01T23:00:00",
    ),
    (
        "off_grid",
        _shift(30, 1800),
        {},
        r"series 's000': timestamps 2024-01-02T05:00:00 and 2024-01-02T06:30:00 are 5400 s apart, not a multiple of the frequency 3600 s",
    ),
    (
        "short_series",
        _short,
        {"start_padding": False},  # with padding (the default) a 20-row series trains: tests/test_short_series.py
        r"series 's002' is too short: 20 rows, .*needs at least \d+ rows.*data\.short_series=skip",
    ),
    ("empty_file", _text(""), {}, r"in\.csv: cannot be read as csv"),
    (
        "ragged_csv",
        _text("timestamp,series_id,target,temperature\n2024-01-01 00:00:00,a,1,2\n2024-01-01 01:00:00,a,1,2,3\n"),
        {},
        r"cannot be read as csv",
    ),
    ("no_such_path", lambda d: d / "nope.csv", {}, r"nope\.csv' does not exist \(data\.path\)"),
    (
        "empty_dir",
        lambda d: (d / "sub").mkdir() or d / "sub",
        {},
        r"no csv/csv\.gz/tsv/parquet/pq/parq files match data\.path",
    ),
    (
        "bad_freq",
        lambda d: write_csv(good_frame(), d / "in.csv"),
        {"freq": "often"},
        r"data\.freq = 'often' is not a pandas offset alias",
    ),
    (
        "date_target",
        lambda d: (
            good_frame().assign(target=pd.Timestamp("2024-01-01")).to_parquet(d / "in.parquet") or d / "in.parquet"
        ),
        {},
        r"column 'target' has type timestamp.*not numeric",
    ),
    (
        "wide_two_targets",
        lambda d: write_csv(
            good_frame().pivot(index="timestamp", columns="series_id", values="target").reset_index(), d / "in.csv"
        ),
        {"layout": "wide", "target_cols": ["a", "b"], "covariate_cols": []},
        r"layout=wide takes exactly one target",
    ),
    ("all_short", _short, {"lookback": 100, "start_padding": False}, r"series 's00\d' is too short"),
]


def assert_nothing_complete(root: Path) -> None:
    out = root / "shards"
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    assert not list(root.glob("shards.tmp-*")), "temp dir left behind"


@pytest.mark.parametrize(("case", "make", "overrides", "pattern"), ERRORS, ids=[c[0] for c in ERRORS])
def test_bad_input_fails_cleanly(tmp_path, case, make, overrides, pattern):
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    cfg = DataConfig(path=str(path), **{**BASE, **overrides})
    with pytest.raises(DataError, match=pattern):
        ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert_nothing_complete(tmp_path)
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}, "raw input modified"


# Cleaned with a policy: (id, make, overrides, expected report count key -> value, warning regex or None)
CLEANED = [
    ("keep_last", _dup_rows([5, 6]), {"duplicates": "keep_last"}, {"duplicate_rows_dropped": 2}, None),
    ("mean", _dup_rows([5]), {"duplicates": "mean"}, {"duplicate_rows_averaged": 1}, None),
    (
        "unsorted",
        lambda d: write_csv(good_frame().sample(frac=1.0, random_state=0), d / "in.csv"),
        {},
        {"unsorted_series_sorted": 3},
        None,
    ),
    ("gap_ffill", _drop_rows([20, 21, 22]), {"gaps": "ffill"}, {"gap_rows_inserted": 3, "gap_values_filled": 6}, None),
    (
        "gap_interpolate",
        _drop_rows([20]),
        {"gaps": "interpolate"},
        {"gap_rows_inserted": 1, "gap_values_filled": 2},
        None,
    ),
    ("missing_zero", _set("target", 6, None), {"missing": "zero"}, {"missing_values_filled": 1}, None),
    (
        "missing_ffill_leading",
        _set("target", 0, None),
        {"missing": "ffill"},
        {"missing_leading_rows_dropped": 1},
        r"dropped 1 leading row",
    ),
    (
        "missing_drop",
        _set("target", 6, None),
        {"missing": "drop"},
        {"missing_rows_dropped": 1},
        r"missing=drop removed 1 rows",
    ),
    ("short_skip", _short, {"short_series": "skip", "start_padding": False}, {}, r"skipped 1 series too short"),
]


@pytest.mark.parametrize(("case", "make", "overrides", "counts", "warning"), CLEANED, ids=[c[0] for c in CLEANED])
def test_policies_clean_and_count(tmp_path, case, make, overrides, counts, warning):
    src = tmp_path / "src"
    src.mkdir()
    cfg = DataConfig(path=str(make(src)), **{**BASE, **overrides})
    manifest, report = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert (tmp_path / "shards" / "_SUCCESS").exists()
    for key, value in counts.items():
        assert report.counts.get(key) == value, report.counts
    if warning:
        assert any(__import__("re").search(warning, w) for w in report.warnings), report.warnings
    if case == "short_skip":
        assert report.skipped_series == ["s002"] and [s.name for s in manifest.series] == ["s000", "s001"]
    assert report.summary()


def test_keep_last_and_mean_values(tmp_path):
    """keep_last keeps the later row of the input; mean averages; checked through the scaled shard."""
    from lstm_dist.data.windows import WindowDataset

    src = tmp_path / "src"
    src.mkdir()
    path = _dup_rows([5])(src)
    raw = good_frame()
    for policy, want in (("keep_last", raw.target[5] + 1000.0), ("mean", raw.target[5] + 500.0)):
        cfg = DataConfig(path=str(path), **{**BASE, "duplicates": policy, "scaler": "none"})
        ingest(cfg, out_dir=str(tmp_path / policy))
        ds = WindowDataset(str(tmp_path / policy), split="train")
        assert ds.batch(np.array([0]))["x"][0, 5, 0] == pytest.approx(want, rel=1e-6)
