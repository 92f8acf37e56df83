"""Window-local normalisation (model.window_norm): forecasts move with the series' level and spread."""

from __future__ import annotations

import pytest
import torch

from lstm_dist.config import ModelConfig
from lstm_dist.data.features import level_of
from lstm_dist.models import build_model

B, L, H, T = 5, 16, 4, 2
# Features: 2 targets, a covariate, a lag of target 1, a calendar-like column.
LEVEL_OF = [0, 1, -1, 1, -1]
F = len(LEVEL_OF)


def _model(mode: str, loss: str = "mse", head: str = "direct"):
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=8, window_norm=mode, loss=loss, head=head)
    model = build_model(cfg, num_features=F, num_targets=T, horizon=H, level_of=LEVEL_OF)
    if mode == "revin":  # away from the identity, so the affine is exercised
        with torch.no_grad():
            model.window_norm.gain.copy_(torch.tensor([1.5, 0.7]))
            model.window_norm.bias.copy_(torch.tensor([0.3, -0.2]))
    return model.eval()


def _shifted(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with every level channel of target j mapped to a[j] * v + b[j]; other channels unchanged."""
    x = x.clone()
    for f, t in enumerate(LEVEL_OF):
        if t >= 0:
            x[..., f] = a[t] * x[..., f] + b[t]
    return x


@pytest.mark.parametrize("mode", ["last", "mean", "revin"])
@pytest.mark.parametrize(("loss", "head"), [("mse", "direct"), ("quantile", "recursive"), ("gaussian", "direct")])
def test_forecast_is_equivariant_to_level_and_scale(mode: str, loss: str, head: str) -> None:
    model = _model(mode, loss, head)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, F, generator=g).cumsum(dim=1)  # random walks: level and spread differ per window
    y = torch.randn(B, H, T, generator=g)
    a, b = torch.tensor([3.0, 0.5]), torch.tensor([10.0, -4.0])
    out, out2 = model(x), model(_shifted(x, a, b))
    torch.testing.assert_close(model.point(out2), model.point(out) * a + b, rtol=1e-4, atol=1e-4)
    if loss != "mse":
        for key, values in model.interval(out).items():
            torch.testing.assert_close(model.interval(out2)[key], values * a + b, rtol=1e-4, atol=1e-4)
    # The loss in window units is the same for the shifted/scaled window and its target.
    y2 = y * a + b
    torch.testing.assert_close(model.loss(out2, y2, x=_shifted(x, a, b)), model.loss(out, y, x=x), rtol=1e-4, atol=1e-5)


def test_without_window_norm_the_forecast_does_not_follow_the_level() -> None:
    model = _model("none")
    x = torch.randn(B, L, F, generator=torch.Generator().manual_seed(1)).cumsum(dim=1)
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([10.0, 10.0])
    assert not torch.allclose(model.point(model(_shifted(x, a, b))), model.point(model(x)) + b, atol=1e-2)


def test_a_flat_window_gives_finite_forecasts() -> None:
    model = _model("last")
    x = torch.full((B, L, F), 7.0)
    out = model(x)
    assert torch.isfinite(out).all() and torch.isfinite(model.loss(out, torch.full((B, H, T), 7.0), x=x))


def test_revin_affine_is_learnt() -> None:
    model = _model("revin").train()
    x = torch.randn(B, L, F).cumsum(dim=1)
    model.loss(model(x), torch.randn(B, H, T), x=x).backward()
    assert model.window_norm.gain.grad is not None and model.window_norm.gain.grad.abs().sum() > 0


def test_level_of_maps_lags_and_moving_averages_to_their_target() -> None:
    feats = ["sales", "price", "temp", "sales_lag7", "price_ma3", "sales_rsi14", "hour_sin"]
    got = level_of(feats, targets=["sales", "price"], derived=["sales_lag7", "price_ma3", "sales_rsi14"])
    assert got == [0, 1, -1, 0, 1, -1, -1]


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_start_padding_is_left_out_of_the_window_stats(mode: str) -> None:
    """With a padding mask feature, padded steps neither move the stats nor reach the network."""
    level_of = [*LEVEL_OF, -1]  # the mask channel last
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=8, window_norm=mode)
    model = build_model(cfg, num_features=F + 1, num_targets=T, horizon=H, level_of=level_of, pad_feature=F).eval()
    x = torch.randn(B, L, F + 1, generator=torch.Generator().manual_seed(2)).cumsum(dim=1)
    pad = 5
    x[:, :pad, :] = 0.0  # padding as ingest stores it: 0 scaled ...
    x[..., F] = 0.0
    x[:, :pad, F] = 1.0  # ... and the mask 1
    a, b = torch.tensor([3.0, 0.5]), torch.tensor([10.0, -4.0])
    moved = x.clone()
    moved[:, pad:, :F] = _shifted(x[:, pad:, :F], a, b)  # only real steps move, padding stays 0
    torch.testing.assert_close(model.point(model(moved)), model.point(model(x)) * a + b, rtol=1e-4, atol=1e-4)
    poisoned = x.clone()
    poisoned[:, :pad, :T] = 1e3
    torch.testing.assert_close(model(poisoned), model(x))
