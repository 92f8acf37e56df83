"""Servers the tests start (mlflow server, mlflow models serve, the UI, moto, a Ray head): a free loopback port,
and waiting for one to answer."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable


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
