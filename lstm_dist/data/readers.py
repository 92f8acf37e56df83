"""Finding input files and reading one into a validated long table: (series, ts, value columns).

Runs inside Ray read tasks. Every error names the file, the column and the first bad row, and the config
key that would fix it. The input is only ever opened for reading.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lstm_dist.config import DataConfig
from lstm_dist.data.errors import DataError
from lstm_dist.data.frequency import check_timezone, localize
from lstm_dist.storage import filesystem

CSV_EXT = (".csv", ".csv.gz", ".tsv")
PARQUET_EXT = (".parquet", ".pq", ".parq")
NA_TOKENS = {"", "na", "n/a", "nan", "null", "none", "-nan", "#n/a"}


# The DataConfig fields that say how to find the columns of an input file (names, roles, layout).
COLUMN_FIELDS = (
    "layout",
    "timestamp_col",
    "series_col",
    "target_cols",
    "covariate_cols",
    "future_cols",
    "wide_series_cols",
)


@dataclass
class Notes:
    """Counted events and warnings of one task, merged into the step's report."""

    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + int(n)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def merge(self, other: Notes) -> None:
        for key, n in other.counts.items():
            self.add(key, n)
        self.warnings.extend(other.warnings)


def list_input_files(path: str, *, fmt: str = "auto") -> list[str]:
    """Files named by `path`: a file, a directory (searched recursively) or a glob; sorted, as locators."""
    fs, inner, prefix = filesystem(path)
    exts = {"csv": CSV_EXT, "parquet": PARQUET_EXT}.get(fmt, CSV_EXT + PARQUET_EXT)
    if any(ch in inner for ch in "*?["):
        base = inner[: min(inner.find(ch) for ch in "*?[" if ch in inner)].rsplit("/", 1)[0] or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        found = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)]
    else:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise DataError(
                f"input '{path}' does not exist (data.path); give a CSV/Parquet file, a directory or a glob"
            )
        if info.type == pafs.FileType.File:
            return [prefix + inner]
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        found = [
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.path.lower().endswith(exts)
            and not os.path.basename(i.path).startswith((".", "_"))
        ]
    if not found:
        raise DataError(f"no {'/'.join(e.lstrip('.') for e in exts)} files match data.path '{path}'")
    return [prefix + p for p in sorted(found)]


# Headers read by check_inputs before Ray starts: enough to catch a misspelt column in seconds rather than
# after Ray's start-up, few enough that thousands of files on object storage are not opened twice.
_HEADERS_CHECKED = 8


def check_inputs(cfg: DataConfig) -> None:
    """Raise DataError when data.path names no input file, or when the first files' headers lack a configured
    column; cheap (file listing and headers only), for a pipeline to call before Ray starts."""
    if cfg.path is None:
        return
    for locator in list_input_files(cfg.path, fmt=cfg.format)[:_HEADERS_CHECKED]:
        _check_columns(_header(locator, cfg=cfg), cfg=cfg, source=locator)


def _header(locator: str, *, cfg: DataConfig) -> pa.Table:
    """An empty table with the file's columns: Parquet's schema, or a CSV's first block."""
    fs, inner, _ = filesystem(locator)
    fmt = file_format(locator, cfg.format)
    try:
        if fmt == "parquet":
            return pq.read_schema(inner, filesystem=fs).empty_table()
        with fs.open_input_stream(inner, compression="detect") as stream:
            _check_text(stream.read(_SNIFF_BYTES), locator=locator)
        with fs.open_input_stream(inner, compression="detect") as stream:
            return pacsv.open_csv(stream).schema.empty_table()
    except DataError:
        raise
    except (UnicodeDecodeError, pa.ArrowInvalid, OSError):
        return read_raw(locator, cfg=cfg)  # the full read says what is wrong, with the same messages as ingest


