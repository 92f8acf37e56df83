"""What a training checkpoint holds, and how the final model is rebuilt from one."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_dist.config import ModelConfig
from lstm_dist.models import Forecaster, build_model

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"


def save_training_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    stopper: Any,
    epoch: int,
    history: list[dict[str, float]],
    model_args: dict[str, Any],
) -> None:
    """Everything needed to continue training exactly where it stopped, plus a weights-only file for serving.

    `history` (the metrics of every epoch so far) travels with the checkpoint: Ray keeps only the
    metrics of retained checkpoints, and after a restart the latest checkpoint still has them all.
    """
    weights = {"model_args": model_args, "state_dict": model.state_dict()}
    torch.save(weights, path / MODEL_FILE)
    (path / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    torch.save(
        {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "early_stopping": stopper.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this worker's GPU
            },
        },
        path / STATE_FILE,
    )


def load_training_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    stopper: Any,
) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint in place; returns (epochs already completed, their metrics)."""
    model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu", weights_only=False)["state_dict"])
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    stopper.load_state_dict(state["early_stopping"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return int(state["epoch"]), load_history(path)


def load_history(path: str | Path) -> list[dict[str, float]]:
    """Per-epoch metrics stored in a checkpoint directory (every epoch up to that checkpoint)."""
    return json.loads((Path(path) / HISTORY_FILE).read_text())


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the weights of a checkpoint directory or model.pt into `model` (same architecture and sizes)."""
    path = Path(path)
    weights = torch.load(path / MODEL_FILE if path.is_dir() else path, map_location="cpu", weights_only=False)
    model.load_state_dict(weights["state_dict"])


def load_model(path: str | Path, *, device: str = "cpu") -> Forecaster:
    """Rebuild the trained network from a checkpoint directory (or a copy of its model.pt)."""
    path = Path(path)
    weights = torch.load(path / MODEL_FILE if path.is_dir() else path, map_location=device, weights_only=False)
    args = dict(weights["model_args"])
    # Models saved before window normalisation existed ran without it; the new default must not apply to them.
    model_cfg = {"window_norm": "none", **args.pop("model")}
    model = build_model(ModelConfig.model_validate(model_cfg), **args)
    model.load_state_dict(weights["state_dict"])
    return model.to(device).eval()


def model_args_for(ds) -> dict[str, Any]:
    """The data-dependent sizes `build_model` needs (from a WindowDataset); saved in every checkpoint."""
    from lstm_dist.data.features import level_of

    m = ds.manifest
    static = {"static": [s.static for s in m.series]} if m.static_features else {}
    # Window normalisation skips start padding; the key exists only for padded data, as the mask column does.
    pad = {"pad_feature": m.x_features.index(m.pad_col)} if m.pad_col is not None else {}
    return {
        "num_features": ds.num_features,
        "num_targets": ds.num_targets,
        "horizon": ds.horizon,
        "num_future": ds.num_future,
        "num_series": ds.num_series,
        "level_of": level_of(m.x_features, targets=m.target_cols, derived=m.derived_cols),
        **static,
        **pad,
    }
