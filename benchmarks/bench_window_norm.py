"""Window normalisation on real data, at the model level (no Ray, no ingest): MASE of none/last/mean/revin.

    PYTHONPATH=. python benchmarks/bench_window_norm.py [--steps 300] [--seeds 1]

Yearly GDP (fpp3 global_economy, complete 1960-2017) and quarterly tourism trips (fpp3 tourism). Each
series is scaled by a standard scaler fitted on its train part (as ingest does); windows end before the
last `horizon` points, which are the test window (one forecast origin per series). MASE uses the
in-sample seasonal-naive scale (m = 1 yearly, 4 quarterly) and is averaged over series; `+log` rows
train on log1p of the data (data.target_transform=log1p). Loss: MAE, in window units where the mode has them.

Measured (2 CPU cores shared, torch 2.13 CPU, 300 steps, batch 128, hidden 32, mean of 3 seeds), MASE:

    data               naive  snaive  drift   none   last   mean  revin | +log1p: none   last   mean  revin
    GDP yearly (2012-17) 5.89   5.89   5.06   7.84  10.48   9.11   9.86 |         7.35  11.98   8.92   9.04
    tourism quarterly   1.33   1.17   1.37   1.16   1.09   1.01   1.01 |         1.17   1.08   1.01   1.01

`none` forecast below the last value 86% of the time on GDP (the bias this fixes), the window modes
almost never. 2012-17 broke the trend of most countries' USD GDP; with the origin moved back to 2005
(forecast 2006-11, 1 seed) the picture turns: naive 15.1, drift 12.9, none 22.9, last 8.0, mean 8.1.
`mean` is the default: best or tied on both sets and both GDP origins.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from lstm_dist.config import ModelConfig
from lstm_dist.models import build_model


def gdp() -> tuple[list[np.ndarray], int]:
    import tsdata.fpp3 as f

    df = f.raw["global_economy"].pivot(index="Year", columns="Country", values="GDP").loc[1960:2017]
    return [df[c].to_numpy(np.float64) for c in df.columns if df[c].notna().all()], 1


def tourism() -> tuple[list[np.ndarray], int]:
    import tsdata.fpp3 as f

    df = f.raw["tourism"]
    return [g["Trips"].to_numpy(np.float64) for _, g in df.groupby(["Region", "State", "Purpose"], sort=True)], 4


def make(series: list[np.ndarray], *, lookback: int, horizon: int, log: bool = False):
    """Train windows (x, y) scaled per series on the train part, and the test window per series."""
    xs, ys, test = [], [], []
    for s in series:
        v = np.log1p(s) if log else s  # what data.target_transform=log1p does
        train = v[:-horizon]
        loc, scale = train.mean(), train.std() or 1.0
        z = (v - loc) / scale
        for start in range(0, len(train) - lookback - horizon + 1):
            xs.append(z[start : start + lookback])
            ys.append(z[start + lookback : start + lookback + horizon])
        test.append((z[-horizon - lookback : -horizon], loc, scale))
    x = torch.tensor(np.stack(xs), dtype=torch.float32)[..., None]
    y = torch.tensor(np.stack(ys), dtype=torch.float32)[..., None]
    return x, y, test


def fit_predict(mode: str, x, y, test, *, horizon: int, steps: int, seed: int, log: bool) -> np.ndarray:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_size=32, window_norm=mode, loss="mae")
    model = build_model(cfg, num_features=1, num_targets=1, horizon=horizon)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        loss = model.loss(model(x[idx]), y[idx], x=x[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    xt = torch.tensor(np.stack([t[0] for t in test]), dtype=torch.float32)[..., None]
    pred = model.point(model.predict(xt))[..., 0].numpy()  # [S, H]
    loc = np.array([t[1] for t in test])[:, None]
    scale = np.array([t[2] for t in test])[:, None]
    pred = pred * scale + loc
    return np.expm1(pred) if log else pred


def mase(pred: np.ndarray, series: list[np.ndarray], *, horizon: int, season: int) -> tuple[float, float]:
    """(mean MASE, share of forecasts below the last observed value)."""
    out, below = [], []
    for p, s in zip(pred, series, strict=True):
        insample, actual = s[:-horizon], s[-horizon:]
        denom = np.abs(insample[season:] - insample[:-season]).mean()
        out.append(np.abs(p - actual).mean() / denom)
        below.append((p < insample[-1]).mean())
    return float(np.mean(out)), float(np.mean(below))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, (series, season), lookback, horizon in [
        ("gdp yearly", gdp(), 12, 6),
        ("tourism quarterly", tourism(), 16, 8),
    ]:
        naive = np.stack([np.repeat(s[-horizon - 1], horizon) for s in series])
        snaive = np.stack([s[-horizon - season : -horizon][np.arange(horizon) % season] for s in series])
        rows.append((name, "naive", *mase(naive, series, horizon=horizon, season=season), 0.0))
        rows.append((name, "seasonal naive", *mase(snaive, series, horizon=horizon, season=season), 0.0))
        drift = np.stack(
            [
                s[-horizon - 1] + (s[-horizon - 1] - s[0]) / (len(s) - horizon - 1) * np.arange(1, horizon + 1)
                for s in series
            ]
        )
        rows.append((name, "drift", *mase(drift, series, horizon=horizon, season=season), 0.0))
        for log in (False, True):
            x, y, test = make(series, lookback=lookback, horizon=horizon, log=log)
            for mode in ("none", "last", "mean", "revin"):
                t0 = time.perf_counter()
                scores = [
                    mase(
                        fit_predict(mode, x, y, test, horizon=horizon, steps=args.steps, seed=s, log=log),
                        series,
                        horizon=horizon,
                        season=season,
                    )
                    for s in range(args.seeds)
                ]
                label = f"{mode}{' +log' if log else ''}"
                rows.append((name, label, *np.mean(scores, axis=0), time.perf_counter() - t0))
                print(rows[-1], flush=True)
    print(pd.DataFrame(rows, columns=["data", "model", "MASE", "share below last", "seconds"]).to_string(index=False))


if __name__ == "__main__":
    main()
