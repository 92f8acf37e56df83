"""Window-local normalisation (model.window_norm): forecasts move with the series' level and spread."""

from __future__ import annotations

import pytest
import torch

from lstm_dist.config import ModelConfig
from lstm_dist.data.features import level_of
from lstm_dist.models import build_model
from lstm_dist.models.window_norm import MIN_WINDOW_SCALE

B, L, H, T = 5, 16, 4, 2
# Features: 2 targets, a covariate, a lag of target 1, a calendar-like column.
LEVEL_OF = [0, 1, -1, 1, -1]
F = len(LEVEL_OF)


def _model(mode: str, loss: str = "mse", head: str = "direct", prior: float = 0.0, level_steps: int = 0):
    """Without the spread prior by default: the window's own stats, exactly level and scale equivariant."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        hidden_size=8, window_norm=mode, loss=loss, head=head, window_prior_steps=prior, window_level_steps=level_steps
    )
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


@pytest.mark.parametrize("mode", ["last", "mean", "revin", "diff", "mean_recent"])
@pytest.mark.parametrize(("loss", "head"), [("mse", "direct"), ("quantile", "recursive"), ("gaussian", "direct")])
def test_forecast_is_equivariant_to_level_and_scale(mode: str, loss: str, head: str) -> None:
    """`mean_recent`: window_norm mean with the level of the last 4 steps (model.window_level_steps)."""
    model = _model("mean", loss, head, level_steps=4) if mode == "mean_recent" else _model(mode, loss, head)
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


@pytest.mark.parametrize("mode", ["last", "diff"])
def test_a_flat_window_gives_finite_forecasts(mode: str) -> None:
    model = _model(mode)
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


@pytest.mark.parametrize("mode", ["last", "mean", "diff"])
def test_start_padding_is_left_out_of_the_window_stats(mode: str) -> None:
    """With a padding mask feature, padded steps neither move the stats nor reach the network."""
    level_of = [*LEVEL_OF, -1]  # the mask channel last
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=8, window_norm=mode, window_prior_steps=0)  # exact scale equivariance
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

    # The stats of the padded window are those of its real part alone.
    norm = model.window_norm
    for got, want in zip(norm.stats(x), norm.stats(x[:, pad:]), strict=True):
        torch.testing.assert_close(got, want)


def _constant_head(model, values: list[float]):
    """The direct head emits `values` (one per output column P) at every step and target, whatever the input."""
    last = model.head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(values).repeat(model.num_targets))  # [T * P], target-major
    return model


def _trend(slope: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[B, L, F]: target t a straight line start[t] + slope[t] * step (its lag too); other channels noise."""
    x = torch.randn(B, L, F, generator=torch.Generator().manual_seed(3))
    line = start + slope * torch.arange(L, dtype=torch.float32)[:, None]  # [L, T]
    for f, t in enumerate(LEVEL_OF):
        if t >= 0:
            x[..., f] = line[:, t]
    return x


def test_diff_mode_sums_the_increments_from_the_last_value() -> None:
    """Zero increments: a flat forecast at the last value; increment c: a line of slope c * scale (here the
    trend's own slope, as a straight line's differences all equal the slope: their RMS is its size)."""
    slope, start = torch.tensor([0.5, -2.0]), torch.tensor([3.0, 100.0])
    x = _trend(slope, start)
    last = start + slope * (L - 1)  # [T]
    steps = torch.arange(1, H + 1, dtype=torch.float32)[:, None]  # [H, 1]
    flat = _constant_head(_model("diff"), [0.0])(x)[..., 0]  # [B, H, T]
    torch.testing.assert_close(flat, last.expand(B, H, T))
    for c in (1.0, -0.5):
        line = _constant_head(_model("diff"), [c])(x)[..., 0]
        torch.testing.assert_close(line, (last + c * slope.abs() * steps).expand(B, H, T))


def test_diff_mode_inputs_are_the_target_differences_and_levels_for_the_rest() -> None:
    model = _model("diff")
    x = torch.randn(B, L, F, generator=torch.Generator().manual_seed(4)).cumsum(dim=1)
    loc, scale = model.window_norm.stats(x)
    z = model.window_norm.normalize(x, loc, scale)
    d = x[:, 1:, :T] - x[:, :-1, :T]
    torch.testing.assert_close(scale, d.square().mean(dim=1, keepdim=True).sqrt())
    torch.testing.assert_close(z[:, 1:, :T], d / scale)
    assert (z[:, 0, :T] == 0).all()
    torch.testing.assert_close(z[..., 3], (x[..., 3] - loc[..., 1]) / scale[..., 1])  # the lag of target 1: a level
    torch.testing.assert_close(z[..., [2, 4]], x[..., [2, 4]])  # covariates untouched


