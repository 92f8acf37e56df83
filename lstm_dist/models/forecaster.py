"""The forecaster network: encoder -> readout -> (+ series embedding) -> head.

Pure single-device PyTorch: nothing here knows of Ray or DDP; the training loop wraps the
module with `ray.train.torch.prepare_model`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lstm_dist.config import ModelConfig
from lstm_dist.models import losses
from lstm_dist.models.encoder import AttentionReadout, Encoder, last_state
from lstm_dist.models.heads import DirectHead, RecursiveHead
from lstm_dist.models.weights import init_recurrent
from lstm_dist.models.window_norm import WindowNorm


class Forecaster(nn.Module):
    """Maps a scaled lookback window to a multi-horizon forecast `[B, H, T, P]`.

    `x` [B, L, F] holds the targets first (in order), then covariates and calendar
    features; `future` [B, H, Ff] the known-future covariates over the horizon; `series`
    [B] the series index. P = 1 (point losses), len(quantiles) (quantile) or 2
    (gaussian: mean, raw scale; see `losses.gaussian_scale`).

    With `model.window_norm` set, the network runs on window-normalised targets and its outputs are
    mapped back (see `window_norm.WindowNorm`), so `forward` returns the same units either way; with
    `diff` the network emits per-step increments, summed over the horizon before they are mapped back.
    `level_of[f]` names the target whose units feature f is in (-1: none); default: the targets only.
    `pad_feature`: index of the start-padding mask feature in x, if any (window stats skip padding).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        num_features: int,
        num_targets: int,
        horizon: int,
        num_future: int = 0,
        num_series: int = 0,
        level_of: list[int] | None = None,
        static: list[list[float]] | None = None,
        pad_feature: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg.model_copy(deep=True)
        self.build_args = dict(
            num_features=num_features,
            num_targets=num_targets,
            horizon=horizon,
            num_future=num_future,
            num_series=num_series,
        )
        if level_of is not None:  # only when given, so checkpoints of models without it keep their args
            self.build_args["level_of"] = list(level_of)
        if static:
            self.build_args["static"] = [list(row) for row in static]
        if pad_feature is not None:
            self.build_args["pad_feature"] = pad_feature
        self.num_features, self.num_targets, self.horizon = num_features, num_targets, horizon
        self.num_future = num_future
        self.num_outputs = losses.num_outputs(cfg)
        if level_of is None:
            level_of = [*range(num_targets), *([-1] * (num_features - num_targets))]
        self.window_norm = (
            WindowNorm(
                cfg.window_norm,
                num_targets=num_targets,
                level_of=level_of,
                pad_feature=pad_feature,
                prior_steps=cfg.window_prior_steps,
                level_steps=cfg.window_level_steps,
            )
            if cfg.window_norm != "none"
            else None
        )

        self.encoder = Encoder(cfg, input_size=num_features)
        dim = self.encoder.out_size
        self.attention = AttentionReadout(dim) if cfg.readout == "attention" else None
        summary_dim = 2 * dim if self.attention is not None else dim
        self.embedding = nn.Embedding(num_series, cfg.series_embedding_dim) if cfg.series_embedding_dim > 0 else None
        if self.embedding is not None:
            summary_dim += cfg.series_embedding_dim
        # Static covariates per series (data.static_cols), looked up by series index like the embedding;
        # a buffer, not a parameter: data, rebuilt from the build args, so not in the state dict.
        self.num_static = len(static[0]) if static else 0
        self.static_table: Tensor | None
        if self.num_static:
            self.register_buffer("static_table", torch.tensor(static, dtype=torch.float32), persistent=False)
            summary_dim += self.num_static
        else:
            self.static_table = None
        self.drop = nn.Dropout(cfg.dropout)
        sizes = {"in_dim": summary_dim, "hidden": cfg.hidden_size, "horizon": horizon, "num_future": num_future}
        sizes |= {"num_targets": num_targets, "num_outputs": self.num_outputs}
        if cfg.head == "direct":
            self.head: nn.Module = DirectHead(additive=cfg.future_effect == "additive", **sizes)
        else:
            self.head = RecursiveHead(cell=cfg.cell, **sizes)
        init_recurrent(self)

    def _check_inputs(self, x: Tensor, future: Tensor | None, series: Tensor | None, static: Tensor | None) -> None:
        # Plain int comparisons: cheap, and a wrong column count otherwise surfaces as an
        # opaque matmul error deep in cuDNN.
        if x.dim() != 3 or x.shape[-1] != self.num_features:
            raise ValueError(f"x must be [B, L, {self.num_features}] (num_features), got {tuple(x.shape)}")
        if self.num_future > 0:
            if future is None or future.shape[1:] != (self.horizon, self.num_future):
                got = None if future is None else tuple(future.shape)
                raise ValueError(
                    f"future must be [B, {self.horizon}, {self.num_future}] (horizon, num_future), got {got}"
                )
        elif future is not None and future.shape[-1] > 0:
            raise ValueError("future covariates were passed but the model was built with num_future=0")
        if self.embedding is not None and series is None:
            raise ValueError("model.series_embedding_dim > 0 needs `series` ([B] series indices) in forward")
        if self.num_static and static is None and series is None:
            raise ValueError("a model with static covariates needs `series` or `static` ([B, num_static]) in forward")
        if static is not None and static.shape[-1] != self.num_static:
            raise ValueError(f"static must be [B, {self.num_static}] (num_static), got {tuple(static.shape)}")

    def summarize(self, x: Tensor, *, series: Tensor | None = None, static: Tensor | None = None) -> Tensor:
        """Encoder summary [B, S] of `x` [B, L, F] (readout, plus the series embedding and static covariates)."""
        out = self.encoder(x, keep_all=self.attention is not None or self.encoder.num_directions == 2)  # [B, L, D]
        last = last_state(out, num_directions=self.encoder.num_directions)  # [B, D]
        summary = self.attention(out, last) if self.attention is not None else last  # [B, S]
        if self.embedding is not None:
            summary = torch.cat([summary, self.embedding(series).to(summary.dtype)], dim=-1)  # [B, S + E]
        if self.static_table is not None:
            static = self.static_table[series] if static is None else static  # [B, Fst]
            summary = torch.cat([summary, static.to(summary.dtype)], dim=-1)  # [B, S + E + Fst]
        return self.drop(summary)

    def forward(
        self, x: Tensor, *, future: Tensor | None = None, series: Tensor | None = None, static: Tensor | None = None
    ) -> Tensor:
        """`static` [B, num_static] overrides the per-series table (series unknown at training, in serving)."""
        self._check_inputs(x, future, series, static)
        if self.num_future == 0:
            future = None
        if self.window_norm is None:
            return self._skip(x, self._network(x, future=future, series=series, static=static))
        loc, scale = self.window_norm.stats(x)  # [B, 1, T] each
        x = self.window_norm.normalize(x, loc, scale)
        out = self._skip(x, self._network(x, future=future, series=series, static=static))
        if self.window_norm.integrates:  # increments -> levels (window units), before mapping back
            out = losses.integrate(out, cfg=self.cfg)
        return losses.rescale(out, *self.window_norm.output_affine(loc, scale), cfg=self.cfg)  # [B, H, T, P]

    def _skip(self, x: Tensor, out: Tensor) -> Tensor:
        """`out` [B, H, T, P] plus, with model.skip_season = s, the seasonal naive forecast from `x` [B, L, F] (in
        the same units): step h gets the window's value s - (h mod s) steps before its end."""
        season = self.cfg.skip_season
        if not season:
            return out
        if x.shape[1] < season:
            raise ValueError(
                f"model.skip_season={season} needs a lookback of at least {season} steps, got {x.shape[1]}"
            )
        steps = x.shape[1] - season + torch.arange(self.horizon, device=x.device) % season  # [H]
        return losses.shift(out, x[:, steps, : self.num_targets].float(), cfg=self.cfg)

    def _network(self, x: Tensor, *, future: Tensor | None, series: Tensor | None, static: Tensor | None) -> Tensor:
        summary = self.summarize(x, series=series, static=static)  # [B, S]
        if isinstance(self.head, RecursiveHead):
            y_last = x[:, -1, : self.num_targets]  # [B, T]; targets come first in x
            return self.head(summary, y_last=y_last, future=future, point=self.point)
        return self.head(summary, future=future)  # [B, H, T, P]

    def loss(self, out: Tensor, y: Tensor, *, x: Tensor | None = None) -> Tensor:
        """The configured loss of `out` [B, H, T, P] against `y` [B, H, T]; a scalar (fp32).

        With window normalisation on and the input window `x` given, the loss is taken in window
        units, so series of any level and spread weigh alike; without `x`, in series-scaled units.
        """
        if self.window_norm is not None and x is not None:
            loc, scale = self.window_norm.stats(x)
            return losses.compute_loss(out, y, cfg=self.cfg, loc=loc, scale=scale)
        return losses.compute_loss(out, y, cfg=self.cfg)

    def point(self, out: Tensor) -> Tensor:
        """Point forecast [..., T] from `out` [..., T, P]: the value, the median or the mean."""
        return losses.point(out, cfg=self.cfg)

    def interval(self, out: Tensor) -> dict[str, Tensor] | None:
        """{"q0.1": [B, H, T], ...} for quantile/gaussian losses (80% for gaussian); None otherwise."""
        return losses.interval(out, cfg=self.cfg)

    @torch.no_grad()
    def predict(
        self, x: Tensor, *, future: Tensor | None = None, series: Tensor | None = None, static: Tensor | None = None
    ) -> Tensor:
        """Inference forward in eval mode (dropout off), without autograd; [B, H, T, P].

        The recursive head rolls out one step at a time feeding its forecasts back, as in
        training; the module's train/eval mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return self(x, future=future, series=series, static=static)
        finally:
            self.train(was_training)


class Ensemble(nn.Module):
    """A deep ensemble: `model.members` forecasters of one config, from different initial weights.

    Each member is a whole `Forecaster`, initialised by its own draw of the seeded generator and dropping out
    its own units, and trained on its own loss over the same batches, so the members stay independent (a loss
    of their mean would let them co-adapt into one bigger network). The forecast is the members' mean, which
    averages out the run-to-run noise of one network.

    `Forecaster`'s interface over `cfg.members` members. In training mode `forward` returns every member's
    output, [M, B, H, T, P], and `loss` averages the members' own losses; in eval mode the mean, [B, H, T, P]."""

    def __init__(self, cfg: ModelConfig, **dims: Any) -> None:
        super().__init__()
        self.members = nn.ModuleList(Forecaster(cfg, **dims) for _ in range(cfg.members))
        first = self.members[0]
        self.cfg, self.build_args = first.cfg, first.build_args
        self.num_features, self.num_targets, self.horizon = first.num_features, first.num_targets, first.horizon
        self.num_future, self.num_outputs = first.num_future, first.num_outputs

    def forward(
        self, x: Tensor, *, future: Tensor | None = None, series: Tensor | None = None, static: Tensor | None = None
    ) -> Tensor:
        outs = torch.stack([m(x, future=future, series=series, static=static) for m in self.members])  # [M, B, H, T, P]
        return outs if self.training else outs.mean(dim=0)

    def loss(self, out: Tensor, y: Tensor, *, x: Tensor | None = None) -> Tensor:
        """The mean of the members' losses for a training output [M, B, H, T, P]; the loss of the mean for an
        eval output [B, H, T, P] (validation, which early stopping reads)."""
        if out.dim() == 5:
            return torch.stack([m.loss(o, y, x=x) for m, o in zip(self.members, out, strict=True)]).mean()
        return self.members[0].loss(out, y, x=x)

    def point(self, out: Tensor) -> Tensor:
        return self.members[0].point(out)

    def interval(self, out: Tensor) -> dict[str, Tensor] | None:
        return self.members[0].interval(out)

    predict = Forecaster.predict


