"""The baseline gate: a model whose test MASE does not beat the seasonal naive's is registered but never crowned
(first model included) unless allowed; retrain applies the same gate. Real sqlite MLflow; the end-to-end test
runs the real pipelines on a local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstm_dist.config import load_config
from lstm_dist.promotion import BELOW_BASELINE, baseline_gate, promote_if_better
from lstm_dist.registry import CHALLENGER, CHAMPION, Registry

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.client.create_registered_model("m")
    return registry


def _alias(registry: Registry, alias: str) -> str | None:
    found = registry.alias_version("m", alias)
    return str(found.version) if found is not None else None


def _promote(registry: Registry, tmp_path: Path, *, model_mase: float, snaive_mase: float, allow: bool = False):
    version = str(registry.client.create_model_version("m", source=str(tmp_path)).version)
    gate = baseline_gate({"model_mase": model_mase, "snaive_mase": snaive_mase}, margin=0.0, allow_below=allow)
    decision = promote_if_better(
        registry,
        name="m",
        version=version,
        metric="mae",
        margin=0.0,
        challenger_score=1.0,
        shard_dir=None,
        season=24,
        gate=gate,
    )
    return version, decision, registry.version("m", version).tags


def test_a_first_model_worse_than_seasonal_naive_is_not_crowned(registry, tmp_path: Path) -> None:
    version, decision, tags = _promote(registry, tmp_path, model_mase=1.5, snaive_mase=1.2)
    assert not decision.promoted and decision.alias == CHALLENGER
    assert _alias(registry, CHAMPION) is None and _alias(registry, CHALLENGER) == version
    assert "1.5" in tags[BELOW_BASELINE] and "1.2" in tags[BELOW_BASELINE]
    assert tags["baseline.passed"] == "false" and "below baseline" in tags["promotion"]
    assert "--allow-below-baseline" in decision.reason


def test_the_gate_keeps_the_champion_and_can_be_overridden(registry, tmp_path: Path) -> None:
    first, decision, tags = _promote(registry, tmp_path, model_mase=0.8, snaive_mase=1.2)
    assert decision.promoted and _alias(registry, CHAMPION) == first and BELOW_BASELINE not in tags
    second, decision, _ = _promote(registry, tmp_path, model_mase=1.3, snaive_mase=1.2)
    assert not decision.promoted and _alias(registry, CHAMPION) == first and _alias(registry, CHALLENGER) == second
    assert f"champion v{first} kept" in decision.reason


def test_allow_below_baseline_crowns_it_and_keeps_the_tag(registry, tmp_path: Path) -> None:
    version, decision, tags = _promote(registry, tmp_path, model_mase=1.5, snaive_mase=1.2, allow=True)
    assert decision.promoted and _alias(registry, CHAMPION) == version
    assert BELOW_BASELINE in tags and tags["baseline.allowed_below"] == "true"
    assert decision.reason.startswith("first model") and "below baseline" in decision.reason


def test_the_margin_is_relative_and_nan_never_passes() -> None:
    assert baseline_gate({"model_mase": 0.95, "snaive_mase": 1.0}, margin=0.0, allow_below=False).passed
    assert not baseline_gate({"model_mase": 0.95, "snaive_mase": 1.0}, margin=0.1, allow_below=False).passed
    assert not baseline_gate({"model_mase": 0.5}, margin=0.0, allow_below=False).passed  # no baseline score


@pytest.mark.slow
def test_pipeline_gate_override_and_retrain(ray_local, tmp_path: Path) -> None:
    """A deliberately bad model (one epoch at lr 1e-6) on the seasonal sample data: registered, tagged, not
    champion; `run --allow-below-baseline` crowns that same version; a retrain's bad challenger leaves it."""
    import mlflow
    from lstm_dist.pipelines import retrain
    from lstm_dist.pipelines import train as train_pipeline

    from lstm_dist.cli import app

    bad = [
        f"workflow.work_dir={tmp_path / 'w'}",
        "train.epochs=1",
        "train.lr=1e-6",
        "tracking.allow_below_baseline=false",
        "tracking.model_name=gate",
    ]
    cfg = load_config(DEBUG, bad).resolved()
    summary = train_pipeline.run(cfg, progress=lambda *_: None)
    client = mlflow.MlflowClient(cfg.tracking_uri())
    m = summary.metrics
    assert m["test_model_mase"] > m["test_snaive_mase"]  # the premise: worse than the seasonal naive
    assert summary.version == "1" and summary.alias == CHALLENGER
    tags = client.get_model_version("gate", "1").tags
    assert BELOW_BASELINE in tags and f"{m['test_model_mase']:.6g}" in tags[BELOW_BASELINE]
    assert _alias_of(client, CHAMPION) is None

    out = CliRunner().invoke(app, ["run", str(DEBUG), *bad, "--allow-below-baseline"])
    assert out.exit_code == 0, out.output
    assert "alias: champion" in out.output and _alias_of(client, CHAMPION) == "1"  # the same version, crowned

    worse = load_config(DEBUG, [*bad, "train.lr=2e-6"]).resolved()
    decided = retrain.run(worse, force={"train"}, progress=lambda *_: None)
    assert decided.decision == retrain.BELOW_BASELINE and decided.challenger_version == "2"
    assert _alias_of(client, CHAMPION) == "1" and _alias_of(client, CHALLENGER) == "2"
    assert BELOW_BASELINE in client.get_model_version("gate", "2").tags


def _alias_of(client, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias("gate", alias).version)
    except MlflowException:
        return None
