"""The cron scheduler on a fake clock with a fake cluster: ticks, overlap skips, retries with backoff, history."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from lstm_dist.schedule import ScheduleError, Scheduler, read_history

T0 = dt.datetime(2024, 1, 1, 2, 59, 0).timestamp()  # local time, like croniter's


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.t += max(seconds, 0.001)


class FakeRunner:
    """Jobs that take `durations[i]` fake seconds and end with `results[i]` (SUCCEEDED/FAILED)."""

    def __init__(self, clock: FakeClock, *, durations: list[float], results: list[str], logs: list[str] | None = None):
        self.clock, self.durations, self.results = clock, durations, results
        self.log_lines = logs or [f"retrain: outcome {i}" for i in range(len(results))]
        self.jobs: dict[str, tuple[float, int]] = {}
        self.elsewhere: list[str] = []

    def submit(self, args, *, metadata) -> str:
        i = len(self.jobs)
        job_id = f"job{i}"
        self.jobs[job_id] = (self.clock.time(), i)
        return job_id

    def status(self, job_id: str) -> str:
        start, i = self.jobs[job_id]
        return self.results[i] if self.clock.time() >= start + self.durations[i] else "RUNNING"

    def logs(self, job_id: str) -> str:
        return f"starting\n{self.log_lines[self.jobs[job_id][1]]}\ncleanup\n"

    def active(self, schedule: str) -> list[str]:
        return list(self.elsewhere)


def scheduler(tmp_path: Path, clock: FakeClock, runner: FakeRunner, **kw) -> Scheduler:
    return Scheduler(
        cron=kw.pop("cron", "*/10 * * * *"),
        args=["retrain", "conf/x.yaml"],
        runner=runner,
        history=tmp_path / "history.jsonl",
        clock=clock.time,
        sleep=clock.sleep,
        progress=lambda _: None,
        **{"poll_s": 30, **kw},
    )


def events(path: Path) -> list[str]:
    return [e["event"] for e in read_history(path)]


def test_a_tick_while_a_job_runs_is_skipped_and_logged(tmp_path: Path) -> None:
    clock = FakeClock()
    # job0 takes 25 min: the ticks at 03:10 and 03:20 fall while it runs; job1 (03:30) is quick.
    runner = FakeRunner(clock, durations=[25 * 60, 60], results=["SUCCEEDED", "SUCCEEDED"])
    outcomes = scheduler(tmp_path, clock, runner).run(max_runs=2)
    history = read_history(tmp_path / "history.jsonl")
    assert events(tmp_path / "history.jsonl") == [
        "started",
        "submitted",
        "skipped",
        "skipped",
        "succeeded",
        "submitted",
        "succeeded",
        "stopped",
    ]
    ticks = [e["tick"][11:16] for e in history if e["event"] in ("submitted", "skipped")]
    assert ticks == ["03:00", "03:10", "03:20", "03:30"]
    assert "job0" in history[2]["message"] and "still running" in history[2]["message"]
    assert [o["message"] for o in outcomes] == ["retrain: outcome 0", "retrain: outcome 1"]
    assert len(runner.jobs) == 2  # never two at once


def test_a_failed_job_is_retried_with_doubling_backoff_then_given_up(tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(clock, durations=[60, 60, 60], results=["FAILED"] * 3)
    outcomes = scheduler(tmp_path, clock, runner, max_retries=2, backoff_s=100, cron="0 3 * * *").run(max_runs=1)
    history = read_history(tmp_path / "history.jsonl")
    assert events(tmp_path / "history.jsonl") == [
        "started",
        "submitted",
        "failed",
        "submitted",
        "failed",
        "submitted",
        "gave_up",
        "stopped",
    ]
    submitted = [dt.datetime.fromisoformat(e["time"]).timestamp() for e in history if e["event"] == "submitted"]
    failed = [dt.datetime.fromisoformat(e["time"]).timestamp() for e in history if e["event"] == "failed"]
    assert submitted[1] - failed[0] == pytest.approx(100, abs=1)  # first retry after backoff_s
    assert submitted[2] - failed[1] == pytest.approx(200, abs=1)  # then doubled
    assert [e["attempt"] for e in history if e["event"] == "submitted"] == [1, 2, 3]
    assert outcomes[0]["status"] == "FAILED" and "after 3 attempt(s)" in outcomes[0]["message"]


def test_a_retry_that_succeeds_ends_the_run(tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(clock, durations=[60, 60], results=["FAILED", "SUCCEEDED"])
    outcomes = scheduler(tmp_path, clock, runner, backoff_s=10, cron="0 3 * * *").run(max_runs=1)
    assert events(tmp_path / "history.jsonl")[1:-1] == ["submitted", "failed", "submitted", "succeeded"]
    assert outcomes[0]["status"] == "SUCCEEDED"


def test_a_job_of_the_schedule_running_elsewhere_blocks_the_tick(tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(clock, durations=[60], results=["SUCCEEDED"])
    runner.elsewhere = ["raysubmit_from_an_earlier_scheduler"]
    scheduler(tmp_path, clock, runner).run(max_ticks=2)
    history = read_history(tmp_path / "history.jsonl")
    assert events(tmp_path / "history.jsonl") == ["started", "skipped", "skipped", "stopped"]
    assert "raysubmit_from_an_earlier_scheduler" in history[1]["message"] and runner.jobs == {}


def test_bad_cron_expressions_are_refused_with_an_example(tmp_path: Path) -> None:
    clock = FakeClock()
    with pytest.raises(ScheduleError, match="0 3 \\* \\* \\*"):
        scheduler(tmp_path, clock, FakeRunner(clock, durations=[], results=[]), cron="every night")


def test_the_loop_stops_after_max_runs_even_when_a_tick_coincides(tmp_path: Path) -> None:
    clock = FakeClock()
    # job0 ends exactly at the next tick (03:10): the loop sees the outcome and the tick together.
    runner = FakeRunner(clock, durations=[10 * 60, 60], results=["SUCCEEDED", "SUCCEEDED"])
    s = scheduler(tmp_path, clock, runner, poll_s=600)
    s.sleep = lambda seconds: setattr(clock, "t", clock.t + seconds)  # land exactly on the tick
    s.run(max_runs=1)
    assert len(runner.jobs) == 1 and events(tmp_path / "history.jsonl")[-2:] == ["succeeded", "stopped"]
