"""`lstm-dist ui`: the MLflow UI on the config's store, on 127.0.0.1, at the address it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from http_wait import stop_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_ui_serves_the_configured_store_at_the_printed_address(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # No venv on PATH here on purpose: the command must find the UI server of its own environment.
    env["PATH"] = "/usr/bin:/bin"
    cmd = [
        sys.executable,
        "-m",
        "lstm_dist.cli",
        "ui",
        str(ROOT / "conf" / "debug.yaml"),
        f"tracking.uri=sqlite:///{db}",
        f"workflow.work_dir={tmp_path}",
    ]
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        address = None
        deadline = time.time() + 180  # the address is printed once the server answers
        while address is None and time.time() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            match = re.search(r"open (http://127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else None
        assert address, "".join(lines)
        assert any("waiting for the UI server" in line for line in lines), "".join(lines)
        # Printed only once the server answers: no waiting here.
        with urllib.request.urlopen(f"{address}/", timeout=10) as reply:
            assert reply.status == 200 and b"<html" in reply.read(2000).lower()
    finally:
        stop_server(proc)
    # Stopping the command stops the server it started.
    time.sleep(2)
    try:
        urllib.request.urlopen(f"{address}/health", timeout=5)
        raise AssertionError(f"{address} still answers after the command was stopped")
    except OSError:
        pass


def test_ui_refuses_a_store_it_cannot_use(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lstm_dist.cli", "ui", str(ROOT / "conf" / "debug.yaml"), "tracking.uri=nosuch://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "not one MLflow can use" in proc.stderr
