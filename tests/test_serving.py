"""The pyfunc forecaster: raw long-format history in, forecasts in original units out; the same numbers
in-process, in a fresh Python process, and from `mlflow models serve` over REST."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from http_wait import free_port, stop_server, wait_until_up

from lstm_dist.config import load_config
from lstm_dist.data.windows import WindowDataset
from lstm_dist.evaluate import evaluate_model
from lstm_dist.models import build_model
from lstm_dist.models.saved import MODEL_FILE, load_model, save_model
from lstm_dist.registry import SHA256_TAGS, Registry, RegistryError
from lstm_dist.serving import ForecastModel, history_from_shards, log_forecaster, model_card
from lstm_dist.tracking import start_pipeline_run
from lstm_dist.train.checkpoints import model_args_for

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"
NAME = "serving_test"


def make_model(work: Path, overrides: list[str]) -> tuple[object, Path, Path]:
    """Shards of the debug data and an (untrained, seeded) network over them: (cfg, shard dir, checkpoint)."""
    from lstm_dist.data.ingest import ingest

    cfg = load_config(DEBUG, [f"workflow.work_dir={work}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", *overrides])
    cfg = cfg.resolved()
    shards = work / "shards"
    ingest(cfg.data, out_dir=str(shards), work_dir=str(work))
    torch.manual_seed(0)
    args = model_args_for(WindowDataset(str(shards), split="train"))
    net = build_model(cfg.model, **args)
    ckpt = work / "ckpt"
    ckpt.mkdir()
    save_model(ckpt, model=net, model_args={"model": cfg.model.model_dump(), **args})
    return cfg, shards, ckpt


@pytest.fixture(scope="module")
def registered(ray_local, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A quantile forecaster (so there are intervals) logged and registered in a sqlite store."""
    work = tmp_path_factory.mktemp("serving")
    cfg, shards, ckpt = make_model(
        work, ["model.loss=quantile", "model.quantiles=[0.1, 0.5, 0.9]", f"tracking.model_name={NAME}"]
    )
    evaluation = evaluate_model(load_model(ckpt), WindowDataset(str(shards), split="test"), season=24)
    card = model_card(cfg, shard_dir=shards, scores=evaluation.table(), refit=False)
    tracker = start_pipeline_run(cfg, run_name="serving")
    try:
        uri, version = log_forecaster(
            tracker,
            checkpoint_dir=ckpt,
            shard_dir=shards,
            input_example=history_from_shards(shards),
            registered_name=NAME,
            description=card,
        )
    finally:
        tracker.finish()
    local = ForecastModel()
    local.load_artifacts({"model": str(ckpt / MODEL_FILE), "manifest": str(shards / "manifest.json")})
    history = history_from_shards(shards, num_series=4, extra_rows=30)
    return {
        "cfg": cfg,
        "work": work,
        "uri": uri,
        "version": version,
        "local": local,
        "history": history,
        "metrics": evaluation.metrics,
    }


def test_a_model_with_a_local_time_zone_is_logged_and_reads_local_wall_clock_time(ray_local, tmp_path) -> None:
    """data.timezone other than UTC: the input example (and so the signature) holds naive local times, which
    MLflow accepts and the model reads as local time; the pyfunc forecasts what the model does in-process."""
    import mlflow.pyfunc

    cfg, shards, ckpt = make_model(tmp_path, ["data.timezone=Asia/Tokyo", "tracking.model_name=serving_tz"])
    example = history_from_shards(shards)
    tracker = start_pipeline_run(cfg, run_name="serving_tz")
    try:
        uri, _ = log_forecaster(
            tracker, checkpoint_dir=ckpt, shard_dir=shards, input_example=example, registered_name=None
        )
    finally:
        tracker.finish()
    assert example["timestamp"].dt.tz is None
    last = example["timestamp"].iloc[-1]
    served = mlflow.pyfunc.load_model(uri).predict(example)
    local = ForecastModel()
    local.load_artifacts({"model": str(ckpt / MODEL_FILE), "manifest": str(shards / "manifest.json")})
    direct = local.forecast(example)
    assert served["target"].to_numpy() == pytest.approx(direct["target"].to_numpy())
    assert served["timestamp"].iloc[0] == last.tz_localize("Asia/Tokyo") + pd.Timedelta(hours=1)


def test_the_version_describes_its_data_scores_and_how_to_load_it(registered) -> None:
    version = Registry(registered["cfg"].tracking_uri()).version(NAME, registered["version"])
    card = version.description
    assert f"{registered['metrics']['model_mase']:.4f}" in card and "seasonal naive" in card  # held-out vs baselines
    assert "series from" in card and f"models:/{NAME}/{registered['version']}" in card  # data; load line filled in


