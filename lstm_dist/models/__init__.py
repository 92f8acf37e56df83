"""LSTM/GRU/RNN forecasters: `build_model(cfg, ...)` returns a `Forecaster` (single-device PyTorch)."""

from lstm_dist.models.forecaster import Forecaster, build_model

__all__ = ["Forecaster", "build_model"]
