"""Gate activations of a trained forecaster over one window, and their heat map (a PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from lstm_dist.models.cells import GATES, ExplicitLSTM, GateRecorder
from lstm_dist.models.forecaster import Forecaster


@torch.no_grad()
def gate_activations(model: Forecaster, x: Tensor) -> dict[str, np.ndarray]:
    """Gate activations of the first LSTM layer (forward direction) over one window.

    `x` is one scaled window, [L, F] or [1, L, F]. The layer's weights are copied into an
    `ExplicitLSTM`, which runs the window in fp32 and records every gate; returns
    {"input", "forget", "candidate", "output"} -> [L, hidden] float32 arrays.
    """
    net = model.module if hasattr(model, "module") else model  # a DDP-wrapped model works too
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
    cell(x.to(device=cell.weight_ih.device, dtype=torch.float32))
    acts = recorder.stacked()
    return {name: acts[name][0].cpu().numpy() for name in GATES}  # each [L, hidden]


def plot_gate_heatmap(acts: dict[str, np.ndarray], path: str | Path, *, title: str | None = None) -> Path:
    """One heat map per gate (time across, hidden units down) written as a PNG at `path`.

    Uses matplotlib's object API with the Agg canvas, not pyplot: no global figure state,
    no display needed, safe inside Ray workers and threads.
    """
    path = Path(path)
    names = list(acts)
    length, hidden = next(iter(acts.values())).shape
    fig = Figure(figsize=(min(4 + length / 12, 16), 1.2 + 1.6 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        # Sigmoid gates live in [0, 1], the tanh candidate in [-1, 1]: fixed colour ranges make
        # windows and models comparable at a glance.
        signed = name == "candidate"
        image = ax.imshow(
            acts[name].T,  # [hidden, L]
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            cmap="RdBu_r" if signed else "viridis",
            vmin=-1.0 if signed else 0.0,
            vmax=1.0,
        )
        ax.set_ylabel(f"{name}\nunit")
        fig.colorbar(image, ax=ax, pad=0.01)
    axes[-1].set_xlabel("step in lookback window")
    fig.suptitle(title or f"LSTM gate activations (layer 1, {hidden} units, {length} steps)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
