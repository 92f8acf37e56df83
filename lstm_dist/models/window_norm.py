"""Window-local level and scale normalisation of the targets (RevIN, Kim et al. 2022; DeepAR's scaling).

The series scaler standardises with stats of the whole train part, so a trending series reaches
levels at forecast time that the network rarely saw in training, and it learns to pull forecasts
back to the train-part mean. Here each input window is re-centred and re-scaled by its own stats
(per target channel), the network works in those units, and its outputs are mapped back, so the
forecast is relative to where the series is now. Callers see the same (series-scaled) units as
without it.

Mode `diff` goes one step further (first differences inside the model): the network reads the
window's step-to-step changes and emits per-step increments, which `losses.integrate` sums over the
horizon from the last observed value. A trend then is a constant input the network can continue,
not a level it must extrapolate; with data.target_transform=log1p the changes are growth rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Floor of the window scale, in series-scaled units (1 = the train part's spread): a flat window
# would otherwise divide by ~0 and turn noise-free inputs and forecasts into huge numbers.
MIN_WINDOW_SCALE = 1e-2
# Keeps RevIN's learnt per-channel gain away from 0, where the inverse map explodes.
_MIN_GAIN = 1e-3


class WindowNorm(nn.Module):
    """Per-window (loc, scale) of the target channels of `x`; normalises inputs and maps outputs back.

    `mode`: `last` centres on the last observed value, `mean` / `revin` on the window mean; the scale
    is the window's standard deviation (floored at MIN_WINDOW_SCALE). `revin` adds a learnable affine
    per target. `diff` centres on the last value and scales by the root mean square of the window's
    step-to-step differences (the in-sample naive forecast's RMSE, RMSSE's scale); the target channels
    become those differences in window units (see `normalize`) and the outputs are increments.
    `level_of[f]` is the target index feature f is in the units of (the target itself, its
    lags and moving averages) or -1 (covariates, RSI, calendar): those channels are normalised alike.
    `pad_feature`: the start-padding mask channel (1 on padding rows, data.start_padding), or None:
    padding steps are left out of the stats and their level channels set to 0 in window units.
    `prior_steps` (model.window_prior_steps): the spread is estimated as if the window also held that many
    steps of the series' own spread (1 in series-scaled units). A window of one to three real steps (the
    start of a short series, left-padded) otherwise has a spread of ~0: its inputs and outputs are
    divided and multiplied by the floor, and its errors, huge in window units, dominate the loss. With a
    prior the forecast follows a shifted history exactly, a scaled one only through the series scaler
    (which absorbs the scale); 0 keeps it exactly scale-equivariant.
    `level_steps` (model.window_level_steps, modes `mean` / `revin`): the level is the mean of the window's
    last that many real steps, not the whole window's (the spread stays the whole window's).
    """

    def __init__(
        self,
        mode: str,
        *,
        num_targets: int,
        level_of: Sequence[int],
        pad_feature: int | None = None,
        prior_steps: float = 0.0,
        level_steps: int = 0,
    ) -> None:
        super().__init__()
        assert mode in ("last", "mean", "revin", "diff"), mode
        self.mode, self.num_targets, self.pad_feature = mode, num_targets, pad_feature
        self.prior_steps, self.level_steps = prior_steps, level_steps
        is_level = torch.tensor([float(t >= 0) for t in level_of])
        self.register_buffer("is_level", is_level, persistent=False)  # [F]
        channels = [f for f, t in enumerate(level_of) if t >= 0]
        self.register_buffer("channels", torch.tensor(channels, dtype=torch.long), persistent=False)
        self.register_buffer(
            "target_of", torch.tensor([level_of[f] for f in channels], dtype=torch.long), persistent=False
        )
        if mode == "revin":
            self.gain = nn.Parameter(torch.ones(num_targets))
            self.bias = nn.Parameter(torch.zeros(num_targets))

    def _real(self, x: Tensor) -> Tensor | None:
        """[B, L, 1]: 1.0 on real steps, 0.0 on start padding; None without a padding mask."""
        if self.pad_feature is None:
            return None
        return (x[..., self.pad_feature : self.pad_feature + 1].float() < 0.5).float()

    @property
    def integrates(self) -> bool:
        """Whether the network's outputs are per-step increments to be summed over the horizon (mode `diff`)."""
        return self.mode == "diff"

    def _diffs(self, y: Tensor, real: Tensor | None) -> tuple[Tensor, Tensor]:
        """(d, pair): d [B, L, T] = y[t] - y[t-1] where both steps are real, else 0 (the first step's too);
        pair [B, L, 1] 1.0 where d is such a real difference."""
        pair = torch.ones_like(y[..., :1]) if real is None else real.clone()  # [B, L, 1]
        pair[:, 0] = 0.0  # no step before the first
        if real is not None:
            pair[:, 1:] *= real[:, :-1]  # the first real step follows padding: no difference either
        d = torch.zeros_like(y)
        d[:, 1:] = y[:, 1:] - y[:, :-1]
        return d * pair, pair

    def stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale), each fp32 [B, 1, T], of the target channels of `x` [B, L, F] (targets first)."""
        y = x[..., : self.num_targets].float()  # [B, L, T]
        real = self._real(x)
        if self.mode == "diff":  # RMS, not std: a steady trend has spread-free differences but a size
            d, pair = self._diffs(y, real)
            return y[:, -1:], self._spread(d.square().sum(dim=1, keepdim=True), pair.sum(dim=1, keepdim=True))
        if real is None:
            real = torch.ones_like(y[..., :1])  # [B, L, 1]
        count = real.sum(dim=1, keepdim=True).clamp_min(1.0)  # [B, 1, 1]; the last step is always real
        mean = (y * real).sum(dim=1, keepdim=True) / count  # padding carries no level
        squares = ((y - mean) ** 2 * real).sum(dim=1, keepdim=True)
        if self.mode == "last":
            return y[:, -1:], self._spread(squares, count)
        return (self._recent_mean(y, real) if self.level_steps else mean), self._spread(squares, count)

    def _recent_mean(self, y: Tensor, real: Tensor) -> Tensor:
        """[B, 1, T]: the mean of the last `level_steps` real steps of `y` [B, L, T] (the last step is always real)."""
        y, real = y[:, -self.level_steps :], real[:, -self.level_steps :]
        return (y * real).sum(dim=1, keepdim=True) / real.sum(dim=1, keepdim=True).clamp_min(1.0)

    def _spread(self, squares: Tensor, count: Tensor) -> Tensor:
        """Scale [B, 1, T] from a sum of squared deviations [B, 1, T] over `count` [B, 1, 1] real steps, as if
        the window also held `prior_steps` steps of the series' own spread (1 in series-scaled units)."""
        prior = self.prior_steps
        return ((squares + prior) / (count + prior).clamp_min(1.0)).sqrt().clamp_min(MIN_WINDOW_SCALE)

    def _gain(self) -> Tensor:
        g = self.gain
        return torch.where(g >= 0, 1.0, -1.0) * g.abs().clamp_min(_MIN_GAIN)  # [T]

    def normalize(self, x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """`x` [B, L, F] with its level channels in window units (then RevIN's affine)."""
        batch, _, num_f = x.shape
        off = torch.zeros(batch, 1, num_f, device=x.device, dtype=torch.float32)  # [B, 1, F]
        div = torch.ones(batch, 1, num_f, device=x.device, dtype=torch.float32)
        off[..., self.channels] = loc[..., self.target_of]
        div[..., self.channels] = scale[..., self.target_of]
        out = (x.float() - off) / div  # [B, L, F]
        if self.mode == "revin":
            ones, zeros = torch.ones(num_f, device=x.device), torch.zeros(num_f, device=x.device)
            gain = ones.index_copy(0, self.channels, self._gain()[self.target_of])  # [F]
            bias = zeros.index_copy(0, self.channels, self.bias[self.target_of])
            out = out * gain + bias
        real = self._real(x)
        if self.mode == "diff":  # the targets themselves as differences; their lags and averages stay levels
            d, _ = self._diffs(x[..., : self.num_targets].float(), real)
            out = torch.cat([d / scale, out[..., self.num_targets :]], dim=-1)
        if real is not None:  # padding rows of level channels: 0 in window units, as 0 is their value when scaled
            out = out * (1.0 - self.is_level * (1.0 - real))  # [B, L, F]
        return out.to(x.dtype)

    def output_affine(self, loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """(loc', scale') [B, 1, T] mapping network outputs back: value = out * scale' + loc' (RevIN folded in)."""
        if self.mode != "revin":
            return loc, scale
        gain = self._gain()  # out = ((v - bias) / gain) * scale + loc
        return loc - self.bias * scale / gain, scale / gain
