"""The PNGs a run carries: loss curves, forecast vs actual, error by horizon step, gate heat map, tune trials.

matplotlib's object API with the Agg canvas (no pyplot): no global figure state and no display,
so it is safe in Ray tasks and threads. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def loss_curves(history: pd.DataFrame, path: str | Path, *, title: str = "training") -> Path:
    """Train and validation loss per epoch (scaled units), and validation MAE in original units."""
    history = history.sort_values("epoch")
    epochs = history["epoch"].to_numpy()
    has_val = "val_loss" in history and bool(history["val_loss"].abs().sum() > 0)
    has_mae = has_val and "val_mae" in history
    fig = _figure(10 if has_mae else 6, 3.6)
    axes = fig.subplots(1, 2 if has_mae else 1, squeeze=False)[0]
    ax = axes[0]
    if "train_loss" in history:
        ax.plot(epochs, history["train_loss"], marker="o", label="train loss")
    if has_val:
        ax.plot(epochs, history["val_loss"], marker="o", label="validation loss")
        best = int(history["val_loss"].to_numpy().argmin())
        ax.axvline(epochs[best], color="grey", linestyle=":", label=f"best epoch {epochs[best]}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (scaled units)")
    ax.set_title(f"{title}: loss" + ("" if has_val else " (validation folded into training)"))
    ax.legend()
    ax.grid(alpha=0.3)
    if has_mae:
        ax = axes[1]
        ax.plot(epochs, history["val_mae"], marker="o", color="tab:green", label="validation MAE")
        if "val_rmse" in history:
            ax.plot(epochs, history["val_rmse"], marker="o", color="tab:red", label="validation RMSE")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("error (original units)")
        ax.set_title(f"{title}: validation error")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def forecast_windows(model, ds, *, num_series: int = 4) -> dict[str, Any]:
    """The last test window of up to `num_series` series, in original units: history, actual, forecast, interval."""
    import torch

    series_of = ds.window_series()
    picks = [int(np.flatnonzero(series_of == s)[-1]) for s in np.unique(series_of)[:num_series]]
    batch = ds.batch(np.asarray(picks))
    m = ds.manifest
    from lstm_dist.data.transforms import original_units

    s = batch["series"]
    future = torch.from_numpy(batch["future"]) if batch["future"].shape[-1] else None
    with torch.no_grad():
        out = model.predict(torch.from_numpy(batch["x"]), future=future, series=torch.from_numpy(batch["series"]))
    interval = model.interval(out) or {}
    bands = sorted(interval)  # e.g. ["q0.1", "q0.9"]
    result = {
        "names": [m.series[int(s)].name for s in batch["series"]],
        "t0": batch["t0"],
        "freq": m.frequency(),
        "history": np.where(  # [S, L, T]; start padding is no history: NaN leaves a gap in the plot
            m.real_steps(batch["x"])[..., None], original_units(batch["x"][:, :, : ds.num_targets], s, m), np.nan
        ),
        "actual": original_units(batch["y"], s, m),  # [S, H, T]
        "forecast": original_units(model.point(out).numpy(), s, m),  # [S, H, T]
        "targets": list(m.target_cols),
    }
    if len(bands) >= 2:
        lo, hi = bands[0], bands[-1]
        result["interval"] = (
            f"{lo}-{hi}",
            original_units(interval[lo].numpy(), s, m),
            original_units(interval[hi].numpy(), s, m),
        )
    return result


def forecast_vs_actual(windows: dict[str, Any], path: str | Path, *, target: int = 0) -> Path:
    """One panel per series: the lookback history, the actual horizon and the forecast (with its interval)."""
    names = windows["names"]
    cols = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / cols)
    fig = _figure(6 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    freq = windows["freq"]  # a Frequency: calendar steps (months) are not a fixed number of seconds
    for i, ax in enumerate(axes):
        if i >= len(names):
            ax.set_visible(False)
            continue
        t0 = np.datetime64(int(windows["t0"][i]), "s")
        hist = windows["history"][i, :, target]
        lookback, horizon = len(hist), windows["actual"].shape[1]
        first = freq.shift(np.array([int(windows["t0"][i])]), -lookback)
        t_all = np.concatenate([first, freq.next_steps(first, lookback + horizon - 1)[0]]).astype("datetime64[s]")
        t_hist, t_fut = t_all[:lookback], t_all[lookback:]
        ax.plot(t_hist, hist, color="black", linewidth=1, label="history")
        ax.plot(t_fut, windows["actual"][i, :, target], color="black", linestyle="--", linewidth=1.2, label="actual")
        ax.plot(t_fut, windows["forecast"][i, :, target], color="tab:blue", linewidth=1.8, label="forecast")
        if "interval" in windows:
            label, lo, hi = windows["interval"]
            ax.fill_between(t_fut, lo[i, :, target], hi[i, :, target], color="tab:blue", alpha=0.25, label=label)
        ax.axvline(t0, color="grey", linestyle=":")
        ax.set_title(f"series {names[i]} ({windows['targets'][target]})")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle("forecast vs actual: last test window per series (original units)")
    return _save(fig, path)


def error_by_horizon(by_step: np.ndarray, path: str | Path, *, metrics: dict[str, float]) -> Path:
    """Model MAE per horizon step on the test split, against the baselines' overall MAE."""
    by_step = np.asarray(by_step, dtype=float)
    steps = np.arange(1, len(by_step) + 1)
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    ax.bar(steps, by_step, color="tab:blue", alpha=0.8, label="model MAE at step h")
    for key, label, color in (
        ("naive_mae", "naive (last value)", "tab:red"),
        ("snaive_mae", "seasonal naive", "tab:orange"),
    ):
        if key in metrics:
            ax.axhline(metrics[key], color=color, linestyle="--", label=f"{label}: {metrics[key]:.3g} (all steps)")
    if "model_mae" in metrics:
        ax.axhline(
            metrics["model_mae"],
            color="tab:blue",
            linestyle=":",
            label=f"model: {metrics['model_mae']:.3g} (all steps)",
        )
    ax.set_xlabel("forecast step h")
    ax.set_ylabel("MAE (original units)")
    ax.set_title("test error by horizon step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def backtest_mase(table: pd.DataFrame, path: str | Path) -> Path:
    """MASE per cutoff of the model and each baseline (lstm_dist.folds.score_folds's table)."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    folds = table[table["fold"] != "all"]
    for name, part in folds.groupby("forecaster", sort=False):
        ax.plot(part["fold"].astype(int), part["mase"], marker="o", linewidth=2.5 if name == "model" else 1, label=name)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("cutoff (1 = oldest)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("MASE")
    ax.set_title("rolling-origin backtest: MASE per cutoff")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def gate_heatmap(model, ds, path: str | Path) -> Path | None:
    """Gate activations of the first LSTM layer over one test window; None for GRU/RNN models."""
    try:
        from lstm_dist.models.gates import gate_activations
    except ImportError:  # the models package has no gate capture
        return None
    if getattr(model.cfg, "cell", None) != "lstm":
        return None
    import torch

    x = torch.from_numpy(ds.batch(np.asarray([len(ds) - 1]))["x"][0])  # [L, F]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plot_gate_heatmap(gate_activations(model, x), path, segment=getattr(model.cfg, "segment", 1))


def tune_trials(trials: pd.DataFrame, path: str | Path, *, metric: str = "val_loss") -> Path:
    """Validation loss per epoch of every trial; trials stopped early end in a cross, the best is bold."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    best = trials["best_val_loss"].idxmin() if trials["best_val_loss"].notna().any() else None
    for i, row in trials.iterrows():
        history = row.get("history")
        if not isinstance(history, dict) or metric not in history:
            continue
        epochs, values = history["epoch"], history[metric]
        stopped = row["stopped"] not in ("no", "")
        ax.plot(
            epochs,
            values,
            marker="x" if stopped else "o",
            linestyle="--" if stopped else "-",
            linewidth=2.5 if i == best else 1,
            label=f"{row['trial_id']} ({row['stopped']})" if row["stopped"] != "no" else str(row["trial_id"]),
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (scaled units)")
    ax.set_title(
        f"tune: {len(trials)} trials ({int((trials['stopped'] == 'scheduler').sum())} stopped by the scheduler)"
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def evaluation_plots(
    checkpoint: str | Path, shard_dir: str | Path, *, evaluation: dict[str, Any], out_dir: str | Path
) -> list[Path]:
    """Forecast vs actual, error by horizon step and the gate heat map of a trained model on the test split."""
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.models.saved import load_model

    out_dir = Path(out_dir)
    model = load_model(checkpoint)
    ds = WindowDataset(str(shard_dir), split="test")
    paths = [
        forecast_vs_actual(forecast_windows(model, ds), out_dir / "forecast_vs_actual.png"),
        error_by_horizon(
            np.asarray(evaluation["by_step"]), out_dir / "error_by_horizon.png", metrics=evaluation["metrics"]
        ),
    ]
    gates = gate_heatmap(model, ds, out_dir / "gate_heatmap.png")
    if gates is not None:
        paths.append(gates)
    return paths


def plot_gate_heatmap(
    acts: dict[str, np.ndarray], path: str | Path, *, title: str | None = None, segment: int = 1
) -> Path:
    """One heat map per gate (time across, hidden units down) written as a PNG at `path`; `segment`: the
    lookback steps per encoder step (model.segment).

    Uses matplotlib's object API with the Agg canvas, not pyplot: no global figure state,
    no display needed, safe inside Ray workers and threads.
    """
    path = Path(path)
    names = list(acts)
    length, hidden = next(iter(acts.values())).shape
    fig = Figure(figsize=(min(4 + length / 12, 16), 1.2 + 1.6 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        # Sigmoid gates live in [0, 1], the tanh candidate in [-1, 1]: fixed colour ranges make
        # windows and models comparable at a glance.
        signed = name == "candidate"
        image = ax.imshow(
            acts[name].T,  # [hidden, L]
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap="RdBu_r" if signed else "viridis",
            vmin=-1.0 if signed else 0.0,
            vmax=1.0,
        )
        ax.set_ylabel(f"{name}\nunit")
        fig.colorbar(image, ax=ax, pad=0.01)
    noun = "step" if segment == 1 else "segment"
    axes[-1].set_xlabel(f"{noun} in lookback window" + ("" if segment == 1 else f" ({segment} steps each)"))
    fig.suptitle(title or f"LSTM gate activations (layer 1, {hidden} units, {length} {noun}s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
