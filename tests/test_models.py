"""Unit tests of lstm_dist.models: shapes, init, TBPTT, training on a toy task, precision."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lstm_dist.config import ModelConfig
from lstm_dist.models import Forecaster, build_model
from lstm_dist.train.precision import cpu_bf16_works

B, L, F, T, H, FF, S = 4, 12, 5, 2, 3, 2, 6

CELLS = ["lstm", "gru", "rnn"]
READOUTS = ["last", "attention"]
HEADS = ["direct", "recursive"]
LOSSES = ["mse", "mae", "huber", "quantile", "gaussian"]
P = {"mse": 1, "mae": 1, "huber": 1, "quantile": 3, "gaussian": 2}


def _inputs(*, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, F, generator=g)  # [B, L, F]
    future = torch.randn(B, H, FF, generator=g)  # [B, H, Ff]
    series = torch.randint(0, S, (B,), generator=g)  # [B]
    y = torch.randn(B, H, T, generator=g)  # [B, H, T]
    return x, future, series, y


def _model(**kw: object) -> Forecaster:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=8, **kw)
    return build_model(cfg, num_features=F, num_targets=T, horizon=H, num_future=FF, num_series=S)


@pytest.mark.parametrize(("cell", "readout", "head", "loss"), list(itertools.product(CELLS, READOUTS, HEADS, LOSSES)))
def test_shapes_every_combination(cell: str, readout: str, head: str, loss: str) -> None:
    model = _model(cell=cell, readout=readout, head=head, loss=loss, series_embedding_dim=3)
    x, future, series, y = _inputs()
    out = model(x, future=future, series=series)
    assert out.shape == (B, H, T, P[loss])
    value = model.loss(out, y)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    # DDP without find_unused_parameters needs a gradient for every parameter.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert model.point(out).shape == (B, H, T)
    intervals = model.interval(out)
    if loss in ("quantile", "gaussian"):
        assert set(intervals) == {"q0.1", "q0.5", "q0.9"}
        assert all(v.shape == (B, H, T) for v in intervals.values())
        assert torch.all(intervals["q0.1"] <= intervals["q0.9"])
    else:
        assert intervals is None
    assert model.predict(x, future=future, series=series).shape == out.shape


def test_quantile_point_and_interval_follow_the_quantile_not_the_config_order() -> None:
    model = _model(loss="quantile", quantiles=[0.5, 0.05, 0.9])
    out = torch.tensor([2.0, 1.0, 3.0]).expand(B, H, T, 3)  # one value per configured quantile
    torch.testing.assert_close(model.point(out), torch.full((B, H, T), 2.0))
    iv = model.interval(out)
    assert list(iv) == ["q0.05", "q0.5", "q0.9"]
    assert iv["q0.05"][0, 0, 0] == 1.0 and iv["q0.9"][0, 0, 0] == 3.0
    # The pinball loss is zero when every quantile output sits on the target.
    assert model.loss(out, torch.full((B, H, T), 2.0)) > 0
    assert model.loss(torch.full((B, H, T, 3), 2.0), torch.full((B, H, T), 2.0)) == 0


@pytest.mark.parametrize(
    "layers",
    [
        dict(num_layers=2, dropout=0.1),
        dict(num_layers=3, residual=True),
        dict(num_layers=2, layer_norm=True, bidirectional=True),
        dict(num_layers=2, residual=True, layer_norm=True, readout="attention", head="recursive"),
        dict(num_layers=2, bidirectional=True, readout="attention"),
        dict(num_layers=2, tbptt_chunk=5, residual=True),
    ],
)
def test_shapes_layer_options(layers: dict) -> None:
    model = _model(**layers)
    x, future, series, y = _inputs()
    out = model(x, future=future, series=series)
    assert out.shape == (B, H, T, 1)
    model.loss(out, y).backward()


def test_fast_path_is_one_fused_module_and_layered_path_is_not() -> None:
    fused = _model(cell="lstm", num_layers=3)
    assert len(fused.encoder.rnns) == 1 and fused.encoder.rnns[0].num_layers == 3
    layered = _model(cell="lstm", num_layers=3, residual=True)
    assert len(layered.encoder.rnns) == 3 and all(r.num_layers == 1 for r in layered.encoder.rnns)


def test_without_future_or_series() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=8, head="recursive"), num_features=F, num_targets=T, horizon=H)
    x, _, _, _ = _inputs()
    assert model(x).shape == (B, H, T, 1)
    assert model.predict(x).shape == (B, H, T, 1)


def test_future_covariates_change_the_forecast_of_their_step_only() -> None:
    model = _model(head="direct").eval()
    x, future, series, _ = _inputs()
    base = model(x, future=future, series=series)
    bumped = future.clone()
    bumped[:, 1] += 3.0
    moved = model(x, future=bumped, series=series)
    diff = (moved - base).abs().amax(dim=(0, 2, 3))  # [H]
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0


def test_input_errors_name_the_problem() -> None:
    model = _model(series_embedding_dim=2)
    x, future, series, _ = _inputs()
    with pytest.raises(ValueError, match="num_features"):
        model(x[..., :2], future=future, series=series)
    with pytest.raises(ValueError, match="num_future"):
        model(x, future=None, series=series)
    with pytest.raises(ValueError, match="series"):
        model(x, future=future)
    with pytest.raises(ValueError, match="tbptt_chunk"):
        build_model(ModelConfig(tbptt_chunk=4, bidirectional=True), num_features=F, num_targets=T, horizon=H)
    with pytest.raises(ValueError, match="num_series"):
        build_model(ModelConfig(series_embedding_dim=2), num_features=F, num_targets=T, horizon=H)
    with pytest.warns(UserWarning, match="residual"):
        build_model(ModelConfig(residual=True), num_features=F, num_targets=T, horizon=H)


def test_predict_is_eval_mode_and_restores_training_mode() -> None:
    model = _model(dropout=0.5, num_layers=2)
    x, future, series, _ = _inputs()
    model.train()
    a = model.predict(x, future=future, series=series)
    b = model.predict(x, future=future, series=series)
    torch.testing.assert_close(a, b)  # dropout off
    assert model.training and not a.requires_grad


# ---- initialisation -------------------------------------------------------------------


def _recurrent_modules(model: nn.Module) -> list[nn.Module]:
    kinds = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
    return [m for m in model.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [dict(num_layers=2, bidirectional=True), dict(num_layers=2, residual=True)])
def test_init_orthogonal_recurrent_xavier_input_forget_bias(cell: str, layers: dict) -> None:
    model = _model(cell=cell, head="recursive", **layers)
    num_gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    modules = _recurrent_modules(model)
    assert len(modules) >= 2  # encoder + the recursive head's cell
    for m in modules:
        params = dict(m.named_parameters())
        hidden = m.hidden_size
        for name, p in params.items():
            if name.startswith("weight_hh"):
                for block in p.detach().chunk(num_gates):  # [Hd, Hd] per gate
                    torch.testing.assert_close(block @ block.T, torch.eye(hidden), atol=1e-5, rtol=0)
            elif name.startswith("weight_ih"):
                fan_out, fan_in = hidden, p.shape[1]
                bound = (6.0 / (fan_in + fan_out)) ** 0.5  # Xavier uniform, per gate block
                assert p.abs().max() <= bound + 1e-6 and p.abs().max() > 0.5 * bound
            elif name.startswith("bias_ih"):
                total = p + params[name.replace("bias_ih", "bias_hh")]  # nn.LSTM adds the two
                if cell == "lstm":
                    gates = total.detach().chunk(4)  # i, f, g, o
                    assert torch.all(gates[1] == 1.0)
                    for i in (0, 2, 3):
                        assert torch.all(gates[i] == 0.0)
                else:
                    assert torch.all(total == 0.0)


# ---- truncated BPTT ---------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [dict(num_layers=2), dict(num_layers=2, residual=True, layer_norm=True)])
@pytest.mark.parametrize("readout", READOUTS)
def test_tbptt_forward_equals_full_bptt(cell: str, layers: dict, readout: str) -> None:
    full = _model(cell=cell, readout=readout, **layers).eval()
    chunked = _model(cell=cell, readout=readout, tbptt_chunk=5, **layers).eval()  # 12 steps: chunks 5, 5, 2
    chunked.load_state_dict(full.state_dict())
    x, future, series, _ = _inputs()
    torch.testing.assert_close(chunked(x, future=future, series=series), full(x, future=future, series=series))


def test_tbptt_truncates_the_gradient_to_the_last_chunk() -> None:
    # Without window normalisation: its window stats reach every input step, around the recurrence.
    full = _model(tbptt_chunk=0, window_norm="none")
    chunked = _model(tbptt_chunk=5, window_norm="none")
    chunked.load_state_dict(full.state_dict())
    x, future, series, _ = _inputs()
    grads = []
    for model in (full, chunked):
        xg = x.clone().requires_grad_(True)
        model(xg, future=future, series=series).sum().backward()
        grads.append(xg.grad.abs().sum(dim=(0, 2)))  # [L]
    g_full, g_chunked = grads
    assert torch.all(g_full > 0)
    # Readout "last" sees the state only through the last chunk (steps 10, 11).
    assert torch.all(g_chunked[:10] == 0) and torch.all(g_chunked[10:] > 0)


# ---- learning on a toy task -------------------------------------------------------------


def _sine_windows(n: int, *, gen: torch.Generator, lookback: int = 24, horizon: int = 4) -> tuple:
    """Noisy sines of random frequency and phase: continue the wave for `horizon` steps."""
    freq = 0.2 + 0.4 * torch.rand(n, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    t = torch.arange(lookback + horizon, dtype=torch.float32)
    wave = torch.sin(freq * t + phase) + 0.05 * torch.randn(n, lookback + horizon, generator=gen)
    return wave[:, :lookback, None], wave[:, lookback:, None]  # [n, L, 1], [n, H, 1]


def _train_on_sines(cfg: ModelConfig, *, steps: int = 50) -> tuple[float, float, Forecaster]:
    """Held-out MSE of the point forecast before and after `steps` Adam steps."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = build_model(cfg, num_features=1, num_targets=1, horizon=4)
    x_val, y_val = _sine_windows(256, gen=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def val_mse() -> float:
        return (model.point(model.predict(x_val)) - y_val).square().mean().item()

    before = val_mse()
    for _ in range(steps):
        x, y = _sine_windows(64, gen=gen)
        loss = model.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, val_mse(), model


@pytest.mark.parametrize(("cell", "readout", "head"), list(itertools.product(CELLS, READOUTS, HEADS)))
def test_every_combination_learns_sine_continuation(cell: str, readout: str, head: str) -> None:
    before, after, _ = _train_on_sines(ModelConfig(cell=cell, readout=readout, head=head, hidden_size=16))
    # Predicting ~0 gives MSE ~0.5; 50 steps reach ~0.01-0.09 with every combination.
    assert after < 0.3 * before, (before, after)


@pytest.mark.parametrize("loss", ["mae", "huber", "quantile", "gaussian"])
def test_every_loss_learns_and_gives_sensible_intervals(loss: str) -> None:
    cfg = ModelConfig(loss=loss, hidden_size=16, num_layers=2, residual=True, layer_norm=True)
    before, after, model = _train_on_sines(cfg, steps=80)
    assert after < 0.3 * before, (before, after)
    if loss in ("quantile", "gaussian"):
        x, y = _sine_windows(512, gen=torch.Generator().manual_seed(7))
        iv = model.interval(model.predict(x))
        inside = ((y >= iv["q0.1"]) & (y <= iv["q0.9"])).float().mean().item()
        assert 0.6 < inside < 0.95, inside  # nominal 0.8; seen here: 0.74 (quantile), 0.83 (gaussian)


# ---- precision --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("head", HEADS)
def test_bf16_autocast_on_cpu_is_finite_and_close(cell: str, head: str) -> None:
    if not cpu_bf16_works(cell):  # refused by name there (tests/test_train_steps.py)
        pytest.skip(f"this CPU has no bf16 {cell.upper()} kernel (oneDNN's needs AVX-512 BF16 or AMX)")
    # window_norm off: it would map the outputs back by the window spread (x10 here), scaling bf16's error with it.
    model = _model(
        cell=cell, head=head, readout="attention", loss="gaussian", num_layers=2, layer_norm=True, window_norm="none"
    )
    x, future, series, y = _inputs()
    x = 10.0 * x  # large inputs make large attention scores: the case where low precision breaks
    ref = model(x, future=future, series=series)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, future=future, series=series)
        loss = model.loss(out, y)
    assert torch.isfinite(out).all() and torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", CELLS)