def test_downloads_are_private_keyed_by_the_registered_checksum_and_checked(registered, tmp_path, monkeypatch) -> None:
    import stat

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LSTM_DIST_CACHE", raising=False)
    registry = Registry(registered["cfg"].tracking_uri())
    files = registry.download(registered["uri"])
    mv = registry.version(NAME, registered["version"])
    sha = hashlib.sha256(files.weights.read_bytes()).hexdigest()
    assert sha == mv.tags[SHA256_TAGS[MODEL_FILE]] and sha[:16] in files.directory.name
    cache = tmp_path / "cache" / "lstm_dist" / "models"
    assert files.directory.parent == cache and stat.S_IMODE(cache.stat().st_mode) == 0o700
    # A planted (or damaged) cached file is not used: the download is made again.
    good = files.weights.read_bytes()
    files.weights.write_bytes(b"planted")
    assert registry.download(registered["uri"]).weights.read_bytes() == good
    # An artifact changed in the store after registration is refused, not loaded.
    stored = next(
        Path(urllib.parse.urlparse(registry.client.get_model_version_download_uri(NAME, mv.version)).path).rglob(
            MODEL_FILE
        )
    )
    shutil.rmtree(files.directory)
    stored.write_bytes(b"planted")
    try:
        with pytest.raises(RegistryError, match="differ from the sha256 recorded when it was registered"):
            registry.download(registered["uri"])
    finally:
        stored.write_bytes(good)
    assert not files.directory.exists()


def test_forecasts_are_in_original_units_with_intervals(registered) -> None:
    history, pred = registered["history"], registered["local"].forecast(registered["history"])
    assert list(pred.columns)[:4] == ["series_id", "timestamp", "step", "target"]
    assert {"target_q0.1", "target_q0.9"} <= set(pred.columns)
    assert len(pred) == 4 * 12 and sorted(pred["step"].unique()) == list(range(1, 13))
    for sid, group in pred.groupby("series_id"):
        last = history[history["series_id"] == sid]["timestamp"].max()
        assert group["timestamp"].min() == last + pd.Timedelta(hours=1)  # the step after the history
        assert (group["target_q0.1"] <= group["target_q0.9"]).all()


def test_the_signature_and_input_example_are_logged(registered) -> None:
    import mlflow

    mlflow.set_tracking_uri(registered["cfg"].tracking_uri())
    info = mlflow.models.get_model_info(registered["uri"])
    inputs = {c["name"]: c["type"] for c in info.signature.inputs.to_dict()}
    outputs = {c["name"] for c in info.signature.outputs.to_dict()}
    assert inputs == {"timestamp": "datetime", "series_id": "string", "target": "double", "temperature": "double"}
    assert {"target", "target_q0.1", "target_q0.9", "step"} <= outputs
    assert info.saved_input_example_info is not None


def test_a_fresh_process_with_only_the_package_predicts_the_same(registered, tmp_path: Path) -> None:
    registered["history"].to_parquet(tmp_path / "history.parquet")
    script = f"""
import mlflow, pandas as pd
mlflow.set_tracking_uri({registered["cfg"].tracking_uri()!r})
model = mlflow.pyfunc.load_model("models:/{NAME}/{registered["version"]}")
model.predict(pd.read_parquet("history.parquet")).to_parquet("pred.parquet")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = registered["local"].forecast(registered["history"])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "pred.parquet"), expected, check_dtype=False)


def test_mlflow_models_serve_answers_like_predict(registered, tmp_path: Path) -> None:
    port = free_port()
    # `mlflow models serve` runs `uvicorn` by name: the environment's bin directory must be on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": registered["cfg"].tracking_uri()}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/{registered['version']}"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ping", process=server, log=(tmp_path / "serve.log").read_text, timeout=180)
        history = registered["history"].copy()
        history["timestamp"] = history["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")  # JSON has no datetimes
        body = json.dumps({"dataframe_split": history.to_dict(orient="split")}).encode()
        request = urllib.request.Request(
            f"{base}/invocations", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = pd.DataFrame(json.loads(reply.read())["predictions"])
    finally:
        stop_server(server, log)
    expected = registered["local"].forecast(registered["history"])
    assert list(answer["series_id"]) == list(expected["series_id"])
    assert list(pd.to_datetime(answer["timestamp"])) == list(expected["timestamp"])
    for col in ("step", "target", "target_q0.1", "target_q0.9"):
        np.testing.assert_allclose(answer[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-5, err_msg=col)


def test_known_future_covariates_come_as_rows_with_empty_targets(ray_local, tmp_path: Path) -> None:
    """With data.future_cols the input carries each series' next `horizon` rows, targets left empty."""
    cfg, shards, ckpt = make_model(tmp_path, ["data.covariate_cols=[]", "data.future_cols=[temperature]"])
    model = ForecastModel()
    model.load_artifacts({"model": str(ckpt / MODEL_FILE), "manifest": str(shards / "manifest.json")})
    frame = history_from_shards(shards, num_series=2)
    future = frame[frame["target"].isna()]
    assert len(future) == 2 * 12  # the example holds the known future of each series
    pred = model.forecast(frame)
    assert len(pred) == 2 * 12 and pred["target"].notna().all()
    for sid, group in pred.groupby("series_id"):
        assert list(group["timestamp"]) == list(future[future["series_id"] == sid]["timestamp"])
    # The forecast depends on those future values.
    changed = frame.copy()
    changed.loc[changed["target"].isna(), "temperature"] += 10.0
    assert not np.allclose(model.forecast(changed)["target"], pred["target"])
    # Without them: a clear error that says what to pass.
    with pytest.raises(Exception, match="future"):
        model.forecast(frame[frame["target"].notna()])
