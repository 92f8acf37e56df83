"""Target transforms (data.target_transform): log1p or Box-Cox, applied at ingest before scaling.

Growth that compounds (GDP, sales of a growing shop) is a straight line after a log, and a log makes
the noise proportional to the level, as it usually is. The transform is applied to the target columns
of each series before the target-derived features and the scaler, so everything downstream sees
transformed values; `original_units` undoes scaler and transform wherever forecasts leave the model
(evaluation, plots, serving). Box-Cox takes one lambda per (series, target), fitted on the train part
(`scipy.stats.boxcox_normmax`) and kept in the manifest beside the scaler stats.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np

from lstm_dist.data import scalers
from lstm_dist.data.cleaning import Block
from lstm_dist.data.errors import DataError

if TYPE_CHECKING:  # the manifest is only needed for type hints here
    from lstm_dist.data.manifest import Manifest

TransformKind = Literal["none", "log1p", "boxcox"]
# Box-Cox lambdas are clipped to the range forecasting software searches (R's forecast::BoxCox.lambda):
# beyond it the maximum-likelihood lambda of a short train part is mostly noise, and its inverse explodes.
LAMBDA_RANGE = (-1.0, 2.0)


def check(values: np.ndarray, ts: np.ndarray, *, kind: str, series: str, targets: list[str]) -> None:
    """Refuse values outside the transform's domain: <= 0 for boxcox, < 0 for log1p. `values` [n, T], `ts` [n]."""
    if kind == "none":
        return
    bad = values <= 0 if kind == "boxcox" else values < 0
    if not bad.any():
        return
    row, col = np.argwhere(bad)[0]
    when = np.datetime64(int(ts[row]), "s")
    need = "positive" if kind == "boxcox" else "non-negative"
    raise DataError(
        f"data.target_transform={kind} needs {need} targets, but series '{series}' has {targets[col]} = "
        f"{values[row, col]:g} at {when} (its first such row); use target_transform="
        + ("log1p (for zeros) or none" if kind == "boxcox" else "none")
        + ", or clean the input"
    )


def fit_lambdas(train: np.ndarray, *, kind: str) -> np.ndarray:
    """Box-Cox lambda per target [T] of one series' train rows `train` [n, T]; NaN for other transforms."""
    out = np.full(train.shape[1], np.nan)
    if kind != "boxcox":
        return out
    from scipy import stats  # only for Box-Cox: importing scipy.stats costs every Train worker ~1 s

    for j in range(train.shape[1]):
        col = train[:, j]
        if len(col) < 3 or np.ptp(col) == 0:
            out[j] = 1.0  # nothing to fit: lambda 1 is a shift, the identity up to the scaler
            continue
        with warnings.catch_warnings():  # scipy warns on overflow while it searches far-out lambdas
            warnings.simplefilter("ignore", RuntimeWarning)
            out[j] = float(np.clip(stats.boxcox_normmax(col, method="mle"), *LAMBDA_RANGE))
    return out


def forward(values: np.ndarray, lam: np.ndarray, *, kind: str) -> np.ndarray:
    """Transformed `values` [..., T]; `lam` broadcasts against them (Box-Cox only)."""
    if kind == "none":
        return values
    if kind == "log1p":
        return np.log1p(values)
    from scipy import special

    return special.boxcox(values, lam)


def inverse(values: np.ndarray, lam: np.ndarray, *, kind: str) -> np.ndarray:
    """Original units of transformed `values` [..., T]: the inverse of `forward`.

    A forecast can leave the transform's range (Box-Cox with lambda > 0 below -1/lambda); it is
    clipped to the range's edge, i.e. to 0 in original units, instead of becoming NaN.
    """
    if kind == "none":
        return values
    if kind == "log1p":
        return np.expm1(values)
    lam = np.broadcast_to(lam, np.shape(values))
    base = np.where(lam != 0, values * lam + 1.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(lam != 0, np.maximum(base, 0.0) ** (1.0 / np.where(lam != 0, lam, 1.0)), np.exp(values))
    return inv


def series_lambdas(manifest: Manifest, series_idx: np.ndarray) -> np.ndarray:
    """Box-Cox lambdas [S, T] of the given series (NaN where none was fitted)."""
    table = np.array(
        [[s.target_lambda.get(c, np.nan) for c in manifest.target_cols] for s in manifest.series], dtype=np.float64
    ).reshape(len(manifest.series), len(manifest.target_cols))
    return table[np.asarray(series_idx, dtype=np.int64)]


def kind_of(manifest: Manifest) -> str:
    """The manifest's target transform ("none" for manifests written before transforms existed)."""
    return manifest.data_config.get("target_transform", "none")


def original_units(
    scaled: np.ndarray,
    series: np.ndarray,
    manifest: Manifest,
    *,
    loc: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    lam: np.ndarray | None = None,
) -> np.ndarray:
    """Targets [S, n, T, ...] (scaled, transformed) back in original units: undo the scaler, then the transform.

    Stats come from the manifest by `series` index; pass `loc`/`scale`/`lam` [S, T] (e.g. of an inference
    batch) for series the manifest does not know.
    """
    values = np.asarray(scaled)
    kind = kind_of(manifest)
    if loc is None or scale is None:
        loc, scale = manifest.target_loc_scale(np.asarray(series))
    if lam is None and kind == "boxcox":
        lam = series_lambdas(manifest, series)
    extra = (1,) * (values.ndim - 3)
    shape = (loc.shape[0], 1, loc.shape[1], *extra)  # [S, 1, T, 1...] broadcasts over steps and extras
    out = scalers.inverse(values, loc.reshape(shape), scale.reshape(shape))
    if kind == "none":
        return out
    return inverse(out, np.nan if lam is None else np.asarray(lam).reshape(shape), kind=kind)


def fit_block(block: Block, *, kind: str, targets: list[str], train_rows: np.ndarray) -> np.ndarray:
    """Lambdas [S, T], series i fitted on its first `train_rows[i]` rows (Box-Cox; NaN otherwise)."""
    num_targets = len(targets)
    starts = block.offsets[:-1]
    if kind != "boxcox":
        return np.full((len(block.names), num_targets), np.nan)
    for i, name in enumerate(block.names):  # boxcox_normmax fails on non-positive values: say which first
        rows = slice(block.offsets[i], block.offsets[i + 1])
        check(block.values[rows, :num_targets], block.ts[rows], kind=kind, series=name, targets=targets)
    return np.stack(
        [fit_lambdas(block.values[a : a + n, :num_targets], kind=kind) for a, n in zip(starts, train_rows, strict=True)]
    ).reshape(len(block.names), num_targets)


def transform_block(block: Block, *, kind: str, targets: list[str], lam: np.ndarray) -> Block:
    """A copy of `block` with its target columns (the first len(targets)) transformed; checks the domain first."""
    if kind == "none":
        return block
    num_t = len(targets)
    values = block.values.copy()
    for i, name in enumerate(block.names):
        rows = slice(block.offsets[i], block.offsets[i + 1])
        check(values[rows, :num_t], block.ts[rows], kind=kind, series=name, targets=targets)
        values[rows, :num_t] = forward(values[rows, :num_t], lam[i], kind=kind)
    return Block(names=block.names, offsets=block.offsets, ts=block.ts, values=values)
