"""Recurrent encoder over the lookback window, and its readout to one summary vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lstm_dist.config import ModelConfig

_RNN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

# One entry per recurrent module: (h, c) for LSTM, h for GRU/RNN.
State = list[Tensor | tuple[Tensor, Tensor]]


def _detach(state: State) -> State:
    return [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state]


class Encoder(nn.Module):
    """Stacked recurrent layers: `[B, L, F] -> [B, L / k, D]`, D = hidden_size * directions, k = model.segment
    (1 by default: one output per step).

    With k > 1 the window is read k steps at a time (SegRNN): step j's input is steps jk .. jk + k - 1 side
    by side, [k * F] features, so the recurrence runs L / k steps. The cost of a CPU LSTM grows with its
    step count, and on hourly data a day per step leaves a week's window 7 steps long.

    Without residual or layer norm the whole stack is one multi-layer cuDNN module (the
    fast path). With either, the stack is built layer by layer, because both act between
    layers, where a fused module gives no access.
    """

    def __init__(self, cfg: ModelConfig, *, input_size: int) -> None:
        super().__init__()
        rnn = _RNN[cfg.cell]
        self.num_directions = 2 if cfg.bidirectional else 1
        self.out_size = cfg.hidden_size * self.num_directions
        self.layered = cfg.residual or cfg.layer_norm
        self.residual = cfg.residual
        self.tbptt_chunk = cfg.tbptt_chunk
        self.segment = cfg.segment
        input_size *= cfg.segment
        if not self.layered:
            self.rnns = nn.ModuleList(
                [
                    rnn(
                        input_size,
                        cfg.hidden_size,
                        num_layers=cfg.num_layers,
                        # nn.LSTM applies dropout between layers only, and warns when there is none.
                        dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
                        bidirectional=cfg.bidirectional,
                        batch_first=True,
                    )
                ]
            )
            self.norms = None
        else:
            self.rnns = nn.ModuleList(
                [
                    rnn(
                        input_size if i == 0 else self.out_size,
                        cfg.hidden_size,
                        bidirectional=cfg.bidirectional,
                        batch_first=True,
                    )
                    for i in range(cfg.num_layers)
                ]
            )
            self.norms = (
                nn.ModuleList([nn.LayerNorm(self.out_size) for _ in range(cfg.num_layers)]) if cfg.layer_norm else None
            )
        self.between = nn.Dropout(cfg.dropout)

    def first_layer(self) -> tuple[nn.RNNBase, str]:
        """The module holding the first layer and its parameter suffix, e.g. (lstm, "l0")."""
        return self.rnns[0], "l0"

    def segmented(self, x: Tensor) -> Tensor:
        """`x` [B, L, F] as the recurrence reads it: [B, L / k, k * F], each segment's steps side by side."""
        batch, length, features = x.shape
        if length % self.segment:
            raise ValueError(f"model.segment={self.segment} must divide the window's length, got {length} steps")
        return x.reshape(batch, length // self.segment, self.segment * features)

    def step(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run all layers over `x` [B, l, F] from `state`; returns outputs [B, l, D] and the new state."""
        new_state: State = []
        h = x
        for i, rnn in enumerate(self.rnns):
            y, s = rnn(h, None if state is None else state[i])  # [B, l, D]
            if self.layered:
                # Layer 0 maps features to hidden units; only later layers have a like-for-like skip.
                if self.residual and i > 0:
                    y = y + h
                if self.norms is not None:
                    y = self.norms[i](y)
                if i < len(self.rnns) - 1:
                    y = self.between(y)
            h = y
            new_state.append(s)
        return h, new_state

    def forward(self, x: Tensor, *, keep_all: bool = True) -> Tensor:
        """Encode `x` [B, L, F] -> [B, L / segment, D] (or [B, 1, D], the last step, when not `keep_all`).

        With `tbptt_chunk` = k > 0 the window is run in chunks of k (encoder) steps and the state is
        detached between chunks: the forward values are those of full BPTT, but gradients
        reach back at most k steps, which bounds memory and the gradient path on long
        lookbacks. Outputs of earlier chunks are kept only when the readout needs them.
        """
        x = self.segmented(x)
        k = self.tbptt_chunk
        length = x.shape[1]
        if k == 0 or k >= length:
            out, _ = self.step(x)
            return out if keep_all else out[:, -1:]
        outs: list[Tensor] = []
        state: State | None = None
        for start in range(0, length, k):
            out, state = self.step(x[:, start : start + k], state)  # [B, k, D]
            state = _detach(state)
            if keep_all:
                outs.append(out)
        return torch.cat(outs, dim=1) if keep_all else out[:, -1:]


def last_state(out: Tensor, *, num_directions: int) -> Tensor:
    """[B, L, D] -> [B, D]: each direction's output once it has read the whole window."""
    if num_directions == 1:
        return out[:, -1]
    # The backward direction reads right to left, so it has seen everything at t = 0.
    hidden = out.shape[-1] // 2
    return torch.cat([out[:, -1, :hidden], out[:, 0, hidden:]], dim=-1)


class AttentionReadout(nn.Module):
    """Attention pooling over the encoder outputs, queried by the last state.

    Returns [last, context] so the head keeps direct access to the most recent state
    while the context can pick out earlier steps (a peak one season ago, say).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, out: Tensor, last: Tensor) -> Tensor:
        q = self.query(last).unsqueeze(1)  # [B, 1, D]
        k = self.key(out)  # [B, L, D]
        scores = (q * k).sum(-1) * self.scale  # [B, L]
        # Softmax in fp32: under fp16/bf16 autocast the exp of large scores overflows or flattens.
        weights = scores.float().softmax(dim=-1).to(out.dtype)  # [B, L]
        context = torch.einsum("bl,bld->bd", weights, out)  # [B, D]
        return torch.cat([last, context], dim=-1)  # [B, 2D]
