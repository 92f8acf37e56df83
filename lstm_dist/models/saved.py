"""The saved-model file (`model.pt`): the network's tensors, and the arguments that rebuild it as JSON beside them.

One file, read by training (warm start, resume), evaluation, serving and prediction, always with
`torch.load(weights_only=True)`: a downloaded model cannot run code when it is opened. The build arguments
are kept as one JSON string in the file, so saving fails at once on anything the safe loader would refuse
later (a numpy scalar, an object) instead of a model that cannot be opened after registration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_dist.config import ModelConfig

if TYPE_CHECKING:
    import torch

    from lstm_dist.models.forecaster import Forecaster

MODEL_FILE = "model.pt"


def model_file(path: str | Path) -> Path:
    """The model.pt of a checkpoint directory, or `path` itself when it is the file."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def save_model(path: str | Path, *, model: torch.nn.Module, model_args: dict[str, Any]) -> Path:
    """Write `model.pt` into the directory `path` (or to the file `path`); returns the file."""
    import torch  # here, not at the top: the registry reads MODEL_FILE without paying for torch

    path = Path(path)
    target = path / MODEL_FILE if path.is_dir() else path
    torch.save({"model_args": json.dumps(model_args), "state_dict": model.state_dict()}, target)
    return target


def _read(path: str | Path, *, device: str = "cpu") -> dict[str, Any]:
    import torch

    saved = torch.load(model_file(path), map_location=device, weights_only=True)
    args = saved["model_args"]
    # Files written before the JSON form hold a dict of plain values, which the safe loader reads too.
    saved["model_args"] = json.loads(args) if isinstance(args, str) else dict(args)
    return saved


def read_model_args(path: str | Path) -> dict[str, Any]:
    """The arguments a saved model was built with ({"model": model config, plus data-dependent sizes})."""
    return _read(path)["model_args"]


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load the weights of a checkpoint directory or model.pt into `model` (same architecture and sizes)."""
    model.load_state_dict(_read(path)["state_dict"])


def saved_config(model_args: dict[str, Any]) -> ModelConfig:
    """The model config of saved build arguments; a key the file lacks (saved before it existed) takes the value
    that reproduces the network as it was saved, or the default."""
    # Models saved before window normalisation (or its prior) existed ran without it; new defaults must not apply.
    return ModelConfig.model_validate({"window_norm": "none", "window_prior_steps": 0.0, **model_args["model"]})


def same_build(saved: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether saved build arguments and wanted ones give the same network (so its weights load into it), with the
    keys a model saved before them lacks read as `saved_config` reads them."""

    def plain(args: dict[str, Any]) -> str:
        return json.dumps({**args, "model": saved_config(args).model_dump()}, sort_keys=True, default=str)

    return plain(saved) == plain(wanted)


def load_model(path: str | Path, *, device: str = "cpu") -> Forecaster:
    """Rebuild the trained network from a checkpoint directory (or a copy of its model.pt)."""
    from lstm_dist.models.forecaster import build_model

    saved = _read(path, device=device)
    args = dict(saved["model_args"])
    model_cfg = saved_config(args)
    del args["model"]
    model = build_model(model_cfg, **args)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()
