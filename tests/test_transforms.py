"""Target transforms (data.target_transform) and window normalisation end to end through ingest and the pyfunc."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lstm_dist.config import DataConfig, ModelConfig
from lstm_dist.data import transforms
from lstm_dist.data.errors import DataError
from lstm_dist.data.inference import make_inference_batch
from lstm_dist.data.ingest import ingest
from lstm_dist.data.windows import WindowDataset
from lstm_dist.evaluate import evaluate_model
from lstm_dist.models import build_model
from lstm_dist.serving import ForecastModel
from lstm_dist.train.checkpoints import model_args_for
from lstm_dist.train.steps import evaluate as validate

L, H = 24, 6


def _raw(num_steps: int = 160) -> pd.DataFrame:
    """Two positive, growing, seasonal hourly series (multiplicative: what a log straightens out)."""
    rng = np.random.default_rng(0)
    t = np.arange(num_steps)
    rows = []
    for name, level, growth in (("a", 50.0, 0.01), ("b", 3.0, 0.004)):
        value = level * np.exp(growth * t) * (1 + 0.3 * np.sin(2 * np.pi * t / 24)) * rng.lognormal(0, 0.05, num_steps)
        ts = np.datetime64("2024-01-01T00:00:00") + t.astype("timedelta64[h]")
        rows.append(pd.DataFrame({"timestamp": ts, "series_id": name, "target": value}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("kind", ["log1p", "boxcox"])
@pytest.mark.parametrize("lam", [-0.5, 0.0, 0.3, 1.0, 1.7])
def test_transform_round_trip(kind: str, lam: float) -> None:
    values = np.random.default_rng(1).lognormal(1.0, 1.0, size=(50, 2))
    lams = np.array([lam, 0.5])
    back = transforms.inverse(transforms.forward(values, lams, kind=kind), lams, kind=kind)
    np.testing.assert_allclose(back, values, rtol=1e-9)


def test_boxcox_inverse_clips_below_the_range_instead_of_nan() -> None:
    out = transforms.inverse(np.array([-5.0, 0.0]), np.array(0.5), kind="boxcox")  # -5 < -1/lambda
    assert out[0] == 0.0 and out[1] == pytest.approx(1.0)


def test_lambda_fit_follows_the_shape_of_growth() -> None:
    t = np.arange(1, 200, dtype=float)[:, None]
    rng = np.random.default_rng(0)
    exp_growth = np.exp(0.03 * t) * rng.lognormal(0, 0.02, t.shape)
    linear = 100 + t + rng.normal(0, 0.5, t.shape)
    assert abs(transforms.fit_lambdas(exp_growth, kind="boxcox")[0]) < 0.3
    assert transforms.fit_lambdas(linear, kind="boxcox")[0] > 0.5
    assert np.isnan(transforms.fit_lambdas(linear, kind="log1p")).all()


@pytest.mark.parametrize(("kind", "bad", "pattern"), [("boxcox", 0.0, "positive"), ("log1p", -1.0, "non-negative")])
def test_values_outside_the_domain_name_series_and_time(kind: str, bad: float, pattern: str) -> None:
    values = np.array([[1.0], [2.0], [bad], [bad]])
    ts = np.array([0, 3600, 7200, 10800])
    with pytest.raises(
        DataError, match=rf"needs {pattern} targets.*series 'shop 7' has sales = .* at 1970-01-01T02:00:00"
    ):
        transforms.check(values, ts, kind=kind, series="shop 7", targets=["sales"])


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("kind", ["log1p", "boxcox"])
def test_ingest_and_inference_round_trip_in_original_units(tmp_path, kind: str) -> None:
    raw = _raw()
    raw.to_parquet(tmp_path / "raw.parquet")
    cfg = DataConfig(path=str(tmp_path / "raw.parquet"), lookback=L, horizon=H, lags=[2], target_transform=kind)
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert bool(manifest.series[0].target_lambda) == (kind == "boxcox")
    ds = WindowDataset(str(tmp_path / "shards"), split="test")
    last = np.array([np.flatnonzero(ds.window_series() == s)[-1] for s in range(2)])
    want = ds.batch(last)
    # The scaled, transformed truth comes back as the raw truth.
    ts = raw.timestamp.astype("datetime64[s]").astype(np.int64).to_numpy()
    truth = np.stack(
        [raw.target[(raw.series_id == n) & (ts >= t0)].to_numpy()[:H] for n, t0 in zip("ab", want["t0"], strict=True)]
    )
    np.testing.assert_allclose(transforms.original_units(want["y"], want["series"], manifest)[..., 0], truth, rtol=1e-5)
    # Inference from raw history gives the training window's inputs (transform applied the same way).
    history = raw[ts < np.where(raw.series_id == "a", want["t0"][0], want["t0"][1])]
    got = make_inference_batch(history, manifest=manifest)
    np.testing.assert_allclose(got["x"], want["x"], rtol=1e-5, atol=1e-5)

    # A model forecast through the pyfunc is in original units: positive, of the series' own size.
    torch.manual_seed(0)
    net = build_model(ModelConfig(hidden_size=8), **model_args_for(ds)).eval()
    # The training loop's validation MAE is in original units too: it equals the evaluation's.
    val = validate(net, ds, rank=0, world_size=1, precision="fp32", device=torch.device("cpu"), batch_size=64)
    assert val["val_mae"] == pytest.approx(evaluate_model(net, ds, season=24).metrics["model_mae"], rel=1e-4)
    pyfunc = ForecastModel()
    pyfunc.net, pyfunc.manifest = net, manifest
    fc = pyfunc.forecast(history)
    for name in "ab":
        pred = fc[fc.series_id == name].target.to_numpy()
        last_value = history[history.series_id == name].target.iloc[-1]
        assert len(pred) == H and (pred > 0).all() and np.all(np.abs(np.log(pred / last_value)) < 3)


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("mode", ["last", "diff"])
def test_pyfunc_forecast_follows_a_shifted_and_scaled_history(tmp_path, mode: str) -> None:
    """Series scaler off, window normalisation on (without the spread prior, which is in the scaler's units):
    a*history + b forecasts a*forecast + b, end to end."""
    raw = _raw()
    raw.to_parquet(tmp_path / "raw.parquet")
    cfg = DataConfig(path=str(tmp_path / "raw.parquet"), lookback=L, horizon=H, lags=[3], scaler="none")
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    ds = WindowDataset(str(tmp_path / "shards"), split="train")
    torch.manual_seed(0)
    pyfunc = ForecastModel()
    pyfunc.net = build_model(
        ModelConfig(hidden_size=8, window_norm=mode, window_prior_steps=0), **model_args_for(ds)
    ).eval()
    pyfunc.manifest = manifest
    a, b = 2.5, 40.0
    base = pyfunc.forecast(raw).target.to_numpy()
    moved = pyfunc.forecast(raw.assign(target=a * raw.target + b)).target.to_numpy()
    np.testing.assert_allclose(moved, a * base + b, rtol=1e-4)
    assert not np.allclose(base, base[0])  # a real forecast, not a constant that trivially follows


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("mode", ["mean", "diff"])
def test_a_shifted_and_scaled_data_set_gets_the_forecast_shifted_and_scaled(tmp_path, mode: str) -> None:
    """The defaults (per-series standard scaler, window spread prior 1): ingest a*y + b instead of y and the
    same network forecasts a*forecast + b, because the series scaler absorbs the level and the scale."""
    raw = _raw()
    a, b = 2.5, 40.0
    torch.manual_seed(0)
    net = None
    forecasts = []
    for name, frame in (("base", raw), ("moved", raw.assign(target=a * raw.target + b))):
        frame.to_parquet(tmp_path / f"{name}.parquet")
        cfg = DataConfig(path=str(tmp_path / f"{name}.parquet"), lookback=L, horizon=H, lags=[3])
        manifest, _ = ingest(cfg, out_dir=str(tmp_path / name))
        if net is None:  # one network for both: the same weights see both data sets
            args = model_args_for(WindowDataset(str(tmp_path / name), split="train"))
            net = build_model(ModelConfig(hidden_size=8, window_norm=mode), **args).eval()
        pyfunc = ForecastModel()
        pyfunc.net, pyfunc.manifest = net, manifest
        forecasts.append(pyfunc.forecast(frame).target.to_numpy())
    base, moved = forecasts
    assert net.window_norm.prior_steps == 1.0  # the default is what is tested
    np.testing.assert_allclose(moved, a * base + b, rtol=1e-4)
    assert not np.allclose(base, base[0])


@pytest.mark.usefixtures("ray_local")
def test_diff_with_log1p_forecasts_growth_rates(tmp_path) -> None:
    """log1p + window_norm=diff: the network reads log growth rates, so a history x a forecasts x a (the
    series scaler off; log1p(a*y) = log(a) + log1p(y) up to 1/y, small at these levels)."""
    raw = _raw().assign(target=lambda df: 1e4 * df.target)
    raw.to_parquet(tmp_path / "raw.parquet")
    cfg = DataConfig(
        path=str(tmp_path / "raw.parquet"), lookback=L, horizon=H, lags=[3], scaler="none", target_transform="log1p"
    )
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    ds = WindowDataset(str(tmp_path / "shards"), split="train")
    torch.manual_seed(0)
    pyfunc = ForecastModel()
    pyfunc.net = build_model(
        ModelConfig(hidden_size=8, window_norm="diff", window_prior_steps=0), **model_args_for(ds)
    ).eval()
    pyfunc.manifest = manifest
    base = pyfunc.forecast(raw).target.to_numpy()
    np.testing.assert_allclose(pyfunc.forecast(raw.assign(target=3.0 * raw.target)).target, 3.0 * base, rtol=1e-3)
    growth = np.diff(np.log(base.reshape(2, H)), axis=1)
    assert (base > 0).all() and not np.allclose(growth, 0.0, atol=1e-6)  # a real forecast, not a flat line
