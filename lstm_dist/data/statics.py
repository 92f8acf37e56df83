"""Static covariates (data.static_cols): per-series constants such as a tourism series' State and Purpose.

Read from the long input (one value per series, repeated on its rows), checked to be constant within
each series, encoded once over all series — text categories one-hot over the sorted levels seen at
ingest, numbers standardised over series — and kept in the manifest (the encoding, and each series'
encoded vector), so the model gets a fixed vector per series and the pyfunc encodes the same way from
the history rows it is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from lstm_dist.data.errors import DataError

# Raw static values of one series, in data.static_cols order (str, int or float).
StaticRow = tuple[Any, ...]


def read_static(table: pa.Table, *, series_col: str, static_cols: list[str], source: str) -> dict[str, StaticRow]:
    """Series name -> its static values, from the rows of `table`; a value that varies within a series raises."""
    if not static_cols:
        return {}
    missing = [c for c in static_cols if c not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: static column(s) {missing} (data.static_cols) not found; it has columns {table.column_names}"
        )
    frame = table.select([series_col, *static_cols]).to_pandas()
    frame[series_col] = frame[series_col].astype(str)
    for col in static_cols:
        if frame[col].isna().any():
            row = int(np.argmax(frame[col].isna().to_numpy()))
            raise DataError(
                f"{source}: static column '{col}' is empty for series '{frame[series_col].iloc[row]}' "
                f"(row {row + 1}); every row of a series needs its static values"
            )
        counts = frame.groupby(series_col, sort=True)[col].nunique()
        varying = counts[counts > 1]
        if len(varying):
            name = varying.index[0]
            seen = sorted(map(str, frame.loc[frame[series_col] == name, col].unique()))[:5]
            raise DataError(
                f"{source}: static column '{col}' (data.static_cols) varies within series '{name}' (values {seen}); "
                "a static column must hold one value per series: list it in data.covariate_cols if it changes over time"
            )
    first = frame.groupby(series_col, sort=True).first()
    return {str(name): tuple(_plain(v) for v in row) for name, row in zip(first.index, first.to_numpy(), strict=True)}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def merge(parts: list[dict[str, StaticRow]], *, static_cols: list[str]) -> dict[str, StaticRow]:
    """One mapping from the per-file ones; a series with other values in another file raises."""
    out: dict[str, StaticRow] = {}
    for part in parts:
        for name, row in part.items():
            if out.setdefault(name, row) != row:
                col = next(c for c, a, b in zip(static_cols, out[name], row, strict=True) if a != b)
                raise DataError(
                    f"static column '{col}' (data.static_cols) differs between input files for series '{name}': "
                    f"{out[name]} vs {row}"
                )
    return out


def fit_encoding(rows: dict[str, StaticRow], *, static_cols: list[str]) -> dict[str, dict[str, Any]]:
    """Per column: {"kind": "category", "levels": [...]} or {"kind": "number", "loc": m, "scale": s}."""
    enc: dict[str, dict[str, Any]] = {}
    for j, col in enumerate(static_cols):
        values = [row[j] for row in rows.values()]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            arr = np.asarray(values, dtype=np.float64)
            scale = float(arr.std()) if arr.std() > 0 else 1.0
            enc[col] = {"kind": "number", "loc": float(arr.mean()), "scale": scale}
        else:
            enc[col] = {"kind": "category", "levels": sorted({str(v) for v in values})}
    return enc


def feature_names(encoding: dict[str, dict[str, Any]]) -> list[str]:
    """Names of the encoded static features: `col` for numbers, `col=level` per category level."""
    names = []
    for col, e in encoding.items():
        names += [col] if e["kind"] == "number" else [f"{col}={level}" for level in e["levels"]]
    return names


def encode(row: StaticRow, encoding: dict[str, dict[str, Any]]) -> list[float]:
    """The encoded vector of one series; a category level not seen at ingest encodes as all zeros."""
    out: list[float] = []
    for value, e in zip(row, encoding.values(), strict=True):
        if e["kind"] == "number":
            out.append((float(value) - e["loc"]) / e["scale"])
        else:
            out += [1.0 if str(value) == level else 0.0 for level in e["levels"]]
    return out


def decode(vector: list[float], encoding: dict[str, dict[str, Any]]) -> StaticRow:
    """The raw values behind an encoded vector (the inverse of `encode` for levels seen at ingest)."""
    out, i = [], 0
    for e in encoding.values():
        if e["kind"] == "number":
            out.append(vector[i] * e["scale"] + e["loc"])
            i += 1
        else:
            width = len(e["levels"])
            out.append(e["levels"][int(np.argmax(vector[i : i + width]))])
            i += width
    return tuple(out)
