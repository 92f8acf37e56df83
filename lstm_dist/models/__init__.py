"""LSTM/GRU/RNN forecasters: `build_model(cfg, ...)` returns a `Forecaster` (single-device PyTorch).

The names are loaded on first use (PEP 562): `lstm_dist.models.saved.MODEL_FILE`, which the registry needs,
must not cost a torch import on a path that never builds a model (a cached rerun, `models list`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lstm_dist.models.forecaster import Forecaster, build_model

__all__ = ["Forecaster", "build_model"]


def __getattr__(name: str):
    if name in __all__:
        from lstm_dist.models import forecaster

        return getattr(forecaster, name)
    raise AttributeError(f"module 'lstm_dist.models' has no attribute {name!r}")
