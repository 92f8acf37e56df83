"""Gate activations of a trained forecaster over one window (their heat map is drawn by lstm_dist.plots)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lstm_dist.models.cells import GATES, ExplicitLSTM, GateRecorder
from lstm_dist.models.forecaster import Ensemble, Forecaster


@torch.no_grad()
def gate_activations(model: Forecaster, x: Tensor) -> dict[str, np.ndarray]:
    """Gate activations of the first LSTM layer (forward direction) over one window.

    `x` is one scaled window, [L, F] or [1, L, F]. The layer's weights are copied into an
    `ExplicitLSTM`, which runs the window in fp32 and records every gate; returns
    {"input", "forget", "candidate", "output"} -> [L, hidden] float32 arrays (L / k rows with model.segment=k).
    """
    net = model.module if hasattr(model, "module") else model  # a DDP-wrapped model works too
    if isinstance(net, Ensemble):
        net = net.members[0]  # an ensemble's members share their architecture: the first one's gates
    if not isinstance(net, Forecaster) or net.cfg.cell != "lstm":
        raise ValueError("gate_activations needs a Forecaster built with model.cell=lstm (GRU/RNN have other gates)")
    if x.dim() == 2:
        x = x.unsqueeze(0)  # [1, L, F]
    if x.dim() != 3 or x.shape[0] != 1:
        raise ValueError(f"gate_activations takes one window, [L, F] or [1, L, F]; got {tuple(x.shape)}")
    lstm, _ = net.encoder.first_layer()
    assert isinstance(lstm, nn.LSTM)
    cell = ExplicitLSTM.from_lstm(lstm, layer=0).float()
    recorder = GateRecorder()
    cell.hook = recorder
    cell(net.encoder.segmented(x).to(device=cell.weight_ih.device, dtype=torch.float32))
    acts = recorder.stacked()
    return {name: acts[name][0].cpu().numpy() for name in GATES}  # each [L / segment, hidden]
