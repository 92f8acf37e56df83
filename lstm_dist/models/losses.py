"""What the network's last axis means for each loss, and the loss itself.

The network emits `[..., P]` per (step, target): P = 1 for point losses, one value per
quantile for `quantile`, and (mean, raw scale) for `gaussian`. Everything that turns those
P numbers into a loss, a point forecast or an interval lives here, so the heads stay
ignorant of the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lstm_dist.config import ModelConfig

# z of the 10% / 90% quantiles of a standard normal: the Gaussian head's 80% interval.
_Z90 = 1.2815515655446004
# Keeps the Gaussian scale away from 0, where the NLL and its gradient blow up.
_MIN_SCALE = 1e-4
_HUBER_DELTA = 1.0  # data are scaled, so one unit is about one standard deviation


def num_outputs(cfg: ModelConfig) -> int:
    """P: numbers the network emits per (horizon step, target) for this loss."""
    if cfg.loss == "quantile":
        return len(cfg.quantiles)
    if cfg.loss == "gaussian":
        return 2
    return 1


def gaussian_scale(raw: Tensor) -> Tensor:
    """Positive standard deviation from the head's unconstrained output."""
    return F.softplus(raw.float()) + _MIN_SCALE


def _softplus_inverse(y: Tensor) -> Tensor:
    # log(exp(y) - 1), written so it neither overflows for large y nor loses bits for small y.
    return y + torch.log(-torch.expm1(-y))


def rescale(out: Tensor, loc: Tensor, scale: Tensor, *, cfg: ModelConfig) -> Tensor:
    """`out` [B, H, T, P] from window units to `value * scale + loc` units; loc/scale [B, 1, T].

    Values (point, quantiles, gaussian mean) map affinely; the gaussian's raw scale is re-encoded so
    that `gaussian_scale` of the result is the standard deviation times |scale|.
    """
    out = out.float()
    loc, scale = loc.unsqueeze(-1), scale.unsqueeze(-1)  # [B, 1, T, 1]
    if cfg.loss != "gaussian":
        return out * scale + loc
    mean = out[..., :1] * scale + loc
    std = gaussian_scale(out[..., 1:]) * scale.abs()
    return torch.cat([mean, _raw_scale(std)], dim=-1)


def shift(out: Tensor, anchor: Tensor, *, cfg: ModelConfig) -> Tensor:
    """`out` [B, H, T, P] plus `anchor` [B, H, T] on its values (point, each quantile, the gaussian mean)."""
    if cfg.loss != "gaussian":
        return out + anchor.unsqueeze(-1).to(out.dtype)
    return torch.cat([out[..., :1] + anchor.unsqueeze(-1).to(out.dtype), out[..., 1:]], dim=-1)


def _raw_scale(std: Tensor) -> Tensor:
    """The raw output whose `gaussian_scale` is `std`."""
    return _softplus_inverse((std - _MIN_SCALE).clamp_min(1e-8))


def integrate(out: Tensor, *, cfg: ModelConfig) -> Tensor:
    """Levels from per-step increments `out` [B, H, T, P] (model.window_norm=diff), summed over the horizon.

    Values (point, each quantile, the gaussian mean) are cumulated, so a loss on the result trains the
    increments whose sums hit the targets (for quantiles: whose sums hit the quantiles of the level).
    Gaussian: the increments are taken as independent, so the variances add up.
    """
    out = out.float()
    if cfg.loss != "gaussian":
        return out.cumsum(dim=1)
    mean = out[..., :1].cumsum(dim=1)
    std = gaussian_scale(out[..., 1:]).square().cumsum(dim=1).sqrt()
    return torch.cat([mean, _raw_scale(std)], dim=-1)


def compute_loss(
    out: Tensor, y: Tensor, *, cfg: ModelConfig, loc: Tensor | None = None, scale: Tensor | None = None
) -> Tensor:
    """Scalar loss of `out` [B, H, T, P] against `y` [B, H, T], averaged over all elements.

    With `loc`/`scale` [B, 1, T] the loss is taken in the units `(v - loc) / scale` (window units):
    each window then weighs alike whatever its level and spread.
    """
    if out.shape[:-1] != y.shape:
        raise ValueError(f"loss: output {tuple(out.shape)} does not match target {tuple(y.shape)} (+ a last axis P)")
    # Losses in fp32: under fp16 autocast squared errors and log-scales lose too many bits.
    out, y = out.float(), y.float()
    if loc is not None and scale is not None:
        return _window_loss(out, y, loc=loc.float(), scale=scale.float(), cfg=cfg)
    if cfg.loss == "mse":
        return F.mse_loss(out[..., 0], y)
    if cfg.loss == "mae":
        return F.l1_loss(out[..., 0], y)
    if cfg.loss == "huber":
        return F.huber_loss(out[..., 0], y, delta=_HUBER_DELTA)
    if cfg.loss == "quantile":
        q = torch.tensor(cfg.quantiles, device=out.device, dtype=out.dtype)  # [P]
        err = y.unsqueeze(-1) - out  # [B, H, T, P]
        # Pinball loss: under-prediction costs q, over-prediction 1 - q.
        return torch.maximum(q * err, (q - 1) * err).mean()
    if cfg.loss == "gaussian":
        mean, scale = out[..., 0], gaussian_scale(out[..., 1])
        # full=False drops the constant log(2*pi)/2; the optimum is the same.
        return F.gaussian_nll_loss(mean, y, scale.square(), eps=_MIN_SCALE**2)
    raise AssertionError(f"unhandled loss {cfg.loss}")  # config validation makes this unreachable


def _window_loss(out: Tensor, y: Tensor, *, loc: Tensor, scale: Tensor, cfg: ModelConfig) -> Tensor:
    y_n = (y - loc) / scale  # [B, H, T]
    if cfg.loss != "gaussian":
        return compute_loss((out - loc.unsqueeze(-1)) / scale.unsqueeze(-1), y_n, cfg=cfg)
    mean = (out[..., 0] - loc) / scale
    std = gaussian_scale(out[..., 1]) / scale
    return F.gaussian_nll_loss(mean, y_n, std.square(), eps=_MIN_SCALE**2)


def _sorted_quantiles(out: Tensor) -> Tensor:
    # Independent quantile outputs can cross; sorting them (monotone rearrangement,
    # Chernozhukov et al. 2010) never makes the pinball loss worse and keeps intervals valid.
    return out.sort(dim=-1).values


def point(out: Tensor, *, cfg: ModelConfig) -> Tensor:
    """Point forecast [...] from `out` [..., P]: the value, the median, or the mean."""
    if cfg.loss == "quantile":
        # After sorting, output i is the i-th smallest quantile, whatever the config's order.
        return _sorted_quantiles(out)[..., sorted(cfg.quantiles).index(0.5)]
    return out[..., 0]


def interval(out: Tensor, *, cfg: ModelConfig) -> dict[str, Tensor] | None:
    """Quantile forecasts keyed "q0.1", "q0.9", ... from `out` [..., P]; None for point losses."""
    if cfg.loss == "quantile":
        qs = _sorted_quantiles(out)
        return {_key(q): qs[..., i] for i, q in enumerate(sorted(cfg.quantiles))}
    if cfg.loss == "gaussian":
        mean, scale = out[..., 0].float(), gaussian_scale(out[..., 1])
        return {_key(0.1): mean - _Z90 * scale, _key(0.5): mean, _key(0.9): mean + _Z90 * scale}
    return None


def _key(q: float) -> str:
    return f"q{q:g}"