def test_diff_mode_gaussian_variances_add_up_and_quantiles_are_summed() -> None:
    x = _trend(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 5.0]))
    _, scale = _model("diff").window_norm.stats(x)  # [B, 1, T]
    steps = torch.arange(1, H + 1, dtype=torch.float32)[:, None]  # [H, 1]
    raw = 0.3
    gauss = _constant_head(_model("diff", "gaussian"), [0.2, raw])
    out = gauss(x)
    assert out.shape == (B, H, T, 2)
    step_std = torch.nn.functional.softplus(torch.tensor(raw)) + 1e-4  # losses.gaussian_scale
    band = gauss.interval(out)
    width = (band["q0.9"] - band["q0.5"]) / 1.2815515655446004  # the std of the summed forecast
    torch.testing.assert_close(width, (scale * step_std * steps.sqrt()).expand(B, H, T), rtol=1e-4, atol=1e-5)
    quant = _constant_head(_model("diff", "quantile"), [-1.0, 0.0, 2.0])
    out = quant(x)
    assert out.shape == (B, H, T, 3)
    last = x[:, -1:, :T]
    torch.testing.assert_close(quant.interval(out)["q0.9"], last + 2.0 * scale * steps)
    torch.testing.assert_close(quant.interval(out)["q0.1"], last - scale * steps)


# Not quantile: there each step feeds back its median increment, and the median of the summed quantile
# columns is their sum only while the columns do not cross (random weights make them cross).
@pytest.mark.parametrize("loss", ["mse", "gaussian"])
def test_diff_mode_recursive_head_feeds_back_increments(loss: str) -> None:
    """The recursive head's input is a difference at every step: the last observed one, then its own increments."""
    model = _model("diff", loss, "recursive")
    x = torch.randn(B, L, F, generator=torch.Generator().manual_seed(5)).cumsum(dim=1)
    fed = []
    model.head.cell.register_forward_pre_hook(lambda _mod, args: fed.append(args[0][:, :T].clone()))
    forecast = model.point(model(x))  # [B, H, T]
    loc, scale = model.window_norm.stats(x)
    levels = torch.cat([loc, forecast], dim=1)  # [B, 1 + H, T]
    want = (torch.cat([x[:, -2:-1, :T], levels], dim=1).diff(dim=1) / scale)[:, :H]  # [B, H, T]
    torch.testing.assert_close(torch.stack(fed, dim=1), want, rtol=1e-4, atol=1e-5)
    model.train()
    model.loss(model(x), torch.randn(B, H, T), x=x).backward()
    assert all(p.grad is not None for p in model.head.parameters())


