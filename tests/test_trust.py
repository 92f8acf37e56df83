"""Secrets and safe loading, without Ray: credentials in URIs never reach params, saved configs or errors; keys
that name secrets are not logged; the reachability check sends URI credentials as MLflow does; a model file
that holds a pickled object is refused; the run's experiment opens on the model-training page."""

from __future__ import annotations

import base64
import http.server
import pickle
import threading
import urllib.parse
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from lstm_dist.config import dump_yaml, is_secret_key, load_config, redact_uri
from lstm_dist.models import build_model
from lstm_dist.models.saved import load_model, read_model_args, save_model
from lstm_dist.storage import save_resolved
from lstm_dist.tracking import EXPERIMENT_KIND, TrackingError, check_tracking_uri, start_pipeline_run

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf" / "debug.yaml"
PASSWORD = "p@ss:w0rd%2F"  # '@', ':' and an escaped '/' inside: the redaction must still find the end of it
SECRET_URI = f"http://alice:{PASSWORD}@tracking.example:5000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SECRET_URI, "http://alice:***@tracking.example:5000"),
        ("error at postgresql://u:pw@db/mlflow, retry", "error at postgresql://u:***@db/mlflow, retry"),
        ("sqlite:////tmp/x/mlflow.db", "sqlite:////tmp/x/mlflow.db"),
        ("http://host:5000/path?a=b", "http://host:5000/path?a=b"),
    ],
)
def test_credentials_in_uris_are_redacted(text: str, expected: str) -> None:
    assert redact_uri(text) == expected


def test_keys_that_name_secrets_are_recognised() -> None:
    named = ["tracking.password", "x.api_key", "x.token", "x.auth_token", "x.client_secret", "x.key"]
    plain = ["tracking.uri", "data.series_col", "model.hidden_size", "x.monkey", "x.keyword"]
    assert [k for k in named + plain if is_secret_key(k)] == named
    # today's config has none: nothing of it is dropped from the params
    assert not [k for k in load_config(DEBUG).flat() if is_secret_key(k)]


def test_saved_and_printed_configs_hold_no_password(tmp_path: Path) -> None:
    cfg = load_config(DEBUG, [f"workflow.work_dir={tmp_path}", f"tracking.uri={SECRET_URI}"]).resolved()
    saved = Path(save_resolved(cfg)).read_text()
    for text in (dump_yaml(cfg), saved, cfg.summary()):
        assert PASSWORD not in text and "alice:***@tracking.example" in text


def test_params_drop_secret_keys_and_redact_uris_and_the_experiment_opens_on_training(tmp_path: Path) -> None:
    cfg = load_config(DEBUG, [f"workflow.work_dir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    tracker = start_pipeline_run(cfg.resolved(), run_name="secrets")
    try:
        tracker.log_params({"source.uri": SECRET_URI, "source.api_token": "t0ken", "other.value": 3})
        history = pd.DataFrame(
            {"epoch": [1, 2], "train_loss": [2.0, 1.0], "peak_gpu_mem_mb": [0.0, 0.0], "loss_scale": [65536.0, 32768.0]}
        )
        tracker.log_history(history)
    finally:
        tracker.finish()
    client = mlflow.MlflowClient(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.data.params["source.uri"] == "http://alice:***@tracking.example:5000"
    assert "source.api_token" not in run.data.params and run.data.params["other.value"] == "3"
    assert "train.epochs" in run.data.params  # the config itself is still logged
    # a CPU run's idle GPU memory is not logged; a loss scale that moved (fp16) is
    assert "system/peak_gpu_mem_mb" not in run.data.metrics and run.data.metrics["train/loss_scale"] == 32768.0
    assert sorted(run.data.metrics) == ["train/loss", "train/loss_scale"]  # grouped for the UI by split
    tags = client.get_experiment(tracker.experiment_id).tags
    assert {k: tags.get(k) for k in EXPERIMENT_KIND} == EXPERIMENT_KIND


class _Health(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args) -> None:
        pass


def test_the_reachability_check_sends_uri_credentials_as_basic_auth() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://alice:{PASSWORD}@127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    path, auth = _Health.seen[-1]
    assert path == "/health"
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == f"alice:{urllib.parse.unquote(PASSWORD)}"


def test_an_unreachable_server_is_named_without_its_password() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(TrackingError) as err:
        check_tracking_uri(f"http://alice:{PASSWORD}@127.0.0.1:{port}")
    assert "cannot reach the MLflow server" in str(err.value)
    assert PASSWORD not in str(err.value) and f"alice:***@127.0.0.1:{port}" in str(err.value)


class Planted:
    """Stands for any object a pickle could carry (and run code when loaded)."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_model_file_holding_an_object_is_refused(tmp_path: Path) -> None:
    cfg = load_config(DEBUG)
    args = {"num_features": 3, "num_targets": 1, "horizon": 4, "num_future": 0, "num_series": 2}
    net = build_model(cfg.model, **args)
    saved = save_model(tmp_path / "good.pt", model=net, model_args={"model": cfg.model.model_dump(), **args})
    assert read_model_args(saved)["horizon"] == 4 and load_model(saved).horizon == 4
    torch.save({"model_args": Planted(), "state_dict": net.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_model(tmp_path / "bad.pt")


TELEMETRY = """
import os, sys
import lstm_dist, mlflow
from mlflow.telemetry.client import get_telemetry_client
from ray._common.usage import usage_lib
print(get_telemetry_client() is None, usage_lib.usage_stats_enabled(), os.environ.get("RAY_USAGE_STATS_ENABLED"))
"""


def test_nothing_is_sent_off_the_machine_by_default_and_an_exported_choice_wins() -> None:
    """MLflow's telemetry client (made at `import mlflow`) and Ray's usage stats are off in a fresh process that
    imports lstm_dist first, as the CLI, the workers and a notebook using the API do; a value the user exported is
    left alone (checked without importing MLflow: its client would start sending)."""
    import os
    import subprocess
    import sys

    # MLflow turns its telemetry off by itself under pytest or CI (PYTEST_CURRENT_TEST, CI, ...): not here. Were
    # it on after all, its requests would go to a dead port on loopback (the proxy), not off the machine.
    unset = {"MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI",
             "GITHUB_ACTIONS", "NO_PROXY", "no_proxy"}  # fmt: skip
    dead = "http://127.0.0.1:9"
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env = {**env, "PYTHONPATH": str(ROOT), "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead}
    run = subprocess.run([sys.executable, "-c", TELEMETRY], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "False", "0"]
    mine = "import lstm_dist, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'], 'mlflow' in __import__('sys').modules)"
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"
    run = subprocess.run([sys.executable, "-c", mine], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["false", "False"], run.stderr
