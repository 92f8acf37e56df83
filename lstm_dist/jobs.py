"""Running lstm-dist commands on a Ray cluster as Ray jobs (Ray's Job Submission API).

    lstm-dist submit --address http://127.0.0.1:8265 -- run conf/demo.yaml train.epochs=3

run from a checkout of this project is the same as

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json '{"excludes": [".git", ".venv", "runs"]}' -- python -m lstm_dist.cli run conf/demo.yaml train.epochs=3

The job's working dir is the checkout's root when run from inside a checkout (else the current directory,
or --working-dir): Ray puts it first on the job's and its workers' PYTHONPATH, so the cluster runs the
`lstm_dist` and `pipelines` you have here, and `conf/...` and small local files resolve there. A working
dir that is not a checkout gets the packages this process runs as py_modules instead. The cluster's image
provides the dependencies (torch, ray, mlflow: see ray_cluster.yaml). The address is the dashboard's (port
8265 on the head; `ray dashboard ray_cluster.yaml` forwards it to 127.0.0.1). Nothing here starts Ray.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded with the working dir: environments, outputs, caches (Ray refuses working dirs over 500 MiB).
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "runs",
    "mlruns",
    "mlartifacts",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
SCHEDULE_KEY = "lstm_dist.schedule"
# A job server that drops a connection (restarting dashboard, flaky port-forward) usually answers again within
# seconds: that many tries, waiting 1, 2, 4 s between them.
SUBMIT_TRIES = 4


class JobError(RuntimeError):
    """The cluster cannot be reached or refuses the job; the message says what to check."""


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS (as `ray job submit` does), else the local dashboard."""
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def entrypoint(args: Sequence[str]) -> str:
    """The shell command a job runs for `lstm-dist ARGS` (the module form needs no console script)."""
    return shlex.join(["python", "-m", "lstm_dist.cli", *args])


def project_root(start: str | os.PathLike) -> Path | None:
    """The checkout of this project holding `start` (a folder with pyproject.toml, lstm_dist/ and pipelines/)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "lstm_dist" / "__init__.py").is_file():
            if (folder / "pipelines").is_dir():
                return folder
    return None


def default_working_dir() -> Path:
    """The checkout's root when run from inside one (its code and conf/ go with the job), else the current dir."""
    return project_root(Path.cwd()) or Path.cwd()


