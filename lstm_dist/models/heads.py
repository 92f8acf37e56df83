"""Forecast heads: from the encoder summary (+ known-future covariates) to [B, H, T, P]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

_CELL = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class DirectHead(nn.Module):
    """All H steps at once (the MQ-RNN / neuralforecast LSTM decoder).

    The summary is expanded into one context vector per horizon step; each step's context
    is joined with that step's known-future covariates and mapped by a shared MLP, so a
    covariate (a holiday, a planned price) acts on exactly the step it belongs to.

    `additive=True` keeps the two apart: the context goes through the MLP alone, and a second MLP of the
    step's known-future inputs alone is added to it, as in an additive model (a GAM, Prophet). A holiday
    then moves a step by what it learnt, whatever the window held: a combination the training data never
    showed (a holiday the day after a holiday) gets the sum of the effects it did show.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden: int,
        horizon: int,
        num_future: int,
        num_targets: int,
        num_outputs: int,
        additive: bool = False,
    ) -> None:
        super().__init__()
        self.horizon, self.num_targets, self.num_outputs = horizon, num_targets, num_outputs
        self.hidden = hidden
        self.context = nn.Linear(in_dim, horizon * hidden)
        joint = 0 if additive else num_future  # the future inputs the context's MLP sees
        self.mlp = _mlp(hidden + joint, hidden, num_targets * num_outputs)
        self.future_mlp = _mlp(num_future, hidden, num_targets * num_outputs) if additive and num_future else None

    def forward(self, summary: Tensor, *, future: Tensor | None) -> Tensor:
        batch = summary.shape[0]
        ctx = self.context(summary).view(batch, self.horizon, self.hidden)  # [B, H, C]
        if future is not None and self.future_mlp is None:
            ctx = torch.cat([ctx, future.to(ctx.dtype)], dim=-1)  # [B, H, C + Ff]
        out = self.mlp(ctx)  # [B, H, T * P]
        if future is not None and self.future_mlp is not None:
            out = out + self.future_mlp(future.to(ctx.dtype))  # [B, H, T * P]: each step's own inputs, added
        return out.view(batch, self.horizon, self.num_targets, self.num_outputs)  # [B, H, T, P]


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear, applied to each horizon step alike."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class RecursiveHead(nn.Module):
    """One step at a time: a decoder cell whose input is the previous step's forecast.

    The decoder state starts from the encoder summary; at step h its input is
    [point forecast of step h-1 (the last observed targets at h = 0), future covariates
    of step h, summary]. Training and inference run the same free-running rollout (no
    teacher forcing), so the model is trained on the inputs it will see at inference
    and there is no exposure bias. The fed-back forecast is detached: gradients flow
    through the decoder state across steps but not through the fed-back values, which
    keeps the gradient path H steps long instead of compounding through every feedback.
    """

    def __init__(
        self,
        *,
        cell: str,
        in_dim: int,
        hidden: int,
        horizon: int,
        num_future: int,
        num_targets: int,
        num_outputs: int,
    ) -> None:
        super().__init__()
        self.horizon, self.num_targets, self.num_outputs = horizon, num_targets, num_outputs
        self.is_lstm = cell == "lstm"
        self.init_h = nn.Linear(in_dim, hidden)
        self.init_c = nn.Linear(in_dim, hidden) if self.is_lstm else None
        self.cell = _CELL[cell](num_targets + num_future + in_dim, hidden)
        self.out = nn.Linear(hidden, num_targets * num_outputs)

    def forward(
        self, summary: Tensor, *, y_last: Tensor, future: Tensor | None, point: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """`summary` [B, S], `y_last` [B, T] (last observed targets), `future` [B, H, Ff] or None.

        `point` maps one step's output [B, T, P] to the value fed back [B, T].
        """
        batch = summary.shape[0]
        h = torch.tanh(self.init_h(summary))  # [B, Hd]
        state = (h, self.init_c(summary)) if self.is_lstm else h
        prev = y_last
        steps = []
        for t in range(self.horizon):
            parts = [prev.to(summary.dtype), summary]
            if future is not None:
                parts.insert(1, future[:, t].to(summary.dtype))
            state = self.cell(torch.cat(parts, dim=-1), state)
            h = state[0] if self.is_lstm else state
            step = self.out(h).view(batch, self.num_targets, self.num_outputs)  # [B, T, P]
            steps.append(step)
            prev = point(step).detach()  # [B, T]
        return torch.stack(steps, dim=1)  # [B, H, T, P]
