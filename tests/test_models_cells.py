"""The explicit-gate LSTM cell and the gate heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn

from lstm_dist.config import ModelConfig
from lstm_dist.models import Forecaster, build_model
from lstm_dist.models.cells import GATES, ExplicitLSTM, GateRecorder
from lstm_dist.models.gates import gate_activations
from lstm_dist.plots import plot_gate_heatmap


def _random_lstm(**kw: object) -> nn.LSTM:
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, batch_first=True, **kw)
    with torch.no_grad():
        for p in lstm.parameters():  # random biases too, so a bias mix-up cannot hide
            p.uniform_(-0.5, 0.5)
    return lstm


def test_explicit_cell_matches_nn_lstm() -> None:
    lstm = _random_lstm()
    x = torch.randn(3, 11, 5)  # [B, L, F]
    state = (torch.randn(1, 3, 7), torch.randn(1, 3, 7))
    ref, (h_ref, c_ref) = lstm(x, state)
    cell = ExplicitLSTM.from_lstm(lstm)
    out, (h, c) = cell(x, (state[0][0], state[1][0]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(c, c_ref[0], atol=1e-5, rtol=0)


def test_explicit_cell_matches_every_layer_and_direction() -> None:
    lstm = _random_lstm(num_layers=2, bidirectional=True)
    x = torch.randn(3, 9, 5)
    ref, _ = lstm(x)  # [B, L, 2 * 7]
    layer_in = x
    for layer in range(2):
        fwd, _ = ExplicitLSTM.from_lstm(lstm, layer=layer)(layer_in)
        bwd, _ = ExplicitLSTM.from_lstm(lstm, layer=layer, reverse=True)(layer_in.flip(1))
        layer_in = torch.cat([fwd, bwd.flip(1)], dim=-1)
    torch.testing.assert_close(layer_in, ref, atol=1e-5, rtol=0)


def test_peepholes_start_neutral_then_change_the_output_and_learn() -> None:
    lstm = _random_lstm()
    x = torch.randn(2, 6, 5)
    plain = ExplicitLSTM.from_lstm(lstm)
    peep = ExplicitLSTM.from_lstm(lstm, peephole=True)
    torch.testing.assert_close(peep(x)[0], plain(x)[0])  # zero peephole weights at the start
    peep(x)[0].sum().backward()
    assert all(getattr(peep, n).grad.abs().sum() > 0 for n in ("weight_ci", "weight_cf", "weight_co"))
    with torch.no_grad():
        peep.weight_cf.fill_(2.0)
    assert not torch.allclose(peep(x)[0], plain(x)[0])


def test_coupled_variant_ties_input_to_forget_gate() -> None:
    cell = ExplicitLSTM(5, 7, variant="coupled")
    recorder = GateRecorder()
    cell.hook = recorder
    cell(torch.randn(2, 4, 5))
    acts = recorder.stacked()
    torch.testing.assert_close(acts["input"], 1.0 - acts["forget"])


def test_fresh_explicit_cell_uses_the_project_init() -> None:
    cell = ExplicitLSTM(5, 8)
    assert torch.all((cell.bias_ih + cell.bias_hh)[8:16] == 1.0)
    for block in cell.weight_hh.detach().chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)


def test_hook_records_every_step_and_gate() -> None:
    cell = ExplicitLSTM.from_lstm(_random_lstm())
    recorder = GateRecorder()
    cell.hook = recorder
    out, _ = cell(torch.randn(2, 6, 5))
    acts = recorder.stacked()
    assert set(GATES) <= set(acts) and all(acts[g].shape == (2, 6, 7) for g in GATES)
    torch.testing.assert_close(acts["hidden"], out)
    torch.testing.assert_close(acts["hidden"], acts["output"] * torch.tanh(acts["cell"]))


def _trained_like_model(**kw: object) -> Forecaster:
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden_size=12, **kw), num_features=2, num_targets=1, horizon=3)


@pytest.mark.parametrize("layers", [dict(num_layers=2), dict(num_layers=2, residual=True, layer_norm=True)])
def test_gate_activations_come_from_the_models_first_layer(layers: dict) -> None:
    model = _trained_like_model(**layers)
    t = torch.arange(40, dtype=torch.float32)
    x = torch.stack([torch.sin(0.3 * t), torch.cos(0.1 * t)], dim=-1)  # [L, F]
    acts = gate_activations(model, x)
    assert set(acts) == set(GATES) and all(a.shape == (40, 12) and a.dtype == np.float32 for a in acts.values())
    for name in ("input", "forget", "output"):
        assert acts[name].min() >= 0.0 and acts[name].max() <= 1.0
    assert np.abs(acts["candidate"]).max() <= 1.0
    # Recompute the first layer's hidden state from the gates and compare with the model's own.
    c = np.zeros(12, dtype=np.float32)
    hidden = []
    for step in range(40):
        c = acts["forget"][step] * c + acts["input"][step] * acts["candidate"][step]
        hidden.append(acts["output"][step] * np.tanh(c))
    lstm, _ = model.encoder.first_layer()
    with torch.no_grad():
        _, (h_n, _) = lstm(x[None])
    np.testing.assert_allclose(hidden[-1], h_n[0, 0].numpy(), atol=1e-5)  # h_n[0]: layer 0, forward


def test_a_segment_models_gates_have_a_row_per_segment() -> None:
    model = _trained_like_model(segment=5)
    x = torch.randn(40, 2)
    acts = gate_activations(model, x)
    assert all(a.shape == (8, 12) for a in acts.values())  # 40 steps read 5 at a time
    lstm, _ = model.encoder.first_layer()
    c = np.zeros(12, dtype=np.float32)
    for step in range(8):
        c = acts["forget"][step] * c + acts["input"][step] * acts["candidate"][step]
    with torch.no_grad():
        _, (_, c_n) = lstm(x.reshape(1, 8, 10))  # the same 8 segments, read by the model's own layer
    np.testing.assert_allclose(c, c_n[0, 0].numpy(), atol=1e-5)


def test_an_ensembles_gates_are_its_first_members() -> None:
    model = _trained_like_model(members=2)
    x = torch.randn(30, 2)
    acts, first = gate_activations(model, x), gate_activations(model.members[0], x)
    assert not np.array_equal(first["forget"], gate_activations(model.members[1], x)["forget"])
    assert all(np.array_equal(acts[g], first[g]) for g in GATES)


def test_gate_activations_refuse_gru_and_batches() -> None:
    with pytest.raises(ValueError, match="cell=lstm"):
        gate_activations(_trained_like_model(cell="gru"), torch.randn(10, 2))
    with pytest.raises(ValueError, match="one window"):
        gate_activations(_trained_like_model(), torch.randn(4, 10, 2))


def test_gate_heatmap_png_is_written_and_not_blank(tmp_path: Path) -> None:
    model = _trained_like_model()
    t = torch.arange(48, dtype=torch.float32)
    x = torch.stack([torch.sin(0.3 * t), torch.cos(0.1 * t)], dim=-1)
    path = plot_gate_heatmap(gate_activations(model, x), tmp_path / "plots" / "gates.png")
    assert path.is_file() and path.stat().st_size > 10_000
    image = imread(path)  # [rows, cols, RGBA] in [0, 1]
    assert image.shape[0] > 300 and image.shape[1] > 300
    # A blank or single-colour figure has almost no spread; four heat maps have plenty.
    assert image[..., :3].std() > 0.1
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 200
