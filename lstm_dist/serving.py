"""The MLflow pyfunc forecaster: raw history in (long format), forecasts in original units out.

It holds the trained network and the shard manifest (scalers, feature definitions, column roles),
so `mlflow.pyfunc.load_model(...)` in a fresh process needs only this package installed.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from lstm_dist.data.inference import inverse_targets, make_inference_batch
from lstm_dist.data.manifest import Manifest


class ForecastModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: `predict(history_df)` -> one row per (series, forecast step)."""

    def load_context(self, context) -> None:
        self.load_artifacts(context.artifacts)

    def load_artifacts(self, artifacts: dict[str, str]) -> None:
        from pathlib import Path

        from lstm_dist.train.checkpoints import load_model

        self.net = load_model(artifacts["model"])
        self.manifest = Manifest.load(Path(artifacts["manifest"]).parent)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.forecast(model_input)

    def __getstate__(self) -> dict:
        # Weights travel as an artifact file, not inside the pickled Python object.
        return {}

    @torch.no_grad()
    def forecast(self, history: pd.DataFrame) -> pd.DataFrame:
        """Forecast the next `horizon` steps after the end of each series in `history`."""
        m = self.manifest
        batch = make_inference_batch(history, manifest=m)
        future = torch.from_numpy(batch["future"]) if batch["future"].shape[-1] else None
        out = self.net.predict(
            torch.from_numpy(batch["x"]), future=future, series=torch.from_numpy(batch["series"])
        )  # [S, H, T, P]
        point = inverse_targets(self.net.point(out).numpy(), batch["series_loc_scale"], m)  # [S, H, T]
        num_series, horizon = point.shape[:2]
        step_ns = np.int64(m.freq_seconds * 1_000_000_000)
        t0 = np.asarray(batch["t0"], dtype="datetime64[ns]")  # [S] first forecast step
        times = t0[:, None] + (np.arange(horizon, dtype=np.int64) * step_ns).astype("timedelta64[ns]")
        frame = {
            m.series_col: np.repeat(np.asarray(batch["series_names"], dtype=object), horizon),
            m.timestamp_col: times.reshape(-1),
            "step": np.tile(np.arange(1, horizon + 1), num_series),
        }
        for t, name in enumerate(m.target_cols):
            frame[name] = point[:, :, t].reshape(-1)
        interval = self.net.interval(out)
        for label, values in (interval or {}).items():
            values = inverse_targets(values.numpy(), batch["series_loc_scale"], m)
            for t, name in enumerate(m.target_cols):
                frame[f"{name}_{label}"] = values[:, :, t].reshape(-1)
        return pd.DataFrame(frame)