def test_fp16_autocast_on_cuda(cell: str) -> None:
    model = _model(cell=cell, readout="attention", head="recursive", loss="quantile", num_layers=2).cuda()
    x, future, series, y = (t.cuda() for t in _inputs())
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(10.0 * x, future=future, series=series)
        loss = model.loss(out, y)
    assert out.dtype == torch.float16 and torch.isfinite(out).all() and loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("norm", ["none", "mean", "revin"])
@pytest.mark.parametrize("loss", ["mae", "quantile", "gaussian"])
def test_skip_season_starts_from_the_seasonal_naive(norm: str, loss: str) -> None:
    cfg = ModelConfig(hidden_size=8, skip_season=4, window_norm=norm, loss=loss, dropout=0.0, quantiles=[0.1, 0.5, 0.9])
    net = build_model(cfg, num_features=3, num_targets=2, horizon=6)
    x = torch.randn(5, 10, 3) * 3 + 7
    assert not torch.allclose(net.point(net.predict(x)), x[:, [6, 7, 8, 9, 6, 7], :2], atol=1e-3)
    nn.init.zeros_(net.head.mlp[-1].weight)  # the network adds nothing: what is left is the skip
    nn.init.zeros_(net.head.mlp[-1].bias)
    point = net.point(net.predict(x))  # [B, H, T]
    torch.testing.assert_close(point, x[:, [6, 7, 8, 9, 6, 7], :2], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("effect", ["joint", "additive"])
def test_additive_future_effect_does_not_depend_on_the_window(effect: str) -> None:
    """With model.future_effect=additive, changing a step's known-future inputs (a holiday flag) moves its forecast
    by the same amount whatever the window held; with joint, the two interact."""
    net = _model(future_effect=effect, window_norm="none", dropout=0.0)
    x, future, series, _ = _inputs()
    other_x, other_future, _, _ = _inputs(seed=1)
    with torch.no_grad():  # a different random head, so the future MLP's output is not ~0
        for p in net.head.parameters():
            p.normal_(0.0, 0.5)
    effect_here = net.predict(x, future=other_future, series=series) - net.predict(x, future=future, series=series)
    effect_there = net.predict(other_x, future=other_future, series=series) - net.predict(
        other_x, future=future, series=series
    )
    assert effect_here.abs().mean() > 1e-2  # the future inputs do move the forecast
    same = torch.allclose(effect_here, effect_there, atol=1e-5)
    assert same == (effect == "additive"), (effect_here - effect_there).abs().max()


def test_an_additive_model_saves_and_loads_with_the_same_forecasts(tmp_path) -> None:
    from lstm_dist.models.saved import load_model, save_model

    net = _model(future_effect="additive", dropout=0.0)
    x, future, series, _ = _inputs()
    path = save_model(tmp_path, model=net, model_args={"model": net.cfg.model_dump(), **net.build_args})
    loaded = load_model(path)
    assert loaded.head.future_mlp is not None
    torch.testing.assert_close(
        loaded.predict(x, future=future, series=series), net.predict(x, future=future, series=series)
    )


def test_an_ensemble_forecasts_its_members_mean_and_trains_each_on_its_own_loss() -> None:
    net = _model(members=3, dropout=0.0, loss="mae")
    x, future, series, y = _inputs()
    members = list(net.members)
    assert len(members) == 3 and all(isinstance(m, Forecaster) for m in members)
    first = [p.detach().clone() for p in members[0].parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, members[1].parameters(), strict=True))  # own init
    outs = [m.predict(x, future=future, series=series) for m in members]
    torch.testing.assert_close(net.predict(x, future=future, series=series), torch.stack(outs).mean(dim=0))
    net.train()
    net.loss(net(x, future=future, series=series), y, x=x).backward()
    together = [p.grad.clone() for p in members[0].parameters()]
    net.zero_grad()
    members[0].loss(members[0](x, future=future, series=series), y, x=x).backward()
    for g, own in zip(together, members[0].parameters(), strict=True):  # the others' outputs do not reach it
        torch.testing.assert_close(g * 3, own.grad)


