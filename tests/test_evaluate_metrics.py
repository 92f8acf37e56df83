"""Metrics and baselines of lstm_dist.evaluate on frames small enough to check by hand (no Ray, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lstm_dist.config import load_config
from lstm_dist.evaluate import (
    ETS,
    MODEL,
    NAIVE,
    SNAIVE,
    THETA,
    _panel,
    add_baselines,
    interval_scores,
    score,
    season_of,
    summarize,
)

DAY = np.timedelta64(1, "D")


def _days(n: int, start: int = 0) -> np.ndarray:
    return np.datetime64("2024-01-01") + DAY * np.arange(start, start + n)


def _history(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.concat(
        [pd.DataFrame({"unique_id": uid, "ds": _days(len(y)), "y": np.asarray(y, float)}) for uid, y in values.items()],
        ignore_index=True,
    )


def _frame(history: pd.DataFrame, *, uid: str, cutoff_pos: int, forecast: list[float]) -> pd.DataFrame:
    """One window of `uid`: the rows after position `cutoff_pos`, with `forecast` as the model column."""
    own = history[history["unique_id"] == uid].reset_index(drop=True)
    h = len(forecast)
    rows = own.iloc[cutoff_pos + 1 : cutoff_pos + 1 + h]
    return pd.DataFrame(
        {
            "unique_id": uid,
            "ds": rows["ds"].to_numpy(),
            "cutoff": own["ds"].iloc[cutoff_pos],
            "step": np.arange(1, h + 1),
            "y": rows["y"].to_numpy(),
            MODEL: np.asarray(forecast, float),
        }
    )


def test_mase_matches_the_definition_by_hand():
    # Six in-sample points, season 2: seasonal differences |y_t - y_{t-2}| = |3-1|, |2-4|, |5-3|, |4-2| -> mean 2.
    # Two out-of-sample points 6, 5 forecast as 7, 3: MAE = (1 + 2) / 2 = 1.5, so MASE = 1.5 / 2 = 0.75.
    # sMAPE (utilsforecast, in %): 100 * mean(|1| / 13, |2| / 8) = 100 * (1/13 + 1/4) / 2.
    history = _history({"a": [1, 4, 3, 2, 5, 4, 6, 5]})
    frame = _frame(history, uid="a", cutoff_pos=5, forecast=[7, 3])
    m = summarize(score(frame, history, season=2, models=[MODEL]))
    in_sample = np.array([1, 4, 3, 2, 5, 4], float)
    scale = np.abs(in_sample[2:] - in_sample[:-2]).mean()
    err = np.array([6, 5], float) - np.array([7, 3], float)
    assert scale == pytest.approx(2.0)
    assert m["model_mase"] == pytest.approx(np.abs(err).mean() / scale) == pytest.approx(0.75)
    assert m["model_mae"] == pytest.approx(1.5)
    assert m["model_rmse"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert m["model_smape"] == pytest.approx(100 * (1 / 13 + 2 / 8) / 2)


def test_mase_scale_ignores_rows_after_the_cutoff():
    # The forecast window's own rows and anything later must not enter the scale: poison them.
    history = _history({"a": [1, 4, 3, 2, 5, 4, 6, 5]})
    poisoned = history.copy()
    poisoned.loc[6:, "y"] = 1e9
    frame = _frame(history, uid="a", cutoff_pos=5, forecast=[7, 3])
    for by_cutoff in (False, True):
        clean = summarize(score(frame, history, season=2, models=[MODEL], by_cutoff=by_cutoff))["model_mase"]
        dirty = summarize(score(frame, poisoned, season=2, models=[MODEL], by_cutoff=by_cutoff))["model_mase"]
        assert clean == pytest.approx(0.75) and dirty == pytest.approx(clean)


def test_scores_are_per_series_then_averaged():
    # b's errors are ten times a's, so a pooled MAE would differ from the mean of per-series MAEs only
    # when the series have different numbers of rows: give b one window of 2, a two windows of 2.
    history = _history({"a": [1, 4, 3, 2, 5, 4, 6, 5, 7, 6], "b": [10, 40, 30, 20, 50, 40, 60, 50]})
    frame = pd.concat(
        [
            _frame(history, uid="a", cutoff_pos=5, forecast=[7, 3]),
            _frame(history, uid="a", cutoff_pos=7, forecast=[7, 6]),
            _frame(history, uid="b", cutoff_pos=5, forecast=[70, 30]),
        ],
        ignore_index=True,
    )
    per_series = score(frame, history, season=2, models=[MODEL])
    mae = per_series[per_series["metric"] == "mae"].set_index("unique_id")[MODEL]
    assert mae["a"] == pytest.approx((1 + 2 + 0 + 0) / 4) and mae["b"] == pytest.approx(15.0)
    assert summarize(per_series)["model_mae"] == pytest.approx((mae["a"] + mae["b"]) / 2)


def test_baselines_are_fitted_up_to_each_cutoff():
    season = 3
    y = [float(v) for v in np.tile([1.0, 5.0, 9.0], 12) + np.arange(36) * 0.1]
    history = _history({"a": y, "b": [2 * v for v in y]})
    frame = pd.concat(
        [_frame(history, uid=u, cutoff_pos=c, forecast=[0.0] * 4) for u in ("a", "b") for c in (20, 25, 30)],
        ignore_index=True,
    )
    out = add_baselines(frame, history, season=season)
    assert len(out) == len(frame)
    for (uid, cutoff), window in out.groupby(["unique_id", "cutoff"]):
        past = history[(history["unique_id"] == uid) & (history["ds"] <= cutoff)]["y"].to_numpy()
        assert np.allclose(window[NAIVE], past[-1])
        steps = window["step"].to_numpy()
        assert np.allclose(window[SNAIVE], past[len(past) - season + (steps - 1) % season])
    last = out.groupby("unique_id")["cutoff"].transform("max") == out["cutoff"]
    assert out.loc[last, [ETS, THETA]].notna().all().all()  # ETS/Theta only on each series' last window
    assert out.loc[~last, [ETS, THETA]].isna().all().all()
    # A strongly seasonal series: ETS and Theta do much better than the naive forecast.
    m = summarize(score(out[last], history, season=season, models=[NAIVE, SNAIVE, ETS, THETA]))
    assert m["ets_mae"] < 0.5 * m["naive_mae"] and m["theta_mae"] < 0.5 * m["naive_mae"]


def test_baselines_fitted_in_several_processes_are_the_same():
    rng = np.random.default_rng(0)
    history = _history({f"s{i}": list(np.tile([1.0, 5.0, 9.0], 12) * (i + 1) + rng.normal(size=36)) for i in range(6)})
    frame = pd.concat([_frame(history, uid=f"s{i}", cutoff_pos=30, forecast=[0.0] * 4) for i in range(6)])
    one = add_baselines(frame, history, season=3)
    two = add_baselines(frame, history, season=3, n_jobs=2)
    assert one[[ETS, THETA]].notna().all().all()
    pd.testing.assert_frame_equal(one, two)


def test_slow_baselines_see_only_the_last_rows_they_are_given():
    # A level shift 24 rows before the cutoff: fitted on the last 12 rows only, ETS and Theta see one level and
    # forecast it; the same fit on the history with everything before those rows dropped gives the same numbers.
    rng = np.random.default_rng(1)
    y = np.concatenate([np.full(40, 100.0), np.full(24, 10.0)]) + rng.normal(scale=0.5, size=64)
    history = _history({"a": list(y)})
    frame = _frame(history, uid="a", cutoff_pos=59, forecast=[0.0] * 4)
    bounded = add_baselines(frame, history, season=3, slow_history=12)
    by_hand = add_baselines(frame, history.iloc[60 - 12 :], season=3)
    pd.testing.assert_frame_equal(bounded, by_hand)
    whole = add_baselines(frame, history, season=3)
    assert not np.allclose(whole[[ETS, THETA]], bounded[[ETS, THETA]])
    assert np.allclose(bounded[[ETS, THETA]], 10.0, atol=2.0)


@pytest.mark.parametrize("keep", [None, 3, 100])
def test_panel_holds_each_windows_history_up_to_its_cutoff(keep):
    # Window k of the statsforecast panel is its series' rows up to its cutoff (the last `keep`), on 0..n-1;
    # a cutoff before the first row gives no rows, one on it a single row.
    history = _history({"a": [1, 2, 3, 4, 5], "b": [10, 20, 30, 40, 50, 60, 70, 80]})
    windows = pd.DataFrame(
        {"unique_id": ["b", "a", "b", "a", "a"], "cutoff": _days(5)[[4, 4, 0, 0, 0]] - np.array([0, 0, 0, 0, 1]) * DAY}
    )
    panel = _panel(windows, history, keep=keep)
    for k, (uid, cutoff) in enumerate(zip(windows["unique_id"], windows["cutoff"], strict=True)):
        own = history[(history["unique_id"] == uid) & (history["ds"] <= cutoff)]["y"].to_numpy()
        expected = own[-keep:] if keep else own
        got = panel[panel["unique_id"] == k]
        assert got["y"].tolist() == expected.tolist(), (k, keep)
        assert got["ds"].tolist() == list(range(len(expected)))
    lengths = [5, 5, 1, 1, 0]  # rows up to each cutoff: the day-4 ones, the day-0 ones, one the day before a's first
    assert panel.groupby("unique_id").size().reindex(range(5), fill_value=0).tolist() == [
        min(n, keep or n) for n in lengths
    ]


def test_interval_scores_pinball_and_coverage():
    history = _history({"a": [1, 4, 3, 2, 5, 4, 6, 5]})
    frame = _frame(history, uid="a", cutoff_pos=5, forecast=[6, 5])
    frame[f"{MODEL}_q0.1"] = [5.0, 5.5]  # the second actual (5) falls below its interval
    frame[f"{MODEL}_q0.5"] = [6.0, 5.0]
    frame[f"{MODEL}_q0.9"] = [7.0, 6.0]
    out = interval_scores(frame)
    assert out[f"{MODEL}_coverage80"] == pytest.approx(0.5)

    # Pinball of q at y: q * (y - f) if y >= f else (1 - q) * (f - y); q0.5 is exact (0).
    def pinball(q: float, y: float, f: float) -> float:
        return q * (y - f) if y >= f else (1 - q) * (f - y)

    q01 = np.mean([pinball(0.1, 6, 5), pinball(0.1, 5, 5.5)])  # (0.1 + 0.45) / 2
    q09 = np.mean([pinball(0.9, 6, 7), pinball(0.9, 5, 6)])  # (0.1 + 0.1) / 2
    assert out[f"{MODEL}_pinball"] == pytest.approx((q01 + 0 + q09) / 3) == pytest.approx(0.125)
    assert interval_scores(frame.drop(columns=[c for c in frame if c.startswith(f"{MODEL}_q")])) == {}


def test_season_of_reads_config_and_manifest_dicts():
    cfg = load_config("conf/debug.yaml")
    assert season_of(cfg.data) == cfg.data.seasonality == 24
    assert season_of({"seasonality": 7}) == 7
