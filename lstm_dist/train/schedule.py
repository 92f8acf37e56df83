"""Learning-rate schedule (linear warm-up, then cosine decay), weight averaging and early stopping."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.05):
    """LambdaLR: linear from ~0 to the peak over `warmup_steps`, then cosine down to `min_ratio` x peak."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def weight_average(net: torch.nn.Module, optimizer: torch.optim.Optimizer, *, decay: float) -> AveragedModel | None:
    """An exponential moving average of `net`'s weights, updated after every optimizer step that updates them
    (a step skipped for inf/NaN gradients does not call `optimizer.step`); None when `decay` is 0."""
    if not decay:
        return None
    average = AveragedModel(net, multi_avg_fn=_warmed_up(decay), use_buffers=True)
    optimizer.register_step_post_hook(lambda *_: average.update_parameters(net))
    return average


def _warmed_up(decay: float):
    """The EMA update with TensorFlow's warm-up: after n updates the decay is min(decay, (1 + n) / (10 + n)), so
    an average over few steps (a small data set, a short final fit) follows the weights instead of holding on
    to its first ones; from about 1,000 updates on (at 0.99) it is the plain EMA."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, n_averaged)

    return update


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs whose validation loss did not beat the best by `min_delta`."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's validation loss; True when training should stop."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        """True once `patience` epochs in a row brought no improvement (never when patience is 0)."""
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        # Counters only: patience and min_delta come from the (possibly changed) config of a resumed run.
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
