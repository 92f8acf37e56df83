"""Submitting a command (the retrain pipeline) as Ray jobs on a cron schedule.

    lstm-dist schedule --cron "0 3 * * *" retrain conf/demo.yaml

At each tick of the cron expression (croniter; a sixth field gives seconds), read as wall-clock time in
`timezone` (an IANA name; default the machine's local zone, daylight-saving aware), the scheduler submits
`lstm-dist ARGS` as a Ray job, unless a job of this schedule is still pending or running (in this
process, or on the cluster: a restarted scheduler sees it too) — then the tick is skipped and logged.
A failed job is retried after a backoff that doubles each time, up to `max_retries`; ticks during a
retry's wait are skipped as well. Every tick and outcome is a line of the history file (JSON lines),
with the job's last `retrain:` line (its decision) as the message; times carry their UTC offset.

The clock and the sleep are parameters, so tests drive the loop with a fake clock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lstm_dist.jobs import SCHEDULE_KEY, TERMINAL, status_name

SUMMARY_PREFIX = "retrain:"


class ScheduleError(ValueError):
    """A bad schedule option (cron expression, retries); the message says what would be valid."""


class JobRunner(Protocol):
    def submit(self, args: Sequence[str], *, metadata: dict[str, str]) -> str: ...
    def status(self, job_id: str) -> str: ...
    def logs(self, job_id: str) -> str: ...
    def active(self, schedule: str) -> list[str]: ...


def check_cron(expression: str) -> str:
    from croniter import croniter

    if not croniter.is_valid(expression):
        raise ScheduleError(
            f"--cron '{expression}' is not a cron expression; use 5 fields 'minute hour day month weekday' "
            "(e.g. '0 3 * * *' for 03:00 every day) or 6 with seconds last ('* * * * * */30')"
        )
    return expression


def local_zone() -> dt.tzinfo:
    """The machine's time zone as an IANA zone ($TZ, else /etc/localtime's target), so that cron ticks follow its
    daylight-saving changes; a fixed UTC offset only when neither names a zone."""
    names = [os.environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink() and "zoneinfo/" in str(localtime.resolve()):
        names.append(str(localtime.resolve()).split("zoneinfo/", 1)[1])
    for name in filter(None, names):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return dt.datetime.now().astimezone().tzinfo


def resolve_zone(name: str | None) -> dt.tzinfo:
    """An IANA zone by name (`Europe/Berlin`, `UTC`), or the machine's local zone for None."""
    if name is None:
        return local_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"--timezone '{name}' is not an IANA time zone; use a name such as 'UTC', 'Europe/Berlin' or "
            "'America/New_York' (leave it out for this machine's zone)"
        ) from None


@dataclass
class _Attempt:
    job_id: str
    tick: float
    number: int