def file_format(locator: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    lower = locator.lower()
    if lower.endswith(CSV_EXT):
        return "csv"
    if lower.endswith(PARQUET_EXT):
        return "parquet"
    raise DataError(f"{locator}: cannot tell the format from the extension; set data.format to csv or parquet")


def read_raw(locator: str, *, cfg: DataConfig) -> pa.Table:
    """The file as an Arrow table, untouched. CSV keeps the series column as text."""
    fs, inner, _ = filesystem(locator)
    fmt = file_format(locator, cfg.format)
    try:
        if fmt == "parquet":
            return pq.read_table(inner, filesystem=fs)
        with fs.open_input_stream(inner, compression="detect") as stream:
            _check_text(stream.read(_SNIFF_BYTES), locator=locator)
        with fs.open_input_stream(inner, compression="detect") as stream:
            table = pacsv.read_csv(
                stream,
                convert_options=pacsv.ConvertOptions(
                    column_types={cfg.series_col: pa.string()}, strings_can_be_null=True
                ),
            )
            table.column_names  # noqa: B018 - decodes the header, which fails on bytes that are not UTF-8
            return table
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{locator}: {_NOT_UTF8}") from None
    except (pa.ArrowInvalid, OSError) as exc:
        if "invalid UTF8" in str(exc):
            raise DataError(f"{locator}: {_NOT_UTF8} ({exc})") from None
        raise DataError(f"{locator}: cannot be read as {fmt}: {exc}") from None


_SNIFF_BYTES = 4096
_NOT_UTF8_FIX = "re-save it as UTF-8 ('CSV UTF-8' in a spreadsheet, or iconv -t UTF-8), or give a Parquet file"
_NOT_UTF8 = f"the file is not UTF-8 text; {_NOT_UTF8_FIX}"


def _check_text(head: bytes, *, locator: str) -> None:
    """Refuse UTF-16/32 text (a byte-order mark, or NUL bytes, which UTF-8 text never holds) by name: Arrow
    would read such a file as odd columns or fail on the header's bytes."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise DataError(f"{locator}: the file looks like UTF-16 (it holds NUL bytes), not UTF-8; {_NOT_UTF8_FIX}")


class Source(str):
    """A file locator for messages; `row_offset` says where a partial read (Parquet row groups) starts."""

    row_offset: int = 0

    @classmethod
    def part(cls, locator: str, row_offset: int) -> Source:
        out = cls(locator)
        out.row_offset = row_offset
        return out


def _row_hint(source: str, row: int) -> str:
    """'row 7' (1-based data row of the file), plus the CSV line number where there is one."""
    row += getattr(source, "row_offset", 0)
    return f"row {row + 1} (line {row + 2})" if source.lower().endswith(CSV_EXT) else f"row {row + 1}"


def _check_columns(table: pa.Table, *, cfg: DataConfig, source: str) -> None:
    have = table.column_names
    needed = [("timestamp_col", cfg.timestamp_col)]
    if cfg.layout == "long":
        needed.append(("series_col", cfg.series_col))
        needed += [("target_cols", c) for c in cfg.target_cols]
    needed += [("covariate_cols", c) for c in cfg.covariate_cols] + [("future_cols", c) for c in cfg.future_cols]
    for key, col in needed:
        if have.count(col) > 1:
            raise DataError(
                f"{source}: column '{col}' (data.{key}) appears {have.count(col)} times in the header; rename or "
                "remove the extra one"
            )
        if col not in have:
            near = difflib.get_close_matches(col, have, n=1, cutoff=0.6)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            sep = next((s for s in ";\t|" if len(have) == 1 and s in have[0]), None)
            if sep is not None:  # one column whose name holds the others: another delimiter than the comma
                hint = f" The file seems to separate fields with {sep!r}, not commas; write it comma-separated."
            raise DataError(
                f"{source}: column '{col}' (data.{key}) not found; the file has columns {have}.{hint} "
                f"Rename the column or set data.{key}."
            )


def numeric_column(col: pa.ChunkedArray | pa.Array, *, name: str, source: str) -> np.ndarray:
    """float64 [N] with NaN for nulls; a non-numeric value raises naming file, column, row and value."""
    t = col.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t):
        return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    if pa.types.is_null(t):
        return np.full(len(col), np.nan)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col.to_pandas()
        num = pd.to_numeric(text, errors="coerce")
        bad = num.isna() & text.notna() & ~text.str.strip().str.lower().isin(NA_TOKENS)
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise DataError(
                f"{source}: column '{name}' must be numeric, but {_row_hint(source, row)} holds {text.iloc[row]!r} "
                f"(first non-numeric value of {int(bad.sum())}); fix the file or drop the column from the config"
            )
        return num.to_numpy(dtype=np.float64)
    raise DataError(f"{source}: column '{name}' has type {t}, which is not numeric; list only numeric columns")


def timestamp_column(
    col: pa.ChunkedArray | pa.Array,
    *,
    name: str,
    source: str,
    notes: Notes,
    tz: str = "UTC",
    codes: np.ndarray | None = None,
) -> np.ndarray:
    """Unix seconds, int64 [N]: timestamps with an offset converted to UTC, naive ones read as wall-clock time
    in `tz` (data.timezone; `codes` [N] tell series apart for the repeated autumn hour). Unparseable or null
    values raise with the row."""
    ts, naive = _timestamp_seconds(col, name=name, source=source, notes=notes)
    if not naive or tz == "UTC":
        return ts
    utc, bad = localize(ts, tz, codes=codes)
    if bad is not None:
        raise DataError(
            f"{source}: column '{name}' holds {np.datetime64(int(ts[bad]), 's')} at {_row_hint(source, bad)}, a "
            f"wall-clock time that does not exist in data.timezone = {tz} (clocks skip it); write timestamps "
            "with a UTC offset, or set data.timezone to the zone the data was recorded in"
        )
    return utc


def _timestamp_seconds(col: pa.ChunkedArray | pa.Array, *, name: str, source: str, notes: Notes) -> tuple:
    """(seconds int64 [N], naive): UTC seconds, or wall-clock seconds when the input had no offset."""
    t = col.type
    if col.null_count:
        row = int(np.argmax(np.asarray(col.is_null().to_numpy(zero_copy_only=False))))
        raise DataError(f"{source}: column '{name}' has no timestamp at {_row_hint(source, row)}; every row needs one")
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        ts = (
            col.cast(pa.timestamp("s", tz=getattr(t, "tz", None)), safe=False)
            if pa.types.is_timestamp(t)
            else col.cast(pa.timestamp("s"))
        )
        naive = not pa.types.is_timestamp(t) or t.tz is None
        return np.asarray(ts.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64), naive
    if pa.types.is_integer(t):
        return _epoch_seconds(col, name=name, source=source, notes=notes), False
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col.to_pandas()
        _check_offsets(text, name=name, source=source)
        naive = len(text) > 0 and pd.to_datetime(text.iloc[:1], errors="coerce", format="mixed").dt.tz is None
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        if parsed.isna().any():
            parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
        if parsed.isna().any():
            row = int(np.argmax(parsed.isna().to_numpy()))
            raise DataError(
                f"{source}: column '{name}' holds an unparseable timestamp {text.iloc[row]!r} at "
                f"{_row_hint(source, row)}; use ISO 8601 (2024-01-01 13:00:00) or set data.timestamp_col"
            )
        return parsed.dt.tz_localize(None).to_numpy("datetime64[s]").astype(np.int64), naive
    raise DataError(f"{source}: column '{name}' has type {t}; timestamps must be dates, datetimes or ISO strings")


# Integer timestamps: the unit by magnitude. Seconds reach 1e11 only in the year 5138, milliseconds 1e14 in
# 5138 too, and so on, so the largest absolute value tells the unit of any date after 1973.
_EPOCH_UNITS = ((1e11, "seconds", 1), (1e14, "milliseconds", 10**3), (1e17, "microseconds", 10**6))


def _epoch_seconds(col: pa.ChunkedArray | pa.Array, *, name: str, source: str, notes: Notes) -> np.ndarray:
    """Unix seconds int64 [N] from integer epochs in seconds, milliseconds, microseconds or nanoseconds."""
    raw = np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    top = float(np.abs(raw).max()) if len(raw) else 0.0
    unit, div = next(((u, d) for limit, u, d in _EPOCH_UNITS if top < limit), ("nanoseconds", 10**9))
    if div > 1 and (raw % div).any():
        raise DataError(
            f"{source}: integer column '{name}' reads as unix {unit}, but some values are not whole seconds; "
            "write ISO 8601 timestamps (2024-01-01 13:00:00)"
        )
    notes.warn(f"{source}: integer column '{name}' read as unix {unit}")
    return raw // div


def _check_offsets(text: pd.Series, *, name: str, source: str) -> None:
    """Timestamps with and without a UTC offset in one column are ambiguous: the naive ones would be read
    in data.timezone, the others converted, and the two can collide or leave holes."""
    has = text.str.strip().str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
    if has.any() and not has.all():
        a, b = int(np.argmax(has.to_numpy())), int(np.argmin(has.to_numpy()))
        raise DataError(
            f"{source}: column '{name}' mixes timestamps with a UTC offset ({text.iloc[a]!r} at {_row_hint(source, a)}) "
            f"and without ({text.iloc[b]!r} at {_row_hint(source, b)}); write every timestamp with its offset, or none"
        )


def value_columns(cfg: DataConfig) -> list[str]:
    """Numeric input columns in stored order: targets, covariates, future covariates."""
    return [*cfg.target_cols, *cfg.covariate_cols, *cfg.future_cols]


def series_codes(col: pa.ChunkedArray | pa.Array) -> tuple[list[str], np.ndarray]:
    """(sorted distinct names, int64 [N] position of each row's name) without building a string per row."""
    enc = col.cast(pa.string()).dictionary_encode()
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks() if enc.num_chunks != 1 else enc.chunk(0)
        if isinstance(enc, pa.ChunkedArray):  # pragma: no cover - older pyarrow
            enc = enc.chunk(0)
    names = enc.dictionary.to_pylist()
    order = np.argsort(np.asarray(names, dtype=object)) if names else np.zeros(0, dtype=np.int64)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    codes = rank[np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]
    return [names[i] for i in order], codes


def normalize(
    table: pa.Table, *, cfg: DataConfig, source: str, notes: Notes
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Long layout as (sorted series names, codes int64 [N], ts int64 [N], values float64 [N, V])."""
    _check_columns(table, cfg=cfg, source=source)
    if table.num_rows == 0 and not getattr(source, "row_offset", 0):
        raise DataError(
            f"{source}: the file has no data rows (only the columns {table.column_names}); add rows, or remove "
            "the file from data.path"
        )
    tz = check_timezone(cfg.timezone)
    kw = {"name": cfg.timestamp_col, "source": source, "notes": notes, "tz": tz}
    if cfg.layout == "wide":
        ts = timestamp_column(table.column(cfg.timestamp_col), **kw)
        return _normalize_wide(table, ts, cfg=cfg, source=source, notes=notes)
    series = table.column(cfg.series_col)
    if series.null_count:
        row = int(np.argmax(np.asarray(series.is_null().to_numpy(zero_copy_only=False))))
        raise DataError(f"{source}: column '{cfg.series_col}' (data.series_col) is empty at {_row_hint(source, row)}")
    names, codes = series_codes(series)
    ts = timestamp_column(table.column(cfg.timestamp_col), codes=codes, **kw)
    if cfg.duplicates == "error":
        _first_duplicate(names, codes, ts, source=source)
    cols = [numeric_column(table.column(c), name=c, source=source) for c in value_columns(cfg)]
    values = np.stack(cols, axis=1)
    rows = np.arange(len(ts))
    codes, ts, values = _checked_values(
        values, _Where(names, codes, ts, rows, source), cfg=cfg, table=table, notes=notes
    )
    return names, codes, ts, values


def _first_duplicate(names: list[str], codes: np.ndarray, ts: np.ndarray, *, source: str) -> None:
    """Duplicate (series, timestamp) rows within one file raise naming the file and two of the rows; those
    across files are found after the merge (cleaning.dedupe), where no file is known."""
    order = np.lexsort((ts, codes))  # stable: equal keys keep their file order
    c, t = codes[order], ts[order]
    dup = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
    if dup.any():
        j = int(np.argmax(dup))
        raise DataError(
            f"{source}: series '{names[c[j]]}' has {int(dup.sum())} duplicate (series, timestamp) rows, first at "
            f"{np.datetime64(int(t[j]), 's')}; set data.duplicates to keep_last or mean (or remove one of "
            f"{_row_hint(source, int(order[j]))} and {_row_hint(source, int(order[j + 1]))})"
        )


@dataclass(frozen=True)
class _Where:
    """Where each row of a file's value block came from: series, timestamp and row in the source file."""

    names: list[str]
    codes: np.ndarray
    ts: np.ndarray
    rows: np.ndarray
    source: str

    def at(self, i: int) -> str:
        """Row i as an error names it: `row 7 (line 8) (series 's000', 2024-01-01T06:00:00)`."""
        stamp = np.datetime64(int(self.ts[i]), "s")
        return f"{_row_hint(self.source, int(self.rows[i]))} (series '{self.names[self.codes[i]]}', {stamp})"

    def column(self, i: int, col: int, cfg: DataConfig) -> str:
        """The input column of value `col` in row i (wide layout: one target column per series)."""
        return self.names[self.codes[i]] if cfg.layout == "wide" and col == 0 else value_columns(cfg)[col]

    def kept(self, keep: np.ndarray) -> _Where:
        return _Where(self.names, self.codes[keep], self.ts[keep], self.rows[keep], self.source)


def _checked_values(
    values: np.ndarray, where: _Where, *, cfg: DataConfig, table: pa.Table, notes: Notes
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, timestamps, values) of a file's block after data.nonfinite, then data.missing=error."""
    values, keep = _nonfinite(values, where, cfg=cfg, notes=notes)
    if keep is not None:
        values, where = values[keep], where.kept(keep)
    if cfg.missing == "error":
        _first_missing(values, where, cfg=cfg, table=table)
    return where.codes, where.ts, values


def _first_missing(values: np.ndarray, where: _Where, *, cfg: DataConfig, table: pa.Table) -> None:
    bad = np.isnan(values)
    if bad.any():
        i, col = np.argwhere(bad)[0]
        kind = _missing_kind(table, where.column(i, col, cfg), int(where.rows[i]), where.source)
        raise DataError(
            f"{where.source}: column '{value_columns(cfg)[col]}' has a missing value ({kind}) at {where.at(i)}; "
            "set data.missing to ffill, interpolate, zero or drop to handle missing values"
        )


def _missing_kind(table: pa.Table, name: str, row: int, source: str) -> str:
    """How a missing value was written: the CSV text (`'nan'`, `'NA'`, an empty field), NaN or null."""
    col = table.column(name)
    if source.lower().endswith(CSV_EXT):
        text = _csv_text(source, name, row)
        return "an empty field" if text == "" else f"the text {text!r}" if text is not None else "null"
    if col.type == pa.null() or not col[row].is_valid:
        return "null"
    return "NaN" if pa.types.is_floating(col.type) else f"the text {col[row].as_py()!r}"


def _csv_text(locator: str, name: str, row: int) -> str | None:
    """The raw text of one CSV cell (Arrow turns `nan`, `NA`, `null`, ... into null when it reads numbers)."""
    fs, inner, _ = filesystem(locator)
    try:
        with fs.open_input_stream(inner, compression="detect") as stream:
            col = pacsv.read_csv(
                stream,
                convert_options=pacsv.ConvertOptions(
                    include_columns=[name], column_types={name: pa.string()}, null_values=[], strings_can_be_null=False
                ),
            ).column(name)
    except (pa.ArrowInvalid, OSError):  # only for the message: the error is reported without the text then
        return None
    return col[row].as_py() if row < len(col) else None


def _nonfinite(
    values: np.ndarray, where: _Where, *, cfg: DataConfig, notes: Notes
) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, rows to keep or None) under data.nonfinite: ±inf (the text `inf`, or a number beyond float64
    such as 1e400) raises naming the first (`error`), drops its row (`drop`) or becomes NaN for data.missing
    to fill (`fill`). An infinite value would give infinite scaler stats and poison every window."""
    bad = np.isinf(values)
    if not bad.any():
        return values, None
    if cfg.nonfinite == "error":
        i, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where.source}: column '{where.column(i, col, cfg)}' holds {values[i, col]} at {where.at(i)}, the first "
            f"of {int(bad.sum())} infinite values (the text inf, or a number beyond ±1.8e308); fix the file, or set "
            "data.nonfinite to drop (remove such rows) or fill (fill them by data.missing)"
        )
    if cfg.nonfinite == "fill":
        notes.add("nonfinite_values_filled", int(bad.sum()))
        return np.where(bad, np.nan, values), None
    keep = ~bad.any(axis=1)
    notes.add("nonfinite_rows_dropped", int((~keep).sum()))
    return values, keep


def _normalize_wide(
    table: pa.Table, ts: np.ndarray, *, cfg: DataConfig, source: str, notes: Notes
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Wide layout: one target column per series; covariates are shared by all series (broadcast)."""
    if len(cfg.target_cols) != 1:
        raise DataError(f"data.layout=wide takes exactly one target name (data.target_cols), got {cfg.target_cols}")
    shared = [cfg.timestamp_col, *cfg.covariate_cols, *cfg.future_cols]
    wanted = list(cfg.wide_series_cols) or [c for c in table.column_names if c not in shared]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: series column(s) {missing} (data.wide_series_cols) not found; the file has columns {table.column_names}"
        )
    if not wanted:
        raise DataError(f"{source}: no series columns left in the wide file; the file has columns {table.column_names}")
    n = len(ts)
    names = sorted(wanted)
    target = np.concatenate([numeric_column(table.column(c), name=c, source=source) for c in names])
    covs = [numeric_column(table.column(c), name=c, source=source) for c in [*cfg.covariate_cols, *cfg.future_cols]]
    values = np.stack([target, *(np.tile(c, len(names)) for c in covs)], axis=1)
    codes = np.repeat(np.arange(len(names), dtype=np.int64), n)
    ts_long = np.tile(ts, len(names))
    rows = np.tile(np.arange(n), len(names))
    where = _Where(names, codes, ts_long, rows, source)
    codes, ts_long, values = _checked_values(values, where, cfg=cfg, table=table, notes=notes)
    return names, codes, ts_long, values