def runtime_env(
    *,
    working_dir: str | os.PathLike | None = None,
    env_vars: dict[str, str] | None = None,
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """Working dir (+ this process's packages when it is not a checkout) + environment variables for a job."""
    root = Path(working_dir).resolve() if working_dir is not None else default_working_dir()
    env = dict(env_vars or {})
    if os.environ.get("MLFLOW_TRACKING_URI"):  # the store you use here is the one the job should log to
        env.setdefault("MLFLOW_TRACKING_URI", os.environ["MLFLOW_TRACKING_URI"])
    spec: dict[str, Any] = {"working_dir": str(root), "excludes": [*EXCLUDES, *excludes], "env_vars": env}
    if project_root(root) != root:
        spec["py_modules"] = package_folders()
    return spec


def package_folders() -> list[str]:
    """The folders of the code this process runs: lstm_dist, and its workflows when they live beside it (a
    checkout or an editable install keeps them in the top-level pipelines/ folder; a wheel inside lstm_dist)."""
    package = Path(importlib.util.find_spec("lstm_dist").origin).parent
    # found by location, not imported: the library never imports the pipelines (only the CLI does)
    workflows = Path(importlib.util.find_spec("lstm_dist.pipelines").submodule_search_locations[0])
    return [str(package)] + ([] if workflows.parent == package else [str(workflows)])


def client(address: str | None):
    """A JobSubmissionClient for the cluster, with an error that says what to check when it is not there."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError as exc:
        raise JobError(
            f"the Ray cluster at {url} wants a token ({str(exc).splitlines()[0]}). Ray 2.60 clusters use token "
            "authentication by default: set RAY_AUTH_MODE=token here, with the cluster's token in "
            "~/.ray/auth_token or RAY_AUTH_TOKEN (see https://docs.ray.io/en/latest/ray-security/token-auth.html)."
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(
            f"cannot reach the Ray job server at {url}: {str(exc).splitlines()[0]}. Is the cluster up "
            "(`ray up ray_cluster.yaml`, or `ray start --head` here) and the dashboard forwarded "
            "(`ray dashboard ray_cluster.yaml`)? Pass --address http://HOST:8265 or set RAY_ADDRESS."
        ) from None


def submit(
    args: Sequence[str],
    *,
    address: str | None = None,
    working_dir: str | os.PathLike | None = None,
    env_vars: dict[str, str] | None = None,
    submission_id: str | None = None,
    metadata: dict[str, str] | None = None,
    wait: bool = True,
    out: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> tuple[str, str | None]:
    """Submit `lstm-dist ARGS` as a Ray job; with `wait`, follow its logs to the end. A dropped connection is
    retried (SUBMIT_TRIES tries, with backoff; `note` hears of each retry), then raises JobError.

    Returns (submission id, final status or None when not waiting).
    """
    jobs = client(address)
    spec = runtime_env(working_dir=working_dir, env_vars=env_vars)
    job_id = with_retries(
        lambda: jobs.submit_job(
            entrypoint=entrypoint(args),
            runtime_env=spec,
            submission_id=submission_id,
            metadata={"lstm_dist.args": shlex.join(args), **(metadata or {})},
        ),
        url=resolve_address(address),
        note=note,
    )
    if not wait:
        return job_id, None
    return job_id, follow(jobs, job_id, out=out)


def with_retries(
    call: Callable[[], Any],
    *,
    url: str,
    tries: int = SUBMIT_TRIES,
    backoff_s: float = 1.0,
    note: Callable[[str], None] | None = None,
) -> Any:
    """`call()`, tried again after a connection error (requests' errors are OSErrors), waiting backoff_s,
    then twice that, ...; after the last try a JobError naming the address and what to check. A refusal (an
    HTTP error, which Ray raises as RuntimeError) is not retried: a JobError with the server's reason."""
    attempt = 1
    while True:
        try:
            return call()
        except RuntimeError as exc:
            raise JobError(f"the Ray job server at {url} refused the job: {str(exc).splitlines()[0]}") from None
        except OSError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if attempt == tries:
                raise JobError(
                    f"the Ray job server at {url} did not take the job after {tries} tries ({reason}). Check that "
                    "the cluster is up (`ray status` on the head) and the dashboard reachable "
                    "(`ray dashboard ray_cluster.yaml`), then submit again; --address http://HOST:8265 or "
                    "RAY_ADDRESS names another server."
                ) from None
            wait = backoff_s * 2 ** (attempt - 1)
            if note is not None:
                note(f"submit: {url} dropped the connection ({reason}); try {attempt + 1}/{tries} in {wait:.0f}s")
            time.sleep(wait)
            attempt += 1


def follow(jobs, job_id: str, *, out: Callable[[str], None] | None = None, poll_s: float = 1.0) -> str:
    """Stream a job's logs until it ends; returns its final status."""
    write = out or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError:
        pass  # the log stream closed early (e.g. a proxy timeout); the status below still tells the outcome
    status = str(jobs.get_job_status(job_id))
    while status not in TERMINAL:  # the stream can end a moment before the status flips
        time.sleep(poll_s)
        status = str(jobs.get_job_status(job_id))
    return status


class RayJobRunner:
    """What the scheduler needs from a cluster: submit, status, logs, and the jobs of a schedule still running."""

    def __init__(self, address: str | None = None, *, working_dir: str | os.PathLike | None = None) -> None:
        self.address = resolve_address(address)
        self.working_dir = working_dir
        self._client = None

    @property
    def jobs(self):
        if self._client is None:
            self._client = client(self.address)
        return self._client

    def submit(self, args: Sequence[str], *, metadata: dict[str, str]) -> str:
        job_id, _ = submit(args, address=self.address, working_dir=self.working_dir, metadata=metadata, wait=False)
        return job_id

    def status(self, job_id: str) -> str:
        return str(self.jobs.get_job_status(job_id))

    def logs(self, job_id: str) -> str:
        return self.jobs.get_job_logs(job_id)

    def active(self, schedule: str) -> list[str]:
        """Submission ids of this schedule's jobs that are pending or running on the cluster."""
        return [
            j.submission_id
            for j in self.jobs.list_jobs()
            if (j.metadata or {}).get(SCHEDULE_KEY) == schedule and str(j.status) not in TERMINAL
        ]


def status_name(status: Any) -> str:
    """'SUCCEEDED' from JobStatus.SUCCEEDED or the string."""
    return getattr(status, "value", str(status))