def test_an_ensemble_saves_and_loads_with_the_same_forecasts(tmp_path) -> None:
    from lstm_dist.models.saved import load_model, save_model

    net = _model(members=2)
    assert isinstance(_model(members=1), Forecaster)  # one member: the plain network, as before
    x, future, series, _ = _inputs()
    path = save_model(tmp_path, model=net, model_args={"model": net.cfg.model_dump(), **net.build_args})
    loaded = load_model(path)
    assert len(loaded.members) == 2
    torch.testing.assert_close(
        loaded.predict(x, future=future, series=series), net.predict(x, future=future, series=series)
    )


def test_a_model_saved_before_a_new_model_key_still_has_the_same_build() -> None:
    """Warm start compares the champion's saved build with the config's: a key added since (members,
    future_effect) is absent from the older file and must read as its default, not as a different network."""
    from lstm_dist.models.saved import same_build

    net = _model()
    wanted = {"model": net.cfg.model_dump(), **net.build_args}
    older = {"model": {k: v for k, v in wanted["model"].items() if k not in ("members", "future_effect")}}
    assert same_build({**wanted, **older}, wanted)
    assert not same_build({**wanted, **older}, {**wanted, "model": {**wanted["model"], "members": 2}})
    assert not same_build({**wanted, "horizon": H + 1}, wanted)