def build_model(cfg: ModelConfig, **dims: Any) -> Forecaster:
    """Build the configured forecaster from the data's dimensions (the keyword arguments of `Forecaster`);
    raises ValueError naming the key for impossible settings."""
    _check_dims(cfg, **dims)
    if cfg.residual and cfg.num_layers == 1:
        warnings.warn("model.residual has no effect with model.num_layers=1 (it acts between layers)", stacklevel=2)
    if cfg.members > 1:
        return Ensemble(cfg, **dims)  # type: ignore[return-value]  # Forecaster's interface over M networks
    return Forecaster(cfg, **dims)


def _check_dims(cfg: ModelConfig, *, num_features: int, num_targets: int, num_series: int = 0, **dims: Any) -> None:
    level_of, static = dims.get("level_of"), dims.get("static")
    if num_targets < 1 or num_features < num_targets:
        raise ValueError(f"need 1 <= num_targets <= num_features, got {num_targets} and {num_features}")
    if cfg.series_embedding_dim > 0 and num_series < 1:
        raise ValueError("model.series_embedding_dim > 0 needs num_series >= 1 (the number of series in the data)")
    if cfg.tbptt_chunk > 0 and cfg.bidirectional:
        raise ValueError(
            "model.tbptt_chunk > 0 cannot be combined with model.bidirectional: the backward direction "
            "starts at the end of the window, so it cannot be run chunk by chunk; set one of them off"
        )
    if level_of is not None and (len(level_of) != num_features or max(level_of, default=-1) >= num_targets):
        raise ValueError(f"level_of must give a target index or -1 for each of {num_features} features, got {level_of}")
    if static and (len(static) != num_series or len({len(row) for row in static}) != 1):
        raise ValueError(f"static must hold one equally long row per series ({num_series}), got {len(static)} rows")
