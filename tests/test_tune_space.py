"""Search spaces from the config: what is accepted, what is refused (before Ray starts), and how it is applied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_dist.config import ConfigError, load_config
from lstm_dist.tune import apply_params, final_config, max_concurrent, parse_space, trial_config

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"


# One key of each distribution.
EVERY_DISTRIBUTION = (
    "{model.hidden_size: {choice: [8, 16]}, model.num_layers: {randint: [1, 3]},"
    " model.dropout: {uniform: [0.0, 0.3]}, train.lr: {loguniform: [1e-4, 1e-2]},"  # 1e-4: YAML reads a string
    " train.batch_size: {quniform: [32, 128, 32]}}"
)


def space(text: str, *overrides: str):
    return load_config(DEBUG, [f"tune.space={text}", *overrides])


def test_every_distribution_parses_into_a_tune_domain() -> None:
    cfg = space(EVERY_DISTRIBUTION)
    params = {p.key: p for p in parse_space(cfg)}
    assert [p.kind for p in params.values()] == ["choice", "randint", "uniform", "loguniform", "quniform"]
    assert params["train.lr"].args == [1e-4, 1e-2]
    domains = {k: p.domain() for k, p in params.items()}
    for key, domain in domains.items():
        for _ in range(20):
            value = domain.sample()
            apply_params(cfg, {key: value})  # every sample makes a valid config
    assert all(1 <= domains["model.num_layers"].sample() < 3 for _ in range(50))  # high excluded, like range()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("{model.hiden_size: {choice: [8]}}", ["'model.hiden_size' is not a config key", "model.hidden_size"]),
        ("{train.lr: {logunifrom: [1.0e-4, 1.0e-2]}}", ["unknown distribution 'logunifrom'", "loguniform"]),
        ("{train.lr: 0.1}", ["one distribution per key", "choice", "quniform"]),
        ("{train.lr: {loguniform: [0, 1.0e-2]}}", ["0 < low"]),
        ("{train.lr: {uniform: [0.1, 0.01]}}", ["low < high"]),
        ("{train.lr: {uniform: [0.1]}}", ["uniform takes a list [low, high]"]),
        ("{model.hidden_size: {uniform: [8, 64]}}", ["takes integers", "randint", "quniform"]),
        ("{model.dropout: {choice: [0.1, 1.5]}}", ["1.5", "model.dropout", "less than 1"]),
        ("{model.cell: {choice: [lstm, tcn]}}", ["'tcn'", "model.cell"]),
        ("{data.lookback: {choice: [24, 48]}}", ["only model.*, train.* keys"]),
        ("{train.num_workers: {choice: [1, 2]}}", ["tune.workers_per_trial"]),
        ("{train.epochs: {randint: [1, 5]}}", ["ASHA's budget"]),
        ("{train.batch_size: {quniform: [32, 128, 0]}}", ["q > 0"]),
        ("{}", ["tune.space is empty"]),
    ],
)
def test_bad_search_spaces_name_the_key_and_what_is_valid(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(space(text))
    message = str(err.value)
    assert message.startswith("invalid search space")
    for fragment in fragments:
        assert fragment in message, message


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(space("{model.hiden_size: {choice: [8]}, train.lr: {logunifrom: [1, 2]}}"))
    assert "hiden_size" in str(err.value) and "logunifrom" in str(err.value)


def test_asha_grace_period_beyond_the_budget_is_refused() -> None:
    cfg = load_config(DEBUG, ["tune.space={train.lr: {choice: [0.01]}}", "tune.grace_period=5", "train.epochs=2"])
    with pytest.raises(ConfigError, match="grace_period=5 exceeds train.epochs=2"):
        parse_space(cfg)


def test_quniform_samples_become_ints_and_trials_use_workers_per_trial() -> None:
    cfg = load_config(DEBUG, ["tune.workers_per_trial=3"])
    trial = trial_config(cfg, {"train.batch_size": 96.0, "model.dropout": 0.25})
    assert trial.train.batch_size == 96 and isinstance(trial.train.batch_size, int)
    assert trial.model.dropout == 0.25 and trial.train.num_workers == 3
    assert cfg.train.batch_size == 64  # the base config is left alone
    assert cfg.train.backend == "local" and trial.train.backend == "ray"  # 3 workers: DDP on Ray Train
    assert trial_config(load_config(DEBUG), {}).train.backend == "local"  # 1 worker: in the trial's process


def test_final_config_trains_the_best_epochs_without_early_stopping() -> None:
    cfg = load_config(DEBUG, ["tune.enabled=true", "train.patience=5", "train.epochs=10"])
    final = final_config(cfg, {"model.hidden_size": 32}, epochs=4)
    assert final.model.hidden_size == 32 and final.train.epochs == 4 and final.train.patience == 0
    assert final.tune.enabled is False and final.train.keep_checkpoints >= 4


def test_concurrency_follows_the_cluster_unless_set() -> None:
    cfg = load_config(DEBUG, ["tune.workers_per_trial=2", "tune.num_samples=8"])
    assert max_concurrent(cfg, {"CPU": 8}, gpu=False) == 4
    assert max_concurrent(cfg, {"CPU": 64, "GPU": 4}, gpu=True) == 2  # GPUs are the limit
    assert max_concurrent(cfg, {"CPU": 1}, gpu=False) == 1
    cfg = load_config(DEBUG, ["tune.max_concurrent_trials=3"])
    assert max_concurrent(cfg, {"CPU": 64}, gpu=False) == 3


def test_optuna_suggests_valid_configs_from_every_distribution() -> None:
    """What Tune does with the searcher: hand it the space, ask for trials (optuna is in the dev extra)."""
    from lstm_dist.tune import METRIC, MODE, _search_alg

    cfg = space(EVERY_DISTRIBUTION, "tune.search=optuna")
    searcher = _search_alg(cfg, max_concurrent=2)
    assert type(searcher).__name__ == "OptunaSearch"
    assert searcher.set_search_properties(METRIC, MODE, {p.key: p.domain() for p in parse_space(cfg)})
    for i in range(8):
        trial = searcher.suggest(f"t{i}")
        assert set(trial) == {"model.hidden_size", "model.num_layers", "model.dropout", "train.lr", "train.batch_size"}
        applied = trial_config(cfg, trial)
        assert applied.model.hidden_size in (8, 16) and applied.model.num_layers in (1, 2)
        assert 0.0 <= applied.model.dropout <= 0.3 and 1e-4 <= applied.train.lr <= 1e-2
        assert applied.train.batch_size in (32, 64, 96, 128)
        searcher.on_trial_complete(f"t{i}", {METRIC: float(i)})


def test_optuna_search_without_optuna_names_the_extra_and_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstm_dist.config import ConfigError
    from lstm_dist.tune import _search_alg

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError, installed or not
    with pytest.raises(ConfigError, match=r"pip install 'lstm_dist\[optuna\]' \(or set tune\.search=random\)"):
        _search_alg(load_config(DEBUG, ["tune.search=optuna"]), max_concurrent=2)


def test_cli_refuses_a_bad_space_before_starting_ray(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ADDRESS": "", "MLFLOW_TRACKING_URI": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lstm_dist.cli",
            "tune",
            str(DEBUG),
            "tune.space={model.hiden_size: {choice: [8, 16]}}",
            f"workflow.work_dir={tmp_path / 'w'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "'model.hiden_size' is not a config key. Did you mean 'model.hidden_size'?" in proc.stderr
    assert "[ray]" not in proc.stdout and not (tmp_path / "w").exists()


def test_trainval_view_folds_validation_into_train(ray_local, tmp_path: Path) -> None:
    """The final training's shards: train + validation (and the windows across their boundary), same test."""
    from lstm_dist.data.ingest import ingest
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.tune import trainval_view

    cfg = load_config(DEBUG, [f"workflow.work_dir={tmp_path}"]).resolved()
    ingest(cfg.data, out_dir=str(tmp_path / "shards"), work_dir=str(tmp_path))
    view = trainval_view(tmp_path / "shards", tmp_path / "view")
    splits = ("train", "val", "test")
    sizes = {d: {s: len(WindowDataset(str(tmp_path / d), split=s)) for s in splits} for d in ("shards", "view")}
    before, after = sizes["shards"], sizes["view"]
    assert after["val"] == 0 and after["test"] == before["test"]
    assert after["train"] > before["train"] + before["val"]  # plus the windows that straddled the boundary
    own, viewed = WindowDataset(str(tmp_path / "shards"), split="test"), WindowDataset(str(view), split="test")
    idx = np.arange(len(own))
    np.testing.assert_array_equal(own.batch(idx)["x"], viewed.batch(idx)["x"])  # same scaling, same windows
    assert (view / "shard-00000.arrow").stat().st_ino == (tmp_path / "shards" / "shard-00000.arrow").stat().st_ino


def test_plots_are_written(tmp_path: Path) -> None:
    import pandas as pd

    from lstm_dist import plots

    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95]})
    history["val_mae"], history["val_rmse"] = [3.0, 2.0, 2.1], [4.0, 3.0, 3.2]
    folded = history.assign(val_loss=float("nan"))  # the final training after a search has no validation
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b"],
            "best_val_loss": [0.9, 1.3],
            "stopped": ["no", "scheduler"],
            "history": [{"epoch": [1, 2, 3], "val_loss": [1.1, 1.0, 0.9]}, {"epoch": [1], "val_loss": [1.3]}],
        }
    )
    paths = [
        plots.loss_curves(history, tmp_path / "a.png"),
        plots.loss_curves(folded, tmp_path / "b.png"),
        plots.error_by_horizon(np.linspace(1, 2, 12), tmp_path / "c.png", metrics={"naive_mae": 2.5, "model_mae": 1.5}),
        plots.tune_trials(trials, tmp_path / "d.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
