"""Affine scalers (standard, min-max, robust, none) as pure numpy, fitted on train rows only.

Every scaler is `scaled = (x - loc) / scale`, so stats are two numbers per column and the inverse is exact.
Per-series scope keeps one (loc, scale) row per series; global scope fits once and repeats it. Global fits are
combined from per-bucket partial stats, so parallel ingest gives the same numbers as a single pass.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

ScalerKind = Literal["standard", "minmax", "robust", "none"]
SCALER_KINDS: tuple[str, ...] = ("standard", "minmax", "robust", "none")


def _safe_scale(scale: np.ndarray, loc: np.ndarray) -> np.ndarray:
    # A constant column has zero spread; dividing by it would blow up, so it is only centred.
    tiny = 1e-9 * np.maximum(1.0, np.abs(loc))
    return np.where(np.isfinite(scale) & (scale > tiny), scale, 1.0)


def fit(values: np.ndarray, *, kind: ScalerKind) -> tuple[np.ndarray, np.ndarray]:
    """(loc [F], scale [F]) of `values` [N, F]; NaNs are ignored. Pass train rows only."""
    values = np.asarray(values, dtype=np.float64)
    num_cols = values.shape[1]
    if kind == "none" or values.shape[0] == 0:
        return np.zeros(num_cols), np.ones(num_cols)
    if kind == "standard":
        loc = np.nanmean(values, axis=0)
        scale = np.nanstd(values, axis=0)  # population std (ddof=0)
    elif kind == "minmax":
        loc = np.nanmin(values, axis=0)
        scale = np.nanmax(values, axis=0) - loc
    elif kind == "robust":
        q25, loc, q75 = np.nanpercentile(values, [25, 50, 75], axis=0)
        scale = q75 - q25
    else:
        raise ValueError(f"unknown scaler '{kind}'; choose one of {SCALER_KINDS} (data.scaler)")
    return loc, _safe_scale(scale, loc)


def partial_fit(values: np.ndarray, *, kind: ScalerKind) -> dict[str, Any]:
    """Combinable statistics of one part of the train rows, for global scope."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "standard":
        n = np.sum(~np.isnan(values), axis=0).astype(np.float64)
        mean = np.where(n > 0, np.nansum(values, axis=0) / np.maximum(n, 1), 0.0)
        m2 = np.nansum((values - mean) ** 2, axis=0)
        return {"n": n, "mean": mean, "m2": m2}
    if kind == "minmax":
        empty = values.shape[0] == 0
        return {
            "min": np.full(values.shape[1], np.inf) if empty else np.nanmin(values, axis=0),
            "max": np.full(values.shape[1], -np.inf) if empty else np.nanmax(values, axis=0),
        }
    if kind == "robust":
        return {"values": values}  # quantiles do not combine; keep the rows (global robust only)
    return {"num_cols": values.shape[1]}


def combine(parts: list[dict[str, Any]], *, kind: ScalerKind, num_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(loc, scale) from `partial_fit` results; equals `fit` on the concatenated rows."""
    if kind == "none" or not parts:
        return np.zeros(num_cols), np.ones(num_cols)
    if kind == "standard":
        # Chan et al. pairwise update: stable where sum-of-squares would cancel.
        n, mean, m2 = np.zeros(num_cols), np.zeros(num_cols), np.zeros(num_cols)
        for p in parts:
            tot = n + p["n"]
            delta = p["mean"] - mean
            safe = np.maximum(tot, 1)
            mean = mean + delta * p["n"] / safe
            m2 = m2 + p["m2"] + delta**2 * n * p["n"] / safe
            n = tot
        loc, scale = mean, np.sqrt(m2 / np.maximum(n, 1))
    elif kind == "minmax":
        loc = np.min([p["min"] for p in parts], axis=0)
        scale = np.max([p["max"] for p in parts], axis=0) - loc
    else:
        return fit(np.concatenate([p["values"] for p in parts]), kind=kind)
    return loc, _safe_scale(scale, loc)


def transform(values: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(values - loc) / scale; loc/scale broadcast against the trailing feature axis."""
    return (values - loc) / scale


def inverse(scaled: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """scaled * scale + loc: back to original units."""
    return scaled * scale + loc