# ---- segment-wise recurrence (model.segment) ---------------------------------------------


def test_segments_put_k_steps_side_by_side() -> None:
    net = _model(segment=4)
    x = torch.arange(B * L * F, dtype=torch.float32).reshape(B, L, F)
    seg = net.encoder.segmented(x)  # [B, L / 4, 4F]
    assert seg.shape == (B, L // 4, 4 * F)
    for j in range(L // 4):  # segment j holds steps 4j .. 4j + 3, oldest first, each step's F features together
        torch.testing.assert_close(seg[:, j], torch.cat([x[:, 4 * j + i] for i in range(4)], dim=-1))
    assert net.encoder.rnns[0].input_size == 4 * F
    assert net.encoder(x).shape == (B, L // 4, net.encoder.out_size)  # 3 recurrent steps, not 12
    with pytest.raises(ValueError, match="model.segment=5 must divide the window's length, got 12"):
        _model(segment=5).encoder(x)


@pytest.mark.parametrize(("cell", "readout", "head"), list(itertools.product(CELLS, READOUTS, HEADS)))
def test_segments_every_combination_forecasts_and_reads_the_whole_window(cell: str, readout: str, head: str) -> None:
    net = _model(cell=cell, readout=readout, head=head, segment=3, window_norm="none", dropout=0.0)
    x, future, series, _ = _inputs()
    xg = x.clone().requires_grad_(True)
    out = net(xg, future=future, series=series)
    assert out.shape == (B, H, T, 1)
    out.sum().backward()
    assert torch.all(xg.grad.abs().sum(dim=(0, 2)) > 0)  # every step of the window reaches the forecast


def test_tbptt_chunks_count_segments() -> None:
    net = _model(segment=4, tbptt_chunk=2, window_norm="none")  # 12 steps: 3 segments, chunks of 2 segments, 1
    x, future, series, _ = _inputs()
    xg = x.clone().requires_grad_(True)
    net(xg, future=future, series=series).sum().backward()
    grad = xg.grad.abs().sum(dim=(0, 2))  # [L]
    # The last chunk is the third segment alone (steps 8-11); the state from steps 0-7 is detached.
    assert torch.all(grad[:8] == 0) and torch.all(grad[8:] > 0)


@pytest.mark.parametrize("cell", CELLS)
def test_segments_learn_sine_continuation(cell: str) -> None:
    before, after, _ = _train_on_sines(ModelConfig(cell=cell, hidden_size=16, segment=4))  # 24 steps: 6 segments
    assert after < 0.3 * before, (before, after)


def test_a_segment_model_saves_and_loads_with_the_same_forecasts(tmp_path) -> None:
    from lstm_dist.models.saved import load_model, save_model

    net = _model(segment=4)
    x, future, series, _ = _inputs()
    path = save_model(tmp_path, model=net, model_args={"model": net.cfg.model_dump(), **net.build_args})
    loaded = load_model(path)
    assert loaded.encoder.segment == 4
    torch.testing.assert_close(
        loaded.predict(x, future=future, series=series), net.predict(x, future=future, series=series)
    )
