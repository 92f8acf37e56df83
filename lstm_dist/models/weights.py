"""Initialisation of recurrent weights.

Xavier/Glorot uniform for input-to-hidden, orthogonal for hidden-to-hidden (keeps the
recurrent Jacobian norm near 1 at the start, so gradients neither vanish nor explode over
long lookbacks), zero biases, and an LSTM forget-gate bias of 1.0 so cells remember by
default (Jozefowicz et al. 2015). Each gate block is initialised on its own: a fused
[4H, H] matrix made orthogonal as a whole is not orthogonal per gate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

FORGET_BIAS = 1.0

# Gates per cell, in PyTorch's layout of the fused weight matrices.
_NUM_GATES = {nn.LSTM: 4, nn.LSTMCell: 4, nn.GRU: 3, nn.GRUCell: 3, nn.RNN: 1, nn.RNNCell: 1}


@torch.no_grad()
def init_recurrent(module: nn.Module) -> None:
    """Initialise every nn.LSTM/GRU/RNN(Cell) inside `module` in place (others are left alone)."""
    for m in module.modules():
        kind = type(m)
        if kind in _NUM_GATES:
            init_gate_params(m.named_parameters(), num_gates=_NUM_GATES[kind], is_lstm=kind in (nn.LSTM, nn.LSTMCell))


@torch.no_grad()
def init_gate_params(named_params: Iterable[tuple[str, Tensor]], *, num_gates: int, is_lstm: bool) -> None:
    """The scheme above for parameters named as in PyTorch (weight_ih*, weight_hh*, bias_ih*, bias_hh*)."""
    for name, p in named_params:
        if name.startswith("weight_ih"):
            for block in p.chunk(num_gates, dim=0):
                nn.init.xavier_uniform_(block)
        elif name.startswith("weight_hh"):
            for block in p.chunk(num_gates, dim=0):
                nn.init.orthogonal_(block)
        elif name.startswith("bias"):
            p.zero_()
            # nn.LSTM adds b_ih and b_hh; put the whole forget bias in b_ih so the sum is 1.0.
            if is_lstm and name.startswith("bias_ih"):
                hidden = p.shape[0] // 4
                p[hidden : 2 * hidden] = FORGET_BIAS  # gate order i, f, g, o
