"""Forecast accuracy in original units on the test split, next to naive and seasonal-naive baselines."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from lstm_dist.data.transforms import original_units
from lstm_dist.data.windows import WindowDataset
from lstm_dist.models import Forecaster


@dataclass
class Evaluation:
    """Test metrics of the model and the baselines; `by_step` is the model's MAE per horizon step."""

    metrics: dict[str, float]
    by_step: np.ndarray
    num_windows: int
    examples: dict[str, np.ndarray] = field(default_factory=dict)

    def table(self) -> str:
        """A small text table: model vs baselines."""
        m = self.metrics
        rows = [("model", "model"), ("naive (last value)", "naive"), ("seasonal naive", "snaive")]
        lines = [f"{'':<20}{'MAE':>12}{'RMSE':>12}{'sMAPE %':>10}"]
        for label, key in rows:
            if f"{key}_mae" in m:
                lines.append(f"{label:<20}{m[f'{key}_mae']:>12.4f}{m[f'{key}_rmse']:>12.4f}{m[f'{key}_smape']:>10.2f}")
        return "\n".join(lines)


def error_metrics(pred: np.ndarray, actual: np.ndarray, *, prefix: str) -> dict[str, float]:
    """MAE, RMSE and sMAPE (in %) over all windows, steps and targets."""
    err = pred - actual
    denom = np.abs(pred) + np.abs(actual)
    smape = np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)
    return {
        f"{prefix}_mae": float(np.abs(err).mean()),
        f"{prefix}_rmse": float(np.sqrt((err**2).mean())),
        f"{prefix}_smape": float(100 * smape.mean()),
    }


def seasonal_naive(history: np.ndarray, *, horizon: int, season: int) -> np.ndarray:
    """y_hat[t+h] = y[t+h - m*ceil(h/m)]: the value one (or more) seasons back. history: [B, L, T]."""
    steps = np.arange(1, horizon + 1)
    back = season * np.ceil(steps / season).astype(np.int64) - steps  # distance behind the last observed step
    return history[:, history.shape[1] - 1 - back, :]  # [B, H, T]


@torch.no_grad()
def evaluate_model(
    model: Forecaster,
    ds: WindowDataset,
    *,
    season: int,
    batch_size: int = 512,
    num_examples: int = 4,
) -> Evaluation:
    """Run the model over every window of `ds` (a test split) and score it against the baselines."""
    if len(ds) == 0:
        raise ValueError(f"the {ds.split} split has no windows; lower data.lookback/horizon or raise data.test_size")
    model.eval()
    num_targets = ds.num_targets
    m = ds.manifest
    preds, actuals, naive, snaive = [], [], [], []
    lows, highs = [], []
    use_snaive = ds.lookback >= season
    if not use_snaive:
        warnings.warn(
            f"data.lookback={ds.lookback} < data.seasonality={season}: no seasonal-naive baseline", stacklevel=2
        )
    for start in range(0, len(ds), batch_size):
        idx = np.arange(start, min(start + batch_size, len(ds)))
        b = ds.batch(idx)
        series = b["series"]
        future = torch.from_numpy(b["future"]) if b["future"].shape[-1] else None
        out = model.predict(torch.from_numpy(b["x"]), future=future, series=torch.from_numpy(b["series"]))
        preds.append(original_units(model.point(out).numpy(), series, m))  # [B, H, T] original units
        interval = model.interval(out)
        if interval:
            lo, hi = sorted(interval)[0], sorted(interval)[-1]
            lows.append(original_units(interval[lo].numpy(), series, m))
            highs.append(original_units(interval[hi].numpy(), series, m))
        actuals.append(original_units(b["y"], series, m))
        history = original_units(b["x"][:, :, :num_targets], series, m)  # [B, L, T]
        history = np.where(m.real_steps(b["x"])[..., None], history, np.nan)  # start padding: no history
        naive.append(np.repeat(history[:, -1:, :], ds.horizon, axis=1))  # the last input step is always real
        if use_snaive:  # a season back inside the padding: the naive value stands in
            back = seasonal_naive(history, horizon=ds.horizon, season=season)  # [B, H, T]
            snaive.append(np.where(np.isnan(back), naive[-1], back))
    pred, actual = np.concatenate(preds), np.concatenate(actuals)
    metrics = {
        **error_metrics(pred, actual, prefix="model"),
        **error_metrics(np.concatenate(naive), actual, prefix="naive"),
    }
    if use_snaive:
        metrics.update(error_metrics(np.concatenate(snaive), actual, prefix="snaive"))
    # MASE against the naive forecast on the same windows: < 1 means better than last-value.
    metrics["model_mase"] = metrics["model_mae"] / max(metrics["naive_mae"], 1e-12)
    by_step = np.abs(pred - actual).mean(axis=(0, 2))  # [H]
    pick = np.linspace(0, len(pred) - 1, min(num_examples, len(pred))).astype(np.int64)
    examples = {"pred": pred[pick], "actual": actual[pick], "index": pick}
    if lows:
        examples["low"], examples["high"] = np.concatenate(lows)[pick], np.concatenate(highs)[pick]
    return Evaluation(metrics=metrics, by_step=by_step, num_windows=len(pred), examples=examples)