@dataclass
class Scheduler:
    """The loop: tick, submit or skip, watch the job, retry failures, write the history."""

    cron: str
    args: list[str]
    runner: JobRunner
    history: Path
    name: str = "retrain"
    max_retries: int = 2
    backoff_s: float = 60.0
    poll_s: float = 5.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    progress: Callable[[str], None] = print
    timezone: str | None = None
    """IANA zone the cron expression is read in; None: the machine's local zone."""
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_cron(self.cron)
        self.zone = resolve_zone(self.timezone)
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ScheduleError("--max-retries and --backoff must be >= 0")
        self.history = Path(self.history)
        self.history.parent.mkdir(parents=True, exist_ok=True)

    def run(self, *, max_ticks: int | None = None, max_runs: int | None = None) -> list[dict[str, Any]]:
        """Loop until `max_ticks` ticks have passed or `max_runs` jobs have ended (for good), then return
        the outcomes; with neither, forever."""
        from croniter import croniter

        # An aware start time: croniter then reads the fields as wall-clock time in that zone (given an epoch,
        # it would read them in UTC).
        schedule = croniter(self.cron, dt.datetime.fromtimestamp(self.clock(), self.zone))
        next_tick = schedule.get_next(float)
        ticks = 0
        active: _Attempt | None = None
        retry: tuple[float, _Attempt] | None = None  # (when, the attempt that failed)
        self._log(
            "started", message=f"cron '{self.cron}': lstm-dist {' '.join(self.args)}; first tick {self._iso(next_tick)}"
        )
        while True:
            now = self.clock()
            if active is not None:
                status = status_name(self.runner.status(active.job_id))
                if status in TERMINAL:
                    retry = self._finished(active, status, now)
                    active = None
            if max_runs is not None and len(self.outcomes) >= max_runs and active is None and retry is None:
                self._log("stopped", message=f"{ticks} tick(s), {len(self.outcomes)} run(s)")
                return self.outcomes
            if retry is not None and now >= retry[0]:
                failed = retry[1]
                active = self._submit(failed.tick, number=failed.number + 1)
                retry = None
            if now >= next_tick:
                ticks += 1
                tick, next_tick = next_tick, schedule.get_next(float)
                while next_tick <= now:  # ticks missed while busy or asleep collapse into this one
                    next_tick = schedule.get_next(float)
                busy = self._busy(active, retry)
                if busy:
                    self._log("skipped", tick=tick, message=busy)
                else:
                    active = self._submit(tick, number=1)
            if active is None and retry is None and max_ticks is not None and ticks >= max_ticks:
                self._log("stopped", message=f"{ticks} tick(s), {len(self.outcomes)} run(s)")
                return self.outcomes
            wake = [next_tick] + ([retry[0]] if retry else [])
            self.sleep(max(0.0, min([now + self.poll_s, *wake]) - now) if active is None else self.poll_s)

    # -- steps of the loop ----------------------------------------------------------------------

    def _busy(self, active: _Attempt | None, retry: tuple[float, _Attempt] | None) -> str | None:
        if active is not None:
            return f"job {active.job_id} (attempt {active.number}) is still running"
        if retry is not None:
            return f"waiting to retry job {retry[1].job_id} at {self._iso(retry[0])}"
        others = self.runner.active(self.name)
        if others:
            return f"job(s) {', '.join(others)} of schedule '{self.name}' still running on the cluster"
        return None

    def _submit(self, tick: float, *, number: int) -> _Attempt:
        job_id = self.runner.submit(self.args, metadata={SCHEDULE_KEY: self.name, "lstm_dist.tick": self._iso(tick)})
        self._log("submitted", tick=tick, job_id=job_id, attempt=number)
        return _Attempt(job_id=job_id, tick=tick, number=number)

    def _finished(self, attempt: _Attempt, status: str, now: float) -> tuple[float, _Attempt] | None:
        message = self._summary(attempt.job_id)
        event = status.lower()
        if status == "SUCCEEDED" or attempt.number > self.max_retries:
            if status != "SUCCEEDED":
                event = "gave_up"
                message = f"{status} after {attempt.number} attempt(s): {message}"
            self._log(event, tick=attempt.tick, job_id=attempt.job_id, attempt=attempt.number, message=message)
            self.outcomes.append({"tick": attempt.tick, "job_id": attempt.job_id, "status": status, "message": message})
            return None
        wait = self.backoff_s * 2 ** (attempt.number - 1)
        self._log(
            event,
            tick=attempt.tick,
            job_id=attempt.job_id,
            attempt=attempt.number,
            message=f"{message}; retry {attempt.number}/{self.max_retries} in {wait:.0f}s",
        )
        return now + wait, attempt

    def _summary(self, job_id: str) -> str:
        """The job's decision line (`retrain: ...`), else its last non-empty log line."""
        try:
            lines = [ln.strip() for ln in self.runner.logs(job_id).splitlines() if ln.strip()]
        except Exception as exc:  # logs are a nicety; never let them break the loop
            return f"(no logs: {exc})"
        decided = [ln for ln in lines if ln.startswith(SUMMARY_PREFIX)]
        return (decided or lines or [""])[-1][:500]

    def _log(self, event: str, **fields: Any) -> None:
        entry = {"time": self._iso(self.clock()), "event": event, "schedule": self.name}
        entry.update({k: (self._iso(v) if k == "tick" else v) for k, v in fields.items() if v is not None})
        with open(self.history, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        text = " ".join(f"{k}={v}" for k, v in entry.items() if k not in ("time", "event", "schedule", "message"))
        self.progress(
            f"[schedule] {entry['time']} {event} {text}" + (f" - {entry['message']}" if "message" in entry else "")
        )

    def _iso(self, t: float) -> str:
        """`2024-06-12T03:00:00.000+02:00`: wall-clock time in the schedule's zone, with its offset."""
        return dt.datetime.fromtimestamp(t, self.zone).isoformat(timespec="milliseconds")


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The history file's entries, oldest first."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
