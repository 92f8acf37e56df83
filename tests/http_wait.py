"""Waiting for a server the tests started (mlflow server, mlflow models serve, the UI) to answer."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable


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
