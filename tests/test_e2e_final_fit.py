"""End to end: the registered model is refit on all rows, and forecasts from a cutoff with known-future rows.

Two pipeline runs of conf/debug.yaml with a known-future column (temperature) on an input with columns the
model does not use; the second run's input differs from the first only in the last `horizon` targets of
every series, which no held-out training (train/val) sees: the evaluated models come out identical, the
registered (refit) ones do not. Real local Ray and a real sqlite MLflow store, through the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_e2e import ROOT, cli

from lstm_dist.data.synthetic import generate_sample
from lstm_dist.predict import PredictError, predict
from lstm_dist.serving import ForecastModel

pytestmark = pytest.mark.slow
HORIZON = 12


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("final_fit")
    first = generate_sample(num_series=4, num_steps=400).to_pandas()
    first["note"], first["spare"] = "not used", 1.0  # columns of the input that the model does not use
    second = first.copy()
    tail = second.groupby("series_id").cumcount(ascending=False) < HORIZON
    second.loc[tail, "target"] += 500.0
    procs = []
    for name, frame in (("a", first), ("b", second)):
        (work / name).mkdir()
        frame.to_parquet(work / name / "input.parquet")
        args = [f"workflow.work_dir={work / 'w'}", f"data.path={work / name}", "data.covariate_cols=[]"]
        proc = cli(
            "run",
            str(ROOT / "conf/debug.yaml"),
            *args,
            "data.future_cols=[temperature]",
            "train.final_fit=true",
            cwd=work,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        procs.append(proc)
    return {"work": work, "uri": f"sqlite:///{work / 'w' / 'mlflow.db'}", "frames": (first, second), "procs": procs}


def _load(uri: str, version: int):
    """The version's pyfunc, from its own artifact location: mlflow.set_tracking_uri would export
    MLFLOW_TRACKING_URI, which `lstm-dist submit` forwards to jobs of later tests (tests/test_jobs.py)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return mlflow.pyfunc.load_model(client.get_model_version_download_uri("lstm_debug", str(version)))


def test_the_registered_model_was_refit_on_the_last_rows(two_runs) -> None:
    import mlflow

    assert all("[final_fit] done" in p.stdout for p in two_runs["procs"])
    client = mlflow.MlflowClient(tracking_uri=two_runs["uri"])
    for version in ("1", "2"):
        tags = client.get_model_version("lstm_debug", version).tags
        assert tags["refit"] == "true" and tags["refit.rows"] == str(4 * 400)
        assert int(tags["refit.epochs"]) in (1, 2) and "promotion" in tags
    first, _ = two_runs["frames"]
    cut = first["timestamp"].max() - pd.Timedelta(hours=HORIZON)  # the rows after it give the known future
    models = [_load(two_runs["uri"], v).unwrap_python_model() for v in (1, 2)]
    refit = [m.forecast(first, as_of=cut) for m in models]
    held = []
    for m in models:
        evaluated = ForecastModel()
        evaluated.net, evaluated.manifest = m.heldout_net, m.manifest
        held.append(evaluated.forecast(first, as_of=cut))
    # The evaluated models never saw the changed rows: same weights, same forecast ...
    pd.testing.assert_frame_equal(held[0], held[1])
    # ... the registered ones trained on them.
    assert not np.allclose(refit[0]["target"], refit[1]["target"])


def test_the_final_fit_has_its_own_epoch_lines(two_runs) -> None:
    epochs = [line.split(" train_loss=")[0] for line in two_runs["procs"][0].stdout.splitlines() if "] epoch " in line]
    assert epochs[:2] == ["[train] epoch 1/2", "[train] epoch 2/2"] and epochs[2:], epochs
    assert all(e.startswith("[final_fit] epoch ") for e in epochs[2:]), epochs
    lines = [line for line in two_runs["procs"][0].stdout.splitlines() if "] epoch " in line]
    # The held-out run reports its validation; the final fit has none to report (no "val_loss=nan").
    assert all("val_loss=" in line for line in lines[:2]) and not any("val_" in line for line in lines[2:]), lines


def test_the_signature_lists_only_the_used_columns(two_runs) -> None:
    info = _load(two_runs["uri"], 2).metadata
    inputs = {c["name"] for c in info.signature.inputs.to_dict()}
    assert inputs == {"timestamp", "series_id", "target", "temperature"}
    assert [p.name for p in info.signature.params] == ["as_of"]


def test_predict_needs_and_checks_the_future_rows(two_runs, tmp_path: Path) -> None:
    work, uri = two_runs["work"], two_runs["uri"]
    _, history = two_runs["frames"]
    last = history["timestamp"].max()
    steps = pd.date_range(last + pd.Timedelta(hours=1), periods=HORIZON, freq="h")
    future = pd.DataFrame(
        [(s, t, 15.0 + i) for s in sorted(history["series_id"].unique()) for i, t in enumerate(steps)],
        columns=["series_id", "timestamp", "temperature"],
    )
    future.to_csv(tmp_path / "future.csv", index=False)
    future[future["series_id"] != "s003"].to_parquet(tmp_path / "short.parquet")
    kw = {"model_uri": "models:/lstm_debug/2", "source": str(work / "b"), "tracking_uri": uri}
    # Checked on the driver, before any Ray task: no --future, or one that lacks a series.
    with pytest.raises(PredictError, match=r"--future FILE .*\['series_id', 'timestamp', 'temperature'\]"):
        predict(output=str(tmp_path / "x.parquet"), **kw)
    with pytest.raises(PredictError, match=r"--future .*short.parquet: .*'s003' \(12 of 12 steps"):
        predict(output=str(tmp_path / "x.parquet"), future=str(tmp_path / "short.parquet"), **kw)
    # predict downloaded the model without setting a process-wide registry URI: mlflow.set_registry_uri
    # exports MLFLOW_REGISTRY_URI, which sent later tests' subprocesses to this test's store.
    assert "MLFLOW_REGISTRY_URI" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ

    args = ["predict", "--model", "models:/lstm_debug/2", "--input", str(work / "b"), "--tracking-uri", uri]
    proc = cli(*args, "--output", str(tmp_path / "end.parquet"), "--future", str(tmp_path / "future.csv"), cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    end = pd.read_parquet(tmp_path / "end.parquet")
    assert len(end) == 4 * HORIZON and end["timestamp"].min() == steps[0]

    cut = last - pd.Timedelta(hours=30)
    proc = cli(*args, "--output", str(tmp_path / "cut.parquet"), "--as-of", str(cut), cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = _load(uri, 2).unwrap_python_model()
    past, after = history[history["timestamp"] <= cut], history[history["timestamp"] > cut]
    expected = model.forecast(past, future=after)
    got = pd.read_parquet(tmp_path / "cut.parquet")
    assert got["timestamp"].min() == cut + pd.Timedelta(hours=1)
    np.testing.assert_allclose(got["target"], expected["target"], rtol=1e-6)
