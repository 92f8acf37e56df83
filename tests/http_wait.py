"""Servers the tests start (mlflow server, mlflow models serve, the UI, moto, a Ray head): a free loopback port,
and waiting for one to answer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    """Environment for a `ray start` head, its jobs and CLI clients started by a test: the venv's bin first on
    PATH, unbuffered output, no token auth, and none of the caller's tracking server or cluster address.

    Ray 2.60 turns token auth on for a new head when ~/.ray/auth_token exists (any earlier local Ray leaves
    one); these heads listen on 127.0.0.1 only, so the tests run them, their jobs and the clients without."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", **extra}
    env["RAY_AUTH_MODE"] = "disabled"
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(key, None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, *, process: subprocess.Popen, log: Callable[[], str], timeout: float) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it dies or `timeout` passes."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, f"the server exited:\n{log()[-3000:]}"
        assert time.time() < deadline, f"{url} did not answer within {timeout:.0f}s:\n{log()[-3000:]}"
        time.sleep(1)


def stop_server(process: subprocess.Popen, log=None) -> None:
    """Terminate a server the test started (kill it if it does not exit within 30 s), then close its log."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    if log is not None:
        log.close()
