"""lstm_dist: distributed training, tuning, tracking and retraining of LSTM forecasters on Ray and MLflow.

The Python API (lstm_dist/api.py) is loaded on first use, so `import lstm_dist` stays light (no Ray, torch
or MLflow):

    cfg = lstm_dist.load_config("conf/demo.yaml", overrides=["train.epochs=3"])
    result = lstm_dist.run(cfg, data=df)
    fc = lstm_dist.forecast("models:/lstm_demo@champion", history_df, tracking_uri=result.tracking_uri)
"""

import importlib.util
import os
import sys
from pathlib import Path

from lstm_dist.version import __version__ as __version__  # re-exported

_WORKFLOWS = ("train.py", "retrain.py", "backtest.py")
_API = (
    "load_config",
    "run",
    "backtest",
    "forecast",
    "read_metadata",
)  # the functions of lstm_dist/api.py, exported here


def __getattr__(name: str):
    """`lstm_dist.run` and the other API functions, importing lstm_dist.api on first use (PEP 562)."""
    if name in _API:
        from lstm_dist import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


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
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


# Nothing leaves the machine unless the user says so: MLflow's and Ray's usage telemetry are on by default (MLflow
# fetches a config from config.mlflow-telemetry.io at import and sends usage events; a Ray cluster's API server
# reports to usage-stats.ray.io hourly). Off for this process and what it starts (a local Ray, `mlflow server`,
# CLI subprocesses), set before MLflow is imported; a value the user exported wins (README, Security).
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def _telemetry_off() -> None:
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


_telemetry_off()
_register_pipelines()
