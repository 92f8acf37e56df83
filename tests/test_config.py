"""Config: loading, dotted overrides, and clear errors for bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lstm_dist.config import ConfigError, PipelineConfig, load_config, parse_overrides

CONF = Path(__file__).resolve().parent.parent / "conf"


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "lstm-dist" in first, f"{path.name} must open with the command that runs it"
    # Every searched key must be a real config key (neuralforecast kept tuning a removed one).
    flat = cfg.flat()
    for key in cfg.tune.space:
        assert key in flat, f"{path.name}: tune.space key '{key}' is not a config key"


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    cfg = load_config(
        CONF / "demo.yaml",
        [
            "train.epochs=3",
            "model.hidden_size=64",
            "data.target_cols=[target]",
            "model.bidirectional=true",
            "tracking.uri=sqlite:///x.db",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.model.hidden_size == 64 and cfg.model.bidirectional is True
    assert cfg.tracking_uri() == "sqlite:///x.db"
    assert parse_overrides(["a.b.c=1", "a.b.d=x"]) == {"a": {"b": {"c": 1, "d": "x"}}}


def test_resolved_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri in earlier tests sets it
    cfg = load_config(write(tmp_path, {"data": {"path": "in.csv"}, "workflow": {"work_dir": "w"}})).resolved(
        base_dir=tmp_path
    )
    assert cfg.data.path == str(tmp_path / "in.csv") and cfg.workflow.work_dir == str(tmp_path / "w")
    assert cfg.tracking_uri() == f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"


def test_tracking_uri_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load_config(CONF / "debug.yaml").tracking_uri() == "http://127.0.0.1:5999"
    assert load_config(CONF / "debug.yaml", ["tracking.uri=sqlite:///a.db"]).tracking_uri() == "sqlite:///a.db"


BAD = [
    # (tree or overrides, fragments the message must contain)
    ({"data": {"sample": {}, "lookbak": 3}}, ["data.lookbak", "Did you mean 'data.lookback'"]),
    ({"data": {"sample": {}}, "trian": {}}, ["'trian'", "Did you mean 'train'"]),
    ({"data": {"sample": {}}, "train": {"precision": "fp8"}}, ["train.precision", '"fp8"', "'fp16'", "'bf16'"]),
    ({"data": {"sample": {}}, "train": {"epochs": 0}}, ["train.epochs", "= 0", "greater than or equal to 1"]),
    ({"data": {"sample": {}}, "model": {"cell": "transformer"}}, ["model.cell", "transformer", "'lstm'", "'gru'"]),
    ({"data": {"sample": {}}, "model": {"hidden_size": "big"}}, ["model.hidden_size", '"big"', "integer"]),
    ({"data": {"sample": {}}, "model": {"dropout": 1.5}}, ["model.dropout", "1.5", "less than 1"]),
    ({"model": {}}, ["missing required key 'data'"]),
    ({"data": {}}, ["data.path", "data.sample"]),
    (
        {"data": {"path": "x.csv", "target_cols": ["a"], "covariate_cols": ["a"]}},
        ["['a']", "both targets and covariates"],
    ),
    ({"data": {"sample": {}}, "model": {"loss": "quantile", "quantiles": [0.1, 0.9]}}, ["model.quantiles", "0.5"]),
    (
        {"data": {"sample": {}}, "tracking": {"promotion_metric": "mape"}},
        ["tracking.promotion_metric", "'mae'", "'rmse'"],
    ),
    ({"data": {"sample": {"num_sries": 3}}}, ["data.sample.num_sries", "Did you mean 'data.sample.num_series'"]),
    (
        {"data": {"sample": {}, "lookback": 12}, "model": {"skip_season": 24}},
        ["model.skip_season=24", "data.lookback=12", "at least 24"],
    ),
    ({"data": {"sample": {}}, "model": {"skip_season": 24, "head": "recursive"}}, ["model.head=direct"]),
    (
        {"data": {"sample": {}}, "model": {"future_effect": "additive", "head": "recursive"}},
        ["model.future_effect=additive", "model.head=direct"],
    ),
    (
        {"data": {"sample": {}, "lookback": 100}, "model": {"segment": 24}},
        ["model.segment=24", "data.lookback=100", "multiple of 24"],
    ),
]


@pytest.mark.parametrize(("tree", "fragments"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_gives_a_clear_error(tmp_path: Path, tree: dict, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, tree))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert str(tmp_path / "c.yaml") in message  # names the file


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.epochs"], "not of the form key=value"),
        (["train..epochs=3"], "not a dotted key"),
        (["train.epochs=[1"], "not valid YAML"),
        (["train.epoch=3"], "Did you mean 'train.epochs'"),
    ],
)
def test_bad_overrides(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONF / "debug.yaml", overrides)
    assert fragment in str(info.value)


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_the_run_summary_names_segments_an_ensemble_and_an_additive_calendar_only_when_set() -> None:
    plain = load_config(CONF / "debug.yaml").summary()
    assert "members" not in plain and "future_effect" not in plain and "segment" not in plain
    hourly = load_config(CONF / "hourly.yaml", ["model.members=3", "model.segment=24"]).summary()
    assert "segment=24 future_effect=additive members=3" in hourly
