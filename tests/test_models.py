"""Unit tests of lstm_dist.models: shapes, init, training on a toy task, precision."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lstm_dist.config import ModelConfig
from lstm_dist.models import Forecaster, build_model

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
    assert model.point(out).shape == (B, H, T)
    intervals = model.interval(out)
    if loss in ("quantile", "gaussian"):
        assert set(intervals) == {"q0.1", "q0.5", "q0.9"}
        assert all(v.shape == (B, H, T) for v in intervals.values())
        assert torch.all(intervals["q0.1"] <= intervals["q0.9"])
    else:
        assert intervals is None
    assert model.predict(x, future=future, series=series).shape == out.shape


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
