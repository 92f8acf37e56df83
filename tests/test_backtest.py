"""Rolling-origin backtest: cutoff arithmetic (unit), and the real pipeline on a local Ray and sqlite MLflow,
where poisoning every row after the first fold's window must leave that fold's forecasts unchanged."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from lstm_dist.config import ConfigError, load_config
from lstm_dist.data.synthetic import write_sample
from lstm_dist.folds import cutoff_ends

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"


def test_cutoffs_count_back_from_each_series_end() -> None:
    t = np.datetime64("2024-01-01T00") + np.arange(30) * np.timedelta64(1, "h")
    history = pd.concat(
        [pd.DataFrame({"unique_id": "a", "ds": t, "y": 0.0}), pd.DataFrame({"unique_id": "b", "ds": t[:20], "y": 0.0})]
    )
    ends = cutoff_ends(history, windows=3, step=4, horizon=5).set_index(["unique_id", "fold"])
    # The last cutoff leaves exactly one horizon: a's is row 30 - 1 - 5 = 24, then 20, 16.
    assert [ends.loc[("a", f), "cutoff"] for f in (1, 2, 3)] == [t[16], t[20], t[24]]
    assert ends.loc[("a", 3), "end"] == t[29] and ends.loc[("b", 3), "cutoff"] == t[14]
    with pytest.raises(ConfigError, match="backtest.windows"):
        cutoff_ends(history, windows=3, step=10, horizon=5)  # b: 19 - 5 - 20 < 0


@pytest.mark.parametrize("module", ["pipelines.train", "pipelines.retrain", "pipelines.backtest"])
def test_script_main_loads_resolves_and_saves_the_config(module: str, tmp_path: Path, capsys) -> None:
    import importlib

    from lstm_dist.pipelines.steps import script_main

    assert importlib.import_module(f"lstm_dist.{module}").main([]) == 2  # each entrypoint goes through script_main
    seen = []
    assert f"python -m {module} CONFIG.yaml" in capsys.readouterr().err
    assert script_main(module, seen.append, [str(DEBUG), f"workflow.work_dir={tmp_path}", "train.epochs=7"]) == 0
    assert [c.train.epochs for c in seen] == [7]
    assert load_config(tmp_path / "last_config.yaml").train.epochs == 7


def _backtest(work: Path, data: Path):
    from lstm_dist.pipelines.backtest import run

    cfg = load_config(
        DEBUG,
        [
            f"workflow.work_dir={work}",
            f"data.path={data}",
            "backtest.windows=2",
            "backtest.step=12",
            "backtest.refit_every=2",  # one training: fold 2 reuses fold 1's model from its own cutoff
            "train.num_workers=1",
        ],
    ).resolved()
    return cfg, run(cfg, progress=lambda *_: None)


@pytest.mark.slow
def test_backtest_folds_never_see_rows_after_their_cutoff(ray_local, tmp_path: Path, monkeypatch) -> None:
    clean = write_sample(tmp_path / "clean.parquet", num_series=4, num_steps=400, seed=0)
    cfg, first = _backtest(tmp_path / "a", clean)
    _rerun_without_ray(tmp_path / "a", clean, first, monkeypatch)
    f = first.forecasts
    assert sorted(f["fold"].unique()) == [1, 2] and f.groupby(["unique_id", "fold"]).size().eq(12).all()
    # Each fold: one window per series, its origin the cutoff, the baselines on exactly those windows.
    assert f.groupby(["unique_id", "fold"])["cutoff"].nunique().eq(1).all()
    assert f[["model", "naive", "snaive", "ets", "theta"]].notna().all().all()
    table = first.table.set_index(["fold", "forecaster"])
    assert set(table.index.get_level_values("fold")) == {"1", "2", "all"}
    assert np.isfinite(table["mase"]).all() and first.csv.exists()
    assert pd.read_csv(first.csv).shape == first.table.shape

    # Poison every row after fold 1's forecast window (cutoff + horizon) and run again from scratch.
    raw = pd.read_parquet(clean)
    end = f[f["fold"] == 1].groupby("unique_id")["ds"].max()
    later = raw["timestamp"].to_numpy() > raw["series_id"].map(end).to_numpy()
    assert later.any()
    raw.loc[later, "target"] = 1e9
    poisoned = tmp_path / "poisoned.parquet"
    raw.to_parquet(poisoned, index=False)
    _, second = _backtest(tmp_path / "b", poisoned)
    g = second.forecasts
    keys = ["unique_id", "fold", "step"]
    one, two = f[f["fold"] == 1].sort_values(keys), g[g["fold"] == 1].sort_values(keys)
    for col in ("y", "model", "naive", "snaive", "ets", "theta"):
        np.testing.assert_allclose(two[col].to_numpy(), one[col].to_numpy(), rtol=1e-6, err_msg=col)
    assert not np.allclose(g[g["fold"] == 2]["y"], f[f["fold"] == 2]["y"])  # the poison did land later on

    run = mlflow.MlflowClient(cfg.tracking_uri()).get_run(first.run_id)
    assert run.data.params["backtest.windows"] == "2" and "backtest_model_mase" in run.data.metrics
    assert "backtest_snaive_mase" in run.data.metrics


def _rerun_without_ray(work: Path, data: Path, first, monkeypatch) -> None:
    """A rerun of a finished backtest takes every fold from the work dir and starts no Ray: starting it raises
    (and this test's own Ray counts as none), and the rerun gives the same table."""
    from lstm_dist.pipelines import steps

    def trap(cfg):
        raise AssertionError("the cached backtest started Ray")

    with monkeypatch.context() as m:
        m.setattr(steps, "init_ray", trap)
        m.setattr(steps, "ray_started", lambda: False)
        _, again = _backtest(work, data)
    pd.testing.assert_frame_equal(again.table, first.table)
    assert again.run_id != first.run_id  # its own MLflow run, with the same table and plot
