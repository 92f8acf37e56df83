"""lstm_dist: distributed training, tuning, tracking and retraining of LSTM forecasters on Ray and MLflow."""

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_WORKFLOWS = ("train.py", "retrain.py", "backtest.py")


def _pipelines_folder() -> Path | None:
    """Where the workflows are when they are not installed inside this package (a checkout, or a Ray job's
    py_modules): the folder pipelines/ beside this package, else a top-level `pipelines` that holds them."""
    sibling = Path(__file__).resolve().parent.parent / "pipelines"
    if all((sibling / name).is_file() for name in _WORKFLOWS):
        return sibling
    spec = importlib.util.find_spec("pipelines")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent
        if all((folder / name).is_file() for name in _WORKFLOWS):
            return folder
    return None


def _register_pipelines() -> None:
    """The wheel installs pipelines/ as lstm_dist.pipelines; in a checkout the folder stays at the top level
    (the project's layout). Register that folder under the same name, so `lstm_dist.pipelines.train` means this
    checkout's workflows wherever this package is imported from (never another copy's)."""
    name = f"{__name__}.pipelines"
    if name in sys.modules or (Path(__file__).resolve().parent / "pipelines" / "__init__.py").is_file():
        return
    folder = _pipelines_folder()
    if folder is None:
        return
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


_register_pipelines()
