"""The final fit's split (`all`: every window up to the end of each series), forecasting from a cutoff
(`as_of`) and the checks on known-future rows. Shards and untrained networks; no Ray Train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_serving import make_model

from lstm_dist.config import load_config
from lstm_dist.data.errors import DataError
from lstm_dist.data.splits import SPLITS, split_bounds, start_range
from lstm_dist.data.windows import WindowDataset
from lstm_dist.models.saved import MODEL_FILE
from lstm_dist.serving import ForecastModel, history_from_shards

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.mark.parametrize(("num_rows", "lookback", "horizon"), [(100, 10, 5), (61, 7, 3), (400, 48, 12)])
def test_split_all_covers_every_window_whose_targets_end_by_the_last_row(num_rows, lookback, horizon) -> None:
    val_start, test_start = split_bounds(num_rows, val_size=0.15, test_size=0.15)
    kw = {"num_rows": num_rows, "val_start": val_start, "test_start": test_start, "lookback": lookback}
    lo, hi = start_range("all", horizon=horizon, **kw)
    assert (lo, hi + lookback + horizon) == (0, num_rows)  # the last window's last target is the last row
    for split in SPLITS:  # train, val and test windows are all among them
        a, b = start_range(split, horizon=horizon, **kw)
        assert lo <= a and b <= hi


@pytest.fixture(scope="module")
def future_model(ray_local, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("final_fit")
    cfg, shards, ckpt = make_model(work, ["data.covariate_cols=[]", "data.future_cols=[temperature]"])
    model = ForecastModel()
    model.load_artifacts({"model": str(ckpt / MODEL_FILE), "manifest": str(shards / "manifest.json")})
    return model, shards


def test_the_all_split_reads_up_to_the_last_row_of_every_series(future_model) -> None:
    _, shards = future_model
    every = WindowDataset(str(shards), split="all")
    parts = [WindowDataset(str(shards), split=s) for s in SPLITS]
    assert len(every) > sum(len(p) for p in parts)  # plus the windows straddling the split boundaries
    m = every.manifest
    last_target = every.batch(np.arange(len(every)))["t0"] + (m.horizon - 1) * m.freq  # [B]
    series = every.window_series()
    for info in m.series:
        assert last_target[series == info.index].max() == info.last_timestamp


def test_as_of_equals_a_forecast_from_the_history_cut_there(future_model) -> None:
    model, shards = future_model
    frame = history_from_shards(shards, num_series=2, extra_rows=40)  # ends with 12 future rows per series
    cut = frame["timestamp"].iloc[70]
    pred = model.forecast(frame, as_of=cut)
    # The same as cutting by hand and passing the rows after the cutoff as the known future.
    past, after = frame[frame["timestamp"] <= cut], frame[frame["timestamp"] > cut]
    pd.testing.assert_frame_equal(pred, model.forecast(past, future=after))
    assert (pred.groupby("series_id")["timestamp"].min() == cut + pd.Timedelta(hours=1)).all()
    # Rows after the cutoff are not input: changing their targets changes nothing.
    changed = frame.copy()
    changed.loc[changed["timestamp"] > cut, "target"] += 1000.0
    pd.testing.assert_frame_equal(model.forecast(changed, as_of=str(cut)), pred)
    # ... but they are different from the forecast at the end of the history.
    assert pred["timestamp"].max() < model.forecast(frame)["timestamp"].min()
    # The pyfunc takes the cutoff as a param.
    pd.testing.assert_frame_equal(model.predict(None, frame, params={"as_of": str(cut)}), pred)


def test_future_rows_are_required_and_checked(future_model) -> None:
    model, shards = future_model
    frame = history_from_shards(shards, num_series=2)
    past, future = frame[frame["target"].notna()], frame[frame["target"].isna()]
    expected = model.forecast(frame)
    pd.testing.assert_frame_equal(model.forecast(past, future=future.drop(columns=["target"])), expected)
    with pytest.raises(DataError, match=r"known-future covariates \['temperature'\]"):
        model.forecast(past)
    with pytest.raises(DataError, match=r"column\(s\) \['temperature'\] not found"):
        model.forecast(past, future=future.drop(columns=["temperature"]))
    name = future["series_id"].iloc[-1]
    with pytest.raises(DataError, match=f"'{name}' \\(12 of 12 steps"):
        model.forecast(past, future=future[future["series_id"] != name])
    with pytest.raises(DataError, match=f"'{name}' \\(1 of 12 steps"):
        model.forecast(past, future=future.iloc[:-1])


def test_an_as_of_before_the_data_is_refused(future_model) -> None:
    model, shards = future_model
    frame = history_from_shards(shards, num_series=1)
    with pytest.raises(DataError, match="no rows at or before"):
        model.forecast(frame, as_of="1990-01-01")
    with pytest.raises(DataError, match="not a timestamp"):
        model.forecast(frame, as_of="yesterday-ish")


def test_the_final_fit_trains_for_the_epoch_the_evaluated_run_kept(tmp_path) -> None:
    from types import SimpleNamespace

    from lstm_dist.pipelines.steps import best_epoch

    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_loss": [0.9, 0.5, 0.7, 0.6]})
    history.to_csv(tmp_path / "history.csv", index=False)
    assert best_epoch(SimpleNamespace(local_copy=lambda: tmp_path)) == 2
    history.assign(val_loss=np.nan).to_csv(tmp_path / "history.csv", index=False)  # trained without validation
    assert best_epoch(SimpleNamespace(local_copy=lambda: tmp_path)) == 4


@pytest.mark.parametrize(("best", "epochs"), [(1, 1), (4, 1), (17, 5), (30, 8)])
def test_a_continued_final_fit_is_a_short_gentle_run(best, epochs) -> None:
    from lstm_dist.pipelines.steps import final_fit_config

    assert load_config(CONF / "quarterly.yaml").train.final_fit == "refit"  # the default
    cfg = load_config(CONF / "monthly.yaml")
    assert cfg.train.final_fit == "continue"  # the monthly config's choice
    final = final_fit_config(cfg, best_epoch=best)
    assert (final.train.epochs, final.train.patience) == (epochs, 0)
    assert final.train.lr == pytest.approx(cfg.train.lr * 0.3)
    assert final.train.keep_checkpoints >= epochs and final.model == cfg.model
    # The refit from fresh weights trains the whole best epoch count at the full rate.
    refit = final_fit_config(load_config(CONF / "monthly.yaml", ["train.final_fit=refit"]), best_epoch=best)
    assert (refit.train.epochs, refit.train.lr) == (best, cfg.train.lr)


@pytest.mark.parametrize(
    ("value", "mode"), [("true", "refit"), ("false", "off"), ("off", "off"), ("continue", "continue")]
)
def test_the_final_fit_switch_keeps_its_boolean_meaning(value, mode) -> None:
    assert load_config(CONF / "monthly.yaml", [f"train.final_fit={value}"]).train.final_fit == mode
