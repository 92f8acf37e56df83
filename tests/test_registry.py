"""Registry and promotion on a real sqlite MLflow store: champion / challenger on the same test windows,
failures that never move the champion, `lstm-dist models ...`, and clear errors for bad tracking URIs.

Models here are untrained networks with hand-set outputs (no Ray Train): "good" predicts each series' train
mean, "bad" predicts the mean plus three standard deviations, so which one wins is known in advance.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lstm_dist.config import load_config
from lstm_dist.data.windows import WindowDataset
from lstm_dist.evaluate import evaluate_model
from lstm_dist.models import build_model
from lstm_dist.models.saved import load_model, save_model
from lstm_dist.promotion import RescaledWindows, promote_if_better, same_scaling
from lstm_dist.registry import CHALLENGER, CHAMPION, EVAL_KEY_TAG, Registry
from lstm_dist.serving import history_from_shards, log_forecaster
from lstm_dist.tracking import TrackingError, check_tracking_uri, start_pipeline_run
from lstm_dist.train.checkpoints import model_args_for

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"
SEASON = 24


@pytest.fixture(scope="module")
def shards(ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lstm_dist.data.ingest import ingest

    work = tmp_path_factory.mktemp("registry")
    cfg = load_config(DEBUG, [f"workflow.work_dir={work}"]).resolved()
    ingest(cfg.data, out_dir=str(work / "shards"), work_dir=str(work))
    return work / "shards"


@pytest.fixture(scope="module")
def store(shards: Path) -> dict:
    work = shards.parent
    cfg = load_config(DEBUG, [f"workflow.work_dir={work}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}"])
    return {"cfg": cfg.resolved(), "config_file": _write_config(work, cfg)}


def _write_config(work: Path, cfg) -> Path:
    from lstm_dist.config import dump_yaml

    path = work / "registry.yaml"
    path.write_text("# Run: lstm-dist models list registry.yaml\n" + dump_yaml(cfg))
    return path


def save_net(shards: Path, path: Path, *, bias: float) -> Path:
    """A network whose forecast is `bias` in scaled units everywhere (0 = each series' train mean)."""
    cfg = load_config(DEBUG)
    args = model_args_for(WindowDataset(str(shards), split="train"))
    net = build_model(cfg.model, **args)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        last = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.fill_(bias)
    path.mkdir(parents=True, exist_ok=True)
    save_model(path, model=net, model_args={"model": cfg.model.model_dump(), **args})
    return path


def mae_of(shards: Path, checkpoint: Path) -> float:
    ds = WindowDataset(str(shards), split="test")
    return evaluate_model(load_model(checkpoint), ds, season=SEASON, baselines=False).metrics["model_mae"]


def register(store: dict, shards: Path, *, name: str, bias: float, eval_key: str, tmp: Path):
    """Log + register one model as the pipeline does; returns (version, its test MAE)."""
    ckpt = save_net(shards, tmp / f"{name}-{eval_key}", bias=bias)
    tracker = start_pipeline_run(store["cfg"], run_name=f"{name}-{eval_key}")
    try:
        _, version = log_forecaster(
            tracker,
            checkpoint_dir=ckpt,
            shard_dir=shards,
            input_example=history_from_shards(shards),
            registered_name=name,
            version_tags={EVAL_KEY_TAG: eval_key},
        )
    finally:
        tracker.finish()
    return version, mae_of(shards, ckpt)


def promote(store: dict, shards: Path, *, name: str, version: str, score: float, margin: float = 0.0):
    registry = Registry(store["cfg"].tracking_uri())
    return registry.client, promote_if_better(
        registry,
        name=name,
        version=version,
        metric="mae",
        margin=margin,
        challenger_score=score,
        shard_dir=str(shards),
        season=SEASON,
    )


def aliases(client, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def test_first_model_is_champion_and_a_better_challenger_is_promoted(store, shards, tmp_path) -> None:
    v1, bad = register(store, shards, name="m_better", bias=3.0, eval_key="a", tmp=tmp_path)
    client, first = promote(store, shards, name="m_better", version=v1, score=bad)
    assert first.alias == CHAMPION and first.reason == "first model: champion"
    # The champion's recorded score is tampered with: promotion must re-score it, not trust the tag.
    client.set_model_version_tag("m_better", v1, "test_mae", "0.0001")
    v2, good = register(store, shards, name="m_better", bias=0.0, eval_key="b", tmp=tmp_path)
    assert good < bad
    client, decision = promote(store, shards, name="m_better", version=v2, score=good)
    assert decision.promoted and decision.alias == CHAMPION
    assert aliases(client, "m_better") == {CHAMPION: v2}
    assert decision.champion_score == pytest.approx(bad, rel=1e-5)  # re-scored on the same test windows
    tags = client.get_model_version("m_better", v2).tags
    assert tags["promotion"].startswith("promoted") and "same test windows" in tags["promotion"]
    assert float(tags["promotion.challenger_score"]) == pytest.approx(good, rel=1e-4)
    assert float(tags["promotion.champion_score"]) == pytest.approx(bad, rel=1e-4)
    assert tags["promotion.champion_version"] == v1 and tags["promotion.metric"] == "test_mae"


def test_a_worse_challenger_is_not_promoted(store, shards, tmp_path) -> None:
    v1, good = register(store, shards, name="m_worse", bias=0.0, eval_key="a", tmp=tmp_path)
    promote(store, shards, name="m_worse", version=v1, score=good)
    v2, bad = register(store, shards, name="m_worse", bias=3.0, eval_key="b", tmp=tmp_path)
    client, decision = promote(store, shards, name="m_worse", version=v2, score=bad)
    assert not decision.promoted and decision.alias == CHALLENGER
    assert aliases(client, "m_worse") == {CHAMPION: v1, CHALLENGER: v2}
    tags = client.get_model_version("m_worse", v2).tags
    assert tags["promotion"].startswith(f"kept champion v{v1}")
    assert float(tags["promotion.champion_score"]) == pytest.approx(good, rel=1e-4)


def test_the_margin_must_be_beaten(store, shards, tmp_path) -> None:
    v1, bad = register(store, shards, name="m_margin", bias=3.0, eval_key="a", tmp=tmp_path)
    promote(store, shards, name="m_margin", version=v1, score=bad)
    v2, good = register(store, shards, name="m_margin", bias=0.0, eval_key="b", tmp=tmp_path)
    assert good < bad
    margin = 1 - good / bad + 0.05  # the challenger is better, but by less than the margin
    client, decision = promote(store, shards, name="m_margin", version=v2, score=good, margin=margin)
    assert not decision.promoted and aliases(client, "m_margin")[CHAMPION] == v1
    assert "by " in decision.reason


def test_a_crash_between_register_and_promote_leaves_the_champion(store, shards, tmp_path, monkeypatch) -> None:
    import lstm_dist.promotion as promotion

    v1, bad = register(store, shards, name="m_crash", bias=3.0, eval_key="a", tmp=tmp_path)
    client, _ = promote(store, shards, name="m_crash", version=v1, score=bad)
    # 1. The process dies right after registering a (better) model: nothing has touched the aliases.
    v2, good = register(store, shards, name="m_crash", bias=0.0, eval_key="b", tmp=tmp_path)
    assert aliases(client, "m_crash") == {CHAMPION: v1}
    # 2. Scoring the champion fails: the champion stays, and the challenger says why.
    monkeypatch.setattr(promotion, "score_version", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    _, decision = promote(store, shards, name="m_crash", version=v2, score=good)
    assert not decision.promoted and aliases(client, "m_crash") == {CHAMPION: v1, CHALLENGER: v2}
    assert "could not be scored" in client.get_model_version("m_crash", v2).tags["promotion"]
    # 3. Moving the alias itself fails: still the old champion.
    monkeypatch.undo()
    real = client.__class__.set_registered_model_alias

    def broken(self, name, alias, version):
        if alias == CHAMPION:
            raise ConnectionError("store went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(client.__class__, "set_registered_model_alias", broken)
    with pytest.raises(ConnectionError):
        promote(store, shards, name="m_crash", version=v2, score=good)
    monkeypatch.undo()
    assert aliases(client, "m_crash")[CHAMPION] == v1
    # 4. The rerun registers nothing new (same evaluation) and promotes the better model.
    again, _ = register(store, shards, name="m_crash", bias=0.0, eval_key="b", tmp=tmp_path)
    assert again == v2 and len(client.search_model_versions("name='m_crash'")) == 2
    _, decision = promote(store, shards, name="m_crash", version=v2, score=good)
    assert decision.promoted and aliases(client, "m_crash") == {CHAMPION: v2}


def test_a_champion_with_other_scalers_is_scored_on_the_same_raw_windows(ray_local, shards, tmp_path) -> None:
    """Same raw data, another scaler: the champion's own units are restored before scoring it."""
    from lstm_dist.data.ingest import ingest

    cfg = load_config(DEBUG, [f"workflow.work_dir={shards.parent}", "data.scaler=minmax"]).resolved()
    other = tmp_path / "minmax"
    ingest(cfg.data, out_dir=str(other), work_dir=str(shards.parent))
    # random weights; window_norm off: a window-normalised model forecasts the same whatever the series scaler
    model_cfg = cfg.model.model_copy(update={"window_norm": "none"})
    net = build_model(model_cfg, **model_args_for(WindowDataset(str(shards), split="train")))
    own = WindowDataset(str(shards), split="test")
    theirs = WindowDataset(str(other), split="test")
    assert not same_scaling(own.manifest, theirs.manifest)
    direct = evaluate_model(net, own, season=SEASON).metrics
    rescaled = evaluate_model(net, RescaledWindows(theirs, own.manifest), season=SEASON).metrics
    for key in ("model_mae", "model_rmse", "naive_mae"):
        assert rescaled[key] == pytest.approx(direct[key], rel=1e-4), key
    naive_scaled = evaluate_model(net, theirs, season=SEASON).metrics["model_mae"]  # without the re-scaling
    assert not np.isclose(naive_scaled, direct["model_mae"], rtol=1e-3)


def test_models_commands_list_show_promote_and_rollback(store, shards, tmp_path) -> None:
    from lstm_dist.cli import app

    v1, bad = register(store, shards, name="m_cli", bias=3.0, eval_key="a", tmp=tmp_path)
    promote(store, shards, name="m_cli", version=v1, score=bad)
    v2, good = register(store, shards, name="m_cli", bias=0.0, eval_key="b", tmp=tmp_path)
    client, _ = promote(store, shards, name="m_cli", version=v2, score=good)
    runner = CliRunner()
    config = str(store["config_file"])

    out = runner.invoke(app, ["models", "list", config, "--name", "m_cli"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.split()[:2] == [v2, CHAMPION] for line in lines), out.output
    assert any(line.split()[0] == v1 and "first model" in line for line in lines), out.output

    out = runner.invoke(app, ["models", "show", config, "champion", "--name", "m_cli"])
    assert out.exit_code == 0 and f"m_cli v{v2}" in out.output and "promotion: promoted" in out.output, out.output
    assert "signature:" in out.output and "inputs:" in out.output, out.output  # the signature it promises
    # No version: the champion. A key=value in its place is an override, and reading never creates a store.
    assert runner.invoke(app, ["models", "show", config, "--name", "m_cli"]).output == out.output
    missing = tmp_path / "elsewhere" / "mlflow.db"
    out = runner.invoke(app, ["models", "show", config, f"tracking.uri=sqlite:///{missing}", "--name", "m_cli"])
    assert out.exit_code == 1 and "no MLflow store at" in out.output and "Invalid alias" not in out.output, out.output
    assert not missing.exists()

    out = runner.invoke(app, ["models", "rollback", config, "--name", "m_cli"])
    assert out.exit_code == 0 and f"champion is v{v1} again (was v{v2})" in out.output, out.output
    assert aliases(client, "m_cli")[CHAMPION] == v1

    out = runner.invoke(app, ["models", "promote", config, v2, "--name", "m_cli"])
    assert out.exit_code == 0 and f"champion is v{v2} (was v{v1})" in out.output, out.output
    assert aliases(client, "m_cli") == {CHAMPION: v2}

    out = runner.invoke(app, ["models", "promote", config, "99", "--name", "m_cli"])
    assert out.exit_code == 1 and "has no version 99" in out.output
    out = runner.invoke(app, ["models", "list", config, "--name", "no_such_model"])
    assert out.exit_code == 1 and "no registered model 'no_such_model'" in out.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free, and nothing listens once the socket is closed


@pytest.mark.parametrize(
    ("uri", "fragments"),
    [
        ("nosuch://host/db", ["not one MLflow can use", "sqlite:///", "http://host:port"]),
        ("http://127.0.0.1:{port}", ["cannot reach the MLflow server", "mlflow server"]),
        ("sqlite:////proc/no/such/mlflow.db", ["cannot create the folder of the sqlite store"]),
    ],
    ids=["unknown-scheme", "nothing-listening", "unwritable-sqlite"],
)
def test_bad_tracking_uris_give_clear_errors_fast(uri: str, fragments: list[str]) -> None:
    import time

    uri = uri.format(port=_closed_port())
    started = time.perf_counter()
    with pytest.raises(TrackingError) as err:
        check_tracking_uri(uri)
    assert time.perf_counter() - started < 15  # not MLflow's minutes of retries
    for fragment in [uri, *fragments]:
        assert fragment in str(err.value), str(err.value)
    assert "tracking.uri or MLFLOW_TRACKING_URI" in str(err.value)
