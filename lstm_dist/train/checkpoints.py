"""What a training checkpoint holds: the saved model (models/saved.py), the optimizer state, the history."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_dist.models.saved import MODEL_FILE, load_weights, save_model

STATE_FILE = "state.pt"  # tensors: optimizer, scheduler, grad scaler, torch RNG, raw weights under averaging
STATE_JSON = "state.json"  # the rest: epoch, early stopping, numpy and Python RNG
HISTORY_FILE = "history.json"


@dataclass
class TrainingState:
    """What a checkpoint holds besides the epoch and the history: the live training objects."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    stopper: Any  # train.schedule.EarlyStopping
    average: Any = None  # train.schedule.weight_average: the averaged weights, or None

    @property
    def served(self) -> torch.nn.Module:
        """The weights that are validated, checkpointed as the model and registered: the average, if any."""
        return self.model if self.average is None else self.average.module


def save_training_state(
    path: Path, state: TrainingState, *, epoch: int, history: list[dict[str, float]], model_args: dict[str, Any]
) -> None:
    """Everything needed to continue training exactly where it stopped, plus a weights-only file for serving.

    `history` (the metrics of every epoch so far) travels with the checkpoint: Ray keeps only the
    metrics of retained checkpoints, and after a restart the latest checkpoint still has them all.
    Tensors and state dicts go to `state.pt` (read back with weights_only=True); the rest (epoch, early
    stopping, numpy's and Python's random states) to `state.json` beside it. Under weight averaging the model
    file holds the average, and `state.pt` the raw weights the optimizer goes on from.
    """
    save_model(path, model=state.served, model_args=model_args)
    (path / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    torch.save(
        {
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this worker's GPU
            **_raw_weights(state),
        },
        path / STATE_FILE,
    )
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    rest = {
        "epoch": epoch,
        "early_stopping": state.stopper.state_dict(),
        "rng_numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "rng_python": [py_version, list(py_state), py_gauss],
    }
    (path / STATE_JSON).write_text(json.dumps(rest))


def _raw_weights(state: TrainingState) -> dict[str, Any]:
    if state.average is None:
        return {}
    return {"raw_weights": state.model.state_dict(), "averaged_steps": state.average.n_averaged}


def _restore_average(into: TrainingState, path: Path, state: dict[str, Any]) -> None:
    """The average from the model file, the raw weights from `state.pt`. A checkpoint written without
    averaging has neither: the average starts again from its weights."""
    if into.average is None:
        return
    load_weights(into.average.module, path)
    if "raw_weights" in state:
        into.model.load_state_dict(state["raw_weights"])
        into.average.n_averaged.copy_(state["averaged_steps"])


def load_training_state(path: Path, into: TrainingState) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint in place (or a newer complete one beside it, see `newest_checkpoint`);
    returns (epochs already completed, their metrics)."""
    path = newest_checkpoint(path)
    if not (path / STATE_JSON).is_file():
        raise FileNotFoundError(
            f"checkpoint {path} has no {STATE_JSON}: it was written before checkpoints were loaded with "
            "weights_only=True and cannot be resumed safely; rerun the step from scratch (`--force train`)"
        )
    load_weights(into.model, path)
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    _restore_average(into, path, state)
    rest = json.loads((path / STATE_JSON).read_text())
    into.optimizer.load_state_dict(state["optimizer"])
    into.scheduler.load_state_dict(state["scheduler"])
    into.scaler.load_state_dict(state["scaler"])
    into.stopper.load_state_dict(rest["early_stopping"])
    torch.set_rng_state(state["rng_torch"])
    kind, keys, pos, has_gauss, cached = rest["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = rest["rng_python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng_cuda"])
    return int(rest["epoch"]), load_history(path)


def newest_checkpoint(path: Path) -> Path:
    """The complete checkpoint of the latest epoch among `path` and its sibling `checkpoint_*` directories.

    Ray Train resumes from the latest checkpoint in its snapshot, which is written after the checkpoint
    itself: a run killed in between resumes an epoch too early. A sibling counts when all its files are
    there and readable (a kill during the write leaves it incomplete); `path` itself wins a tie."""
    if not path.name.startswith("checkpoint_"):  # a downloaded copy (remote storage) has no siblings
        return path
    best, best_epoch = path, completed_epoch(path)
    for other in sorted(path.parent.glob("checkpoint_*")):
        epoch = completed_epoch(other)
        if epoch is not None and (best_epoch is None or epoch > best_epoch):
            best, best_epoch = other, epoch
    return best


def completed_epoch(path: Path) -> int | None:
    """The epoch a checkpoint directory holds, or None when it is incomplete or unreadable."""
    if not all((path / name).is_file() for name in (MODEL_FILE, STATE_FILE, HISTORY_FILE)):
        return None
    try:
        epoch = int(json.loads((path / STATE_JSON).read_text())["epoch"])
        json.loads((path / HISTORY_FILE).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch


def load_history(path: str | Path) -> list[dict[str, float]]:
    """Per-epoch metrics stored in a checkpoint directory (every epoch up to that checkpoint)."""
    return json.loads((Path(path) / HISTORY_FILE).read_text())


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