def _trend_windows(n: int, *, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy straight lines of random level, slope and size: [n, L, 1] inputs, [n, H, 1] continuations."""
    level, slope = 20 * torch.randn(n, 1, generator=gen), torch.randn(n, 1, generator=gen)
    size = torch.exp(torch.randn(n, 1, generator=gen))
    t = torch.arange(L + H, dtype=torch.float32)
    line = size * (level + slope * t + 0.1 * torch.randn(n, L + H, generator=gen))
    return line[:, :L, None], line[:, L:, None]


@pytest.mark.parametrize("head", ["direct", "recursive"])
def test_diff_mode_learns_to_continue_trends(head: str) -> None:
    """A few Adam steps on lines of every level, slope and size beat the naive (last value) forecast by far."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_model(ModelConfig(hidden_size=16, window_norm="diff", loss="mae", head=head), **_ONE_TARGET)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        x, y = _trend_windows(64, gen=gen)
        loss = model.loss(model(x), y, x=x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _trend_windows(512, gen=gen)
    err = (model.point(model.predict(x)) - y).abs().mean()
    naive = (x[:, -1:] - y).abs().mean()
    assert err < 0.3 * naive, (err, naive)


_ONE_TARGET = {"num_features": 1, "num_targets": 1, "horizon": H}


@pytest.mark.parametrize("mode", ["last", "mean", "diff"])
def test_with_the_spread_prior_the_forecast_follows_a_shift_exactly(mode: str) -> None:
    """model.window_prior_steps (default 1) leaves level equivariance exact; scale goes through the series scaler."""
    model = _model(mode, prior=1.0)
    x = torch.randn(B, L, F, generator=torch.Generator().manual_seed(2)).cumsum(dim=1)
    ones, b = torch.ones(T), torch.tensor([10.0, -4.0])
    torch.testing.assert_close(model(_shifted(x, ones, b))[..., 0], model(x)[..., 0] + b, rtol=1e-4, atol=1e-4)
    a = torch.tensor([3.0, 0.5])
    assert not torch.allclose(model(_shifted(x, a, 0 * b))[..., 0], model(x)[..., 0] * a, atol=1e-3)


@pytest.mark.parametrize("mode", ["last", "mean", "diff"])
def test_a_window_of_few_real_steps_is_not_divided_by_the_floor(mode: str) -> None:
    """Two real steps, almost equal, after padding: without a prior the spread is the floor (inputs and
    outputs scaled by 1/100 and 100, errors huge in loss units); with one step of the series' spread (1)
    it is ~sqrt(1/3), while a full window's spread moves little."""
    cfg = dict(hidden_size=8, window_norm=mode)
    steps = 48
    x = torch.zeros(2, steps, 2)
    x[0, :, 0] = torch.linspace(-1.0, 1.0, steps) + 0.3 * torch.sin(torch.arange(steps, dtype=torch.float32))
    x[1, : steps - 2, 1] = 1.0  # padding rows
    x[1, -2:, 0] = torch.tensor([0.500, 0.501])
    scales = []
    for prior in (0.0, 1.0):
        net = build_model(
            ModelConfig(**cfg, window_prior_steps=prior), num_features=2, num_targets=1, horizon=H, pad_feature=1
        )
        scales.append(net.window_norm.stats(x)[1][:, 0, 0])  # [2]
    without, with_prior = scales
    assert without[1].item() == pytest.approx(MIN_WINDOW_SCALE, abs=2e-3)
    assert with_prior[1].item() > 0.5
    if mode != "diff":  # (differences are far smaller than the unit spread: the prior weighs more on them)
        assert with_prior[0].item() == pytest.approx(without[0].item(), rel=0.05)


def test_the_level_of_the_last_steps_carries_a_shift_inside_the_window() -> None:
    """A window at 10 that drops to 2 for its last 4 steps (a holiday lull): with model.window_level_steps=4 a
    head that emits 0 forecasts the lull's level 2, with the whole window's mean it forecasts that mean (8);
    the spread is the whole window's either way."""
    x = torch.randn(B, L, F, generator=torch.Generator().manual_seed(6))
    for f, t in enumerate(LEVEL_OF):
        if t >= 0:
            x[..., f] = 10.0
            x[:, -4:, f] = 2.0
    recent, whole = (_constant_head(_model("mean", level_steps=k), [0.0]) for k in (4, 0))
    torch.testing.assert_close(recent(x)[..., 0], torch.full((B, H, T), 2.0))
    torch.testing.assert_close(whole(x)[..., 0], torch.full((B, H, T), 8.0))
    torch.testing.assert_close(recent.window_norm.stats(x)[1], whole.window_norm.stats(x)[1])


def test_the_recent_level_leaves_start_padding_out() -> None:
    """Three real steps after padding, level_steps 6: the level is the mean of the three real ones."""
    cfg = ModelConfig(hidden_size=8, window_norm="mean", window_level_steps=6)
    net = build_model(cfg, num_features=2, num_targets=1, horizon=H, pad_feature=1)
    x = torch.zeros(1, L, 2)
    x[0, : L - 3, 1] = 1.0  # padding rows
    x[0, -3:, 0] = torch.tensor([1.0, 2.0, 6.0])
    assert net.window_norm.stats(x)[0].item() == pytest.approx(3.0)


@pytest.mark.parametrize("mode", ["last", "diff", "none"])
def test_the_recent_level_is_refused_where_it_does_not_apply(mode: str) -> None:
    with pytest.raises(ValueError, match="model.window_level_steps=24 .* set model.window_norm=mean"):
        ModelConfig(window_norm=mode, window_level_steps=24)


def test_a_model_saved_before_the_spread_prior_loads_without_it(tmp_path) -> None:
    """Its saved config has no window_prior_steps: it must forecast as it did, not take the new default."""
    import json

    from lstm_dist.models.saved import load_model, read_model_args, save_model

    model = _model("mean", prior=0.0)
    args = {"model": model.cfg.model_dump(), **model.build_args, "level_of": LEVEL_OF}
    del args["model"]["window_prior_steps"]
    path = save_model(tmp_path, model=model, model_args=args)
    assert "window_prior_steps" not in json.dumps(read_model_args(path))
    loaded = load_model(path)
    assert loaded.window_norm.prior_steps == 0.0
    x = torch.zeros(1, L, F)
    x[0, -1, :2] = 1.0  # a spike on an otherwise flat window: the prior would change its spread
    torch.testing.assert_close(loaded(x), model(x))
