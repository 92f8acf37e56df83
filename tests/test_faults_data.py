"""Fault injection for the data layer (issue 12): bad inputs beyond tests/test_data_bad_inputs.py, non-finite
values and their policy, output validation before `_SUCCESS`, and corrupted shard sets caught when opened.

Every ingest runs through the real local Ray of conftest.py. An error case asserts that the message names
what is wrong (file, column, row or shard) and the fix, and that nothing complete-looking is left behind;
a case that should work asserts its outcome."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lstm_dist.config import DataConfig
from lstm_dist.data.commands import inspect_command
from lstm_dist.data.errors import DataError
from lstm_dist.data.ingest import ingest
from lstm_dist.data.integrity import verify_shards
from lstm_dist.data.readers import check_inputs
from lstm_dist.data.synthetic import generate_sample
from lstm_dist.data.windows import WindowDataset

pytestmark = pytest.mark.usefixtures("ray_local")

BASE = {"lookback": 8, "horizon": 4, "val_size": 0.15, "test_size": 0.15, "covariate_cols": ["temperature"]}
FIX_NONFINITE = r"set data\.nonfinite to drop"


def frame(num_series: int = 3, num_steps: int = 120) -> pd.DataFrame:
    return generate_sample(num_series=num_series, num_steps=num_steps, seed=1).to_pandas()


def csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def write(name: str, make: Callable[[], str | bytes]) -> Callable[[Path], Path]:
    def go(d: Path) -> Path:
        data = make()
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        return d / name

    return go


def with_cell(col: str, row: int, text: str, df: pd.DataFrame | None = None) -> str:
    """The good CSV with one cell replaced by `text`, as written in the file."""
    df = (frame() if df is None else df).astype({col: object})
    df.loc[row, col] = text
    return csv_text(df)


def with_float_nan(col: str, row: int) -> pa.Table:
    """The good table with a float NaN (not a null: Arrow keeps the two apart) in one cell."""
    table = pa.table(frame())
    values = table.column(col).to_numpy().copy()
    values[row] = np.nan
    return table.set_column(table.schema.get_field_index(col), col, pa.array(values, from_pandas=False))


def epoch(unit: str, plus: int = 0) -> pa.Table:
    """The good table with integer timestamps in `unit` since 1970."""
    return pa.table(
        frame().assign(timestamp=lambda f: f.timestamp.astype(f"datetime64[{unit}]").astype("int64") + plus)
    )


def parquet(name: str, make: Callable[[], pa.Table]) -> Callable[[Path], Path]:
    def go(d: Path) -> Path:
        pq.write_table(make(), d / name)
        return d / name

    return go


def two_short(d: Path) -> Path:
    """Four series, two of them (s001, s003) cut to 20 rows."""
    df = frame(num_series=4)
    t0 = df.timestamp.min() + pd.Timedelta(hours=20)
    df = df[~(df.series_id.isin(["s001", "s003"]) & (df.timestamp >= t0))]
    (d / "in.csv").write_text(csv_text(df))
    return d / "in.csv"


def mixed_dir(d: Path) -> Path:
    """A directory of a CSV, a Parquet file (other series) and files that are not input (ignored)."""
    df = frame(num_series=4)
    sub = d / "mixed"
    sub.mkdir()
    df[df.series_id <= "s001"].to_csv(sub / "a.csv", index=False)
    df[df.series_id > "s001"].to_parquet(sub / "b.parquet", index=False)
    (sub / "README.txt").write_text("not data")
    (sub / "_SUCCESS").write_text("")
    return sub


def duplicate_across(d: Path) -> Path:
    sub = d / "two"
    sub.mkdir()
    df = frame()
    df.to_csv(sub / "a.csv", index=False)
    df.iloc[:5].to_csv(sub / "b.csv", index=False)
    return sub


# (id, make the input under a dir -> data.path, config overrides, error regex: what is wrong and the fix)
ERRORS = [
    (
        "inf_target",
        write("in.csv", lambda: with_cell("target", 4, "inf")),
        {},
        r"in\.csv: column 'target' holds inf at row 5 \(line 6\) \(series 's000'.*" + FIX_NONFINITE,
    ),
    (
        "overflow_1e400",
        write("in.csv", lambda: with_cell("target", 9, "1e400")),
        {},
        r"in\.csv: column 'target' holds inf at row 10 \(line 11\).*beyond ±1\.8e308.*" + FIX_NONFINITE,
    ),
    (
        "minus_inf_covariate",
        write("in.csv", lambda: with_cell("temperature", 130, "-inf")),
        {},
        r"column 'temperature' holds -inf at row 131 \(line 132\) \(series 's001'.*" + FIX_NONFINITE,
    ),
    (
        "inf_parquet",
        parquet("in.parquet", lambda: pa.table(frame().assign(target=lambda f: f.target.where(f.index != 3, np.inf)))),
        {},
        r"in\.parquet: column 'target' holds inf at row 4 \(series 's000'.*" + FIX_NONFINITE,
    ),
    (
        "inf_wide",
        write(
            "wide.csv",
            lambda: csv_text(
                frame()
                .pivot(index="timestamp", columns="series_id", values="target")
                .reset_index()
                .astype({"s002": object})
                .pipe(lambda f: f.assign(s002=f.s002.where(f.index != 7, "inf")))
            ),
        ),  # fmt: skip
        {"layout": "wide", "covariate_cols": []},
        r"wide\.csv: column 's002' holds inf at row 8 \(line 9\).*" + FIX_NONFINITE,
    ),
    (
        "nan_text",
        write("in.csv", lambda: with_cell("target", 6, "nan")),
        {},
        r"column 'target' has a missing value \(the text 'nan'\) at row 7 \(line 8\).*set data\.missing",
    ),
    (
        "NA_text",
        write("in.csv", lambda: with_cell("temperature", 2, "NA")),
        {},
        r"column 'temperature' has a missing value \(the text 'NA'\) at row 3 \(line 4\).*set data\.missing",
    ),
    (
        "nan_parquet_float",
        parquet("in.parquet", lambda: with_float_nan("target", 3)),
        {},
        r"in\.parquet: column 'target' has a missing value \(NaN\) at row 4 .*set data\.missing",
    ),
    (
        "huge_values_unscaled",
        write("in.csv", lambda: csv_text(frame().assign(target=lambda f: f.target * 1e300))),
        {"scaler": "none"},
        r"series 's000': column 'target' holds .*e\+30\d, which does not fit the float32 shards.*set data\.scaler",
    ),
    (
        "huge_values_overflow_std",  # the std overflows float64 (then the scale falls back to 1)
        write("in.csv", lambda: csv_text(frame().assign(target=lambda f: f.target * 1e300))),
        {},
        r"series 's000': column 'target' holds .*which does not fit the float32 shards.*rescale it in the input",
    ),
    (
        "utf16",
        write("in.csv", lambda: csv_text(frame()).encode("utf-16")),
        {},
        r"in\.csv: the file looks like UTF-16.*not UTF-8; re-save it as UTF-8",
    ),
    (
        "latin1",
        write("in.csv", lambda: with_cell("series_id", 0, "caf\xe9").encode("latin-1")),
        {},
        r"in\.csv: the file is not UTF-8 text; re-save it as UTF-8",
    ),
    (
        "header_only",
        write("in.csv", lambda: "timestamp,series_id,target,temperature\n"),
        {},
        r"in\.csv: the file has no data rows \(only the columns \['timestamp', 'series_id', 'target', 'temperature'\]\); add rows",
    ),
    (
        "empty_parquet",
        parquet("in.parquet", lambda: pa.Table.from_pandas(frame().iloc[:0], preserve_index=False)),
        {},
        r"in\.parquet: the file has no data rows",
    ),
    (
        "two_short",
        two_short,
        {"start_padding": False, "num_read_tasks": 4},
        r"series 's001' is too short: 20 rows.*\(2 series are too short\).*data\.short_series=skip",
    ),
    (
        "one_short",
        lambda d: write("in.csv", lambda: csv_text(frame().iloc[: 120 + 20]))(d),
        {"start_padding": False, "num_read_tasks": 3},
        r"series 's001' is too short: 20 rows.*\(1 series is too short\)",
    ),
    (
        "duplicates_named",
        write("in.csv", lambda: csv_text(pd.concat([frame(), frame().iloc[[7]]]))),
        {},
        r"in\.csv: series 's000' has 1 duplicate \(series, timestamp\) rows.*set data\.duplicates to keep_last or mean "
        r"\(or remove one of row 8 \(line 9\) and row 361 \(line 362\)\)",
    ),
    (
        "duplicates_across_files",
        duplicate_across,
        {},
        r"series 's000' has 5 duplicate \(series, timestamp\) rows.*set data\.duplicates",
    ),
    (
        "semicolon",
        write("in.csv", lambda: frame().to_csv(index=False, sep=";")),
        {},
        r"in\.csv: column 'timestamp' \(data\.timestamp_col\) not found.*separate fields with ';', not commas",
    ),
    (
        "mixed_offsets_and_naive",
        write("in.csv", lambda: with_cell("timestamp", 5, "2024-01-01T05:00:00+00:00")),
        {},
        r"column 'timestamp' mixes timestamps with a UTC offset \('2024-01-01T05:00:00\+00:00' at row 6 \(line 7\)\) "
        r"and without .*write every timestamp with its offset, or none",
    ),
    (
        "log1p_negative",
        write("in.csv", lambda: with_cell("target", 3, "-5")),
        {"target_transform": "log1p"},
        r"target_transform=log1p needs non-negative targets, but series 's000' has target = -5 at 2024-01-01T03:00:00",
    ),
    (
        "boxcox_zero",
        write("in.csv", lambda: with_cell("target", 125, "0")),
        {"target_transform": "boxcox"},
        r"target_transform=boxcox needs positive targets, but series 's001' has target = 0.*use target_transform=log1p",
    ),
    (
        "duplicate_header",
        write("in.csv", lambda: csv_text(frame()).replace("temperature", "target", 1)),
        {"covariate_cols": []},
        r"in\.csv: column 'target' \(data\.target_cols\) appears 2 times in the header; rename or remove",
    ),
    (
        "thousands_separator",
        write("in.csv", lambda: with_cell("target", 0, "1,234.5")),
        {},
        r"column 'target' must be numeric, but row 1 \(line 2\) holds '1,234\.5'",
    ),
    (
        "float_timestamps",
        parquet(
            "in.parquet",
            lambda: pa.table(frame().assign(timestamp=lambda f: epoch("s").column("timestamp").to_numpy() / 1.0)),
        ),
        {},
        r"in\.parquet: column 'timestamp' has type double; timestamps must be dates, datetimes or ISO strings",
    ),
    (
        "epoch_fractional_ms",
        parquet("in.parquet", lambda: epoch("ms", plus=1)),
        {},
        r"integer column 'timestamp' reads as unix milliseconds, but some values are not whole seconds",
    ),
    (
        "not_parquet",
        write("in.parquet", lambda: csv_text(frame())),
        {},
        r"in\.parquet: cannot be read as parquet",
    ),
    (
        "truncated_parquet",
        lambda d: (
            (
                pq.write_table(pa.table(frame()), d / "full.parquet"),
                (d / "in.parquet").write_bytes((d / "full.parquet").read_bytes()[:500]),
                (d / "full.parquet").unlink(),
            )
            and d / "in.parquet"
        ),
        {},
        r"in\.parquet: cannot be read as parquet",
    ),
    (
        "all_empty_column",
        write("in.csv", lambda: csv_text(frame().assign(temperature=""))),
        {},
        r"column 'temperature' has a missing value \(an empty field\) at row 1 \(line 2\)",
    ),
    (
        "leading_space_header",
        write("in.csv", lambda: csv_text(frame()).replace("target", " target", 1)),
        {},
        r"column 'target' \(data\.target_cols\) not found.*Did you mean ' target'\?",
    ),
]


def assert_nothing_complete(root: Path) -> None:
    out = root / "shards"
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    assert not list(root.glob("shards.tmp-*")), "temp dir left behind"


@pytest.mark.parametrize(("case", "make", "overrides", "pattern"), ERRORS, ids=[c[0] for c in ERRORS])
def test_fault_is_a_clear_error(tmp_path, case, make, overrides, pattern):
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    cfg = DataConfig(path=str(path), **{**BASE, **overrides})
    with pytest.raises(DataError, match=pattern) as err:
        ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert "Traceback" not in str(err.value) and "\n" not in str(err.value)
    assert_nothing_complete(tmp_path)
    assert before == {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}, "raw input modified"


def _ok(tmp_path: Path, make: Callable[[Path], Path], **overrides):
    src = tmp_path / "src"
    src.mkdir()
    cfg = DataConfig(path=str(make(src)), **{**BASE, **overrides})
    manifest, report = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert verify_shards(tmp_path / "shards") == []
    loc, scale = manifest.loc_scale()
    assert np.isfinite(loc).all() and np.isfinite(scale).all()
    return manifest, report


def test_nonfinite_drop_counts_and_leaves_a_gap(tmp_path):
    make = write("in.csv", lambda: with_cell("target", 4, "1e400", with_cell_df("temperature", 9, "-inf")))
    manifest, report = _ok(tmp_path, make, nonfinite="drop", gaps="interpolate")
    assert report.counts["nonfinite_rows_dropped"] == 2 and report.counts["gap_rows_inserted"] == 2
    assert manifest.totals.num_rows == 360 and "nonfinite_rows_dropped=2" in report.summary()


def with_cell_df(col: str, row: int, text: str) -> pd.DataFrame:
    df = frame().astype({col: object})
    df.loc[row, col] = text
    return df


def test_nonfinite_fill_uses_the_missing_method(tmp_path):
    raw = frame()
    make = write("in.csv", lambda: with_cell("target", 4, "inf"))
    manifest, report = _ok(tmp_path, make, nonfinite="fill", missing="interpolate", scaler="none")
    assert report.counts["nonfinite_values_filled"] == 1 and report.counts["missing_values_filled"] == 1
    x = WindowDataset(str(tmp_path / "shards"), split="train").batch(np.array([0]))["x"]
    assert x[0, 4, 0] == pytest.approx((raw.target[3] + raw.target[5]) / 2, rel=1e-5)


def test_nonfinite_fill_needs_a_missing_method():
    with pytest.raises(ValueError, match=r"data\.nonfinite=fill .* set data\.missing to ffill"):
        DataConfig(path="x.csv", nonfinite="fill")


def test_nonfinite_error_is_the_default_and_names_the_fix():
    assert DataConfig(path="x.csv").nonfinite == "error"


# Inputs that look odd but are valid: (id, make, overrides, check(manifest, report))
def _check_names(names: list[str]) -> Callable:
    return lambda m, r: [s.name for s in m.series] == names


WORKS = [
    (
        "utf8_bom",
        write("in.csv", lambda: csv_text(frame()).encode("utf-8-sig")),
        {},
        _check_names(["s000", "s001", "s002"]),
    ),
    (
        "dst_offsets",
        write(
            "in.csv",
            lambda: csv_text(
                frame(num_series=1, num_steps=200).assign(
                    timestamp=pd.date_range("2024-03-30", periods=200, freq="h", tz="UTC")
                    .tz_convert("Europe/Berlin")
                    .strftime("%Y-%m-%dT%H:%M:%S%z")
                )
            ),
        ),  # fmt: skip
        {},  # +01:00 then +02:00 after the switch: one regular UTC hour grid, no gap, no duplicate
        lambda m, r: m.freq_alias == "h" and m.totals.num_rows == 200 and not r.counts,
    ),
    (
        "epoch_seconds",
        parquet("in.parquet", lambda: epoch("s")),
        {},
        lambda m, r: m.series[0].first_timestamp == 1704067200 and any("unix seconds" in w for w in r.warnings),
    ),
    (
        "epoch_milliseconds",
        parquet("in.parquet", lambda: epoch("ms")),
        {},
        lambda m, r: m.series[0].first_timestamp == 1704067200 and m.freq_alias == "h",
    ),
    (
        "constant_series",
        write("in.csv", lambda: csv_text(frame().assign(target=7.0))),
        {},
        lambda m, r: all(s.scaler["target"].scale == 1.0 and s.scaler["target"].loc == 7.0 for s in m.series),
    ),
    (
        "numeric_series_ids",
        parquet("in.parquet", lambda: pa.table(frame().assign(series_id=lambda f: f.series_id.str[1:].astype(int)))),
        {},
        _check_names(["0", "1", "2"]),
    ),
    ("mixed_formats_dir", mixed_dir, {}, lambda m, r: r.num_files == 2 and m.num_series == 4),
    (
        "gzip_csv",
        write("in.csv.gz", lambda: gzip.compress(csv_text(frame()).encode())),
        {},
        lambda m, r: m.totals.num_rows == 360,
    ),
    (
        "unicode_series_ids",
        write(
            "in.csv",
            lambda: csv_text(
                frame().assign(series_id=lambda f: f.series_id.map({"s000": "café", "s001": "東京", "s002": "🙂"}))
            ),
        ),
        {},
        _check_names(sorted(["café", "東京", "🙂"])),
    ),
    (
        "huge_values_scaled",
        write("in.csv", lambda: csv_text(frame().assign(target=lambda f: f.target * 1e40))),
        {},  # beyond float32, but scaled they fit
        lambda m, r: 1e39 < m.series[0].scaler["target"].scale < 1e45,
    ),
    (
        "negative_values_no_transform",
        write("in.csv", lambda: csv_text(frame().assign(target=lambda f: f.target - 1000.0))),
        {},
        lambda m, r: m.series[0].scaler["target"].loc < 0,
    ),
]


@pytest.mark.parametrize(("case", "make", "overrides", "check"), WORKS, ids=[c[0] for c in WORKS])
def test_odd_but_valid_input(tmp_path, case, make, overrides, check):
    manifest, report = _ok(tmp_path, make, **overrides)
    assert check(manifest, report), (manifest.series[0], report.summary())


# ---------------------------------------------------------------- corruption of a finished shard set


@pytest.fixture
def shard_set(tmp_path) -> Path:
    cfg = DataConfig(sample={"num_series": 3, "num_steps": 200}, lookback=8, horizon=4, rows_per_shard=200)
    ingest(cfg, out_dir=str(tmp_path / "shards"), work_dir=str(tmp_path))
    return tmp_path / "shards"


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_when_opened(shard_set):
    assert verify_shards(shard_set) == []
    WindowDataset(str(shard_set), split="train")  # intact: opens
    victim = sorted(shard_set.glob("shard-*.arrow"))[1]
    _flip(victim, victim.stat().st_size // 2)  # in the float data: Arrow's own validation would not see it
    found = verify_shards(shard_set)
    assert len(found) == 1 and victim.name in found[0] and "sha256" in found[0]
    for split in ("train", "test"):
        with pytest.raises(DataError, match=rf"{victim.name} has another sha256.*--force shard"):
            WindowDataset(str(shard_set), split=split)
    with pytest.raises(DataError, match=rf"1 problem\(s\) in shard set .*{victim.name}.*--force shard"):
        inspect_command(str(shard_set), verify=True)


def test_truncated_and_missing_shards(shard_set):
    files = sorted(shard_set.glob("shard-*.arrow"))
    files[0].write_bytes(files[0].read_bytes()[:-10])
    files[-1].unlink()
    found = verify_shards(shard_set)
    assert any(files[0].name in p and "bytes, the manifest says" in p for p in found)
    assert any(files[-1].name in p and "missing" in p for p in found)
    with pytest.raises(DataError, match=r"shard set .* is damaged: .*rerun the ingest"):
        WindowDataset(str(shard_set), split="val")


def test_poisoned_manifest_is_reported(shard_set):
    text = (shard_set / "manifest.json").read_text()
    (shard_set / "manifest.json").write_text(text.replace('"loc":', '"loc": null, "x":', 1))
    found = verify_shards(shard_set)
    assert len(found) == 1 and "validation error" in found[0].lower()


def test_inspect_verify_exits_1_on_a_mismatch(shard_set):
    from typer.testing import CliRunner

    from lstm_dist.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["data", "inspect", str(shard_set), "--verify"]).exit_code == 0
    _flip(sorted(shard_set.glob("shard-*.arrow"))[0], 200)
    result = runner.invoke(app, ["data", "inspect", str(shard_set), "--verify"])
    assert result.exit_code == 1
    assert re.search(r"error: 1 problem\(s\).*shard-00000\.arrow.*--force shard", result.output)


def test_missing_input_is_found_without_ray(tmp_path):
    with pytest.raises(DataError, match=r"input '.*nope\.csv' does not exist \(data\.path\)"):
        check_inputs(DataConfig(path=str(tmp_path / "nope.csv")))
    check_inputs(DataConfig(sample={"num_series": 2, "num_steps": 50}))  # the sample is generated later


def test_output_check_refuses_non_finite_stats(shard_set):
    """The last gate before `_SUCCESS`: a manifest with an infinite scaler stat is never committed."""
    from lstm_dist.data.integrity import check_output
    from lstm_dist.data.manifest import Manifest

    manifest = Manifest.load(shard_set)
    check_output(shard_set, manifest)
    manifest.series[1].scaler["target"].loc = float("inf")
    with pytest.raises(DataError, match=r"series 's001' has non-finite scaler stats for \['target'\].*rescale"):
        check_output(shard_set, manifest)
