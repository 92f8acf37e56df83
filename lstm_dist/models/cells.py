"""An LSTM with its gates written out, for analysis (gate heat maps) and cell variants.

Slow (a Python loop over time steps): the forecaster trains with cuDNN `nn.LSTM`; this
cell takes a copy of a trained layer's weights (`ExplicitLSTM.from_lstm`) to show what the
gates did over a window. Its parameters use nn.LSTM's names and layout (gate order
i, f, g, o), so with peepholes off it computes exactly what nn.LSTM computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from lstm_dist.models.weights import init_gate_params

GATES = ("input", "forget", "candidate", "output")

# Called once per time step with the step index and that step's activations, each [B, Hd]:
# the four gates plus "cell" and "hidden".
GateHook = Callable[[int, dict[str, Tensor]], None]


class ExplicitLSTM(nn.Module):
    """One LSTM layer, one direction, gates spelled out: `[B, L, F] -> [B, L, Hd]`.

    - `peephole`: the gates also see the cell state through diagonal weights (Gers &
      Schmidhuber 2000): input and forget gates the previous c, the output gate the new c.
      The peephole weights start at zero, so a fresh peephole cell equals the plain one.
    - `variant="coupled"`: one gate decides both forgetting and writing, i = 1 - f (CIFG,
      Greff et al. 2017); the input-gate rows of the weights are then unused.
    - `hook`: a `GateHook` receiving every step's activations (see `GateRecorder`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        peephole: bool = False,
        variant: Literal["vanilla", "coupled"] = "vanilla",
    ) -> None:
        super().__init__()
        if variant not in ("vanilla", "coupled"):
            raise ValueError(f"variant must be 'vanilla' or 'coupled', got {variant!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.peephole, self.variant = peephole, variant
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))  # [4Hd, F]
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))  # [4Hd, Hd]
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        if peephole:
            self.weight_ci = nn.Parameter(torch.zeros(hidden_size))
            self.weight_cf = nn.Parameter(torch.zeros(hidden_size))
            self.weight_co = nn.Parameter(torch.zeros(hidden_size))
        self.hook: GateHook | None = None
        init_gate_params(
            [(n, p) for n, p in self.named_parameters() if not n.startswith("weight_c")], num_gates=4, is_lstm=True
        )

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, *, layer: int = 0, reverse: bool = False, peephole: bool = False) -> ExplicitLSTM:
        """A copy of one layer (and direction) of a trained `nn.LSTM`, on the same device."""
        if lstm.proj_size:
            raise ValueError("nn.LSTM with proj_size is not supported by the explicit cell")
        if layer >= lstm.num_layers or (reverse and not lstm.bidirectional):
            raise ValueError(f"nn.LSTM has {lstm.num_layers} layer(s), bidirectional={lstm.bidirectional}")
        suffix = f"l{layer}" + ("_reverse" if reverse else "")
        w_ih = getattr(lstm, f"weight_ih_{suffix}")
        cell = cls(w_ih.shape[1], lstm.hidden_size, peephole=peephole).to(device=w_ih.device, dtype=w_ih.dtype)
        with torch.no_grad():
            cell.weight_ih.copy_(w_ih)
            cell.weight_hh.copy_(getattr(lstm, f"weight_hh_{suffix}"))
            if lstm.bias:
                cell.bias_ih.copy_(getattr(lstm, f"bias_ih_{suffix}"))
                cell.bias_hh.copy_(getattr(lstm, f"bias_hh_{suffix}"))
            else:
                cell.bias_ih.zero_()
                cell.bias_hh.zero_()
        return cell

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`x` [B, L, F], `state` (h, c) each [B, Hd] -> outputs [B, L, Hd], final (h, c)."""
        batch, length, _ = x.shape
        if state is None:
            h = x.new_zeros(batch, self.hidden_size)
            c = x.new_zeros(batch, self.hidden_size)
        else:
            h, c = state
        # The input part of every gate for all steps in one matmul; only h @ W_hh is sequential.
        x_gates = x @ self.weight_ih.T + self.bias_ih  # [B, L, 4Hd]
        outputs = []
        for t in range(length):
            z = x_gates[:, t] + h @ self.weight_hh.T + self.bias_hh  # [B, 4Hd]
            z_i, z_f, z_g, z_o = z.chunk(4, dim=-1)  # each [B, Hd]
            if self.peephole:
                z_i = z_i + self.weight_ci * c
                z_f = z_f + self.weight_cf * c
            forget = torch.sigmoid(z_f)
            inp = 1.0 - forget if self.variant == "coupled" else torch.sigmoid(z_i)
            candidate = torch.tanh(z_g)
            c = forget * c + inp * candidate
            if self.peephole:
                z_o = z_o + self.weight_co * c  # the output gate looks at the new cell state
            out = torch.sigmoid(z_o)
            h = out * torch.tanh(c)
            if self.hook is not None:
                self.hook(
                    t, {"input": inp, "forget": forget, "candidate": candidate, "output": out, "cell": c, "hidden": h}
                )
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


class GateRecorder:
    """A `GateHook` that keeps every step's activations; `stacked()` gives [B, L, Hd] per name."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Tensor]] = []

    def __call__(self, step: int, acts: dict[str, Tensor]) -> None:
        self.steps.append({k: v.detach() for k, v in acts.items()})

    def stacked(self) -> dict[str, Tensor]:
        if not self.steps:
            return {}
        return {k: torch.stack([s[k] for s in self.steps], dim=1) for k in self.steps[0]}
