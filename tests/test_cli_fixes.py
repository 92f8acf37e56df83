"""The CLI fixes of issue 11: schedule time zones, submit retries and working dir, readable metrics tables,
`data inspect` on a step dir, `run --explain`. (`ui` waiting for its server: tests/test_tracking_ui.py.)"""

from __future__ import annotations

import datetime as dt
import http.server
import re
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from lstm_dist.cli import app
from lstm_dist.schedule import Scheduler, read_history

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# schedule: the cron fields are wall-clock time in a zone, and the log says which


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.001)


class _InstantJobs:
    """A cluster whose jobs succeed at once; records the clock at each submission."""

    def __init__(self, clock: _Clock) -> None:
        self.clock, self.submitted = clock, []

    def submit(self, args, *, metadata) -> str:
        self.submitted.append(self.clock.time())
        return f"job{len(self.submitted)}"

    def status(self, job_id: str) -> str:
        return "SUCCEEDED"

    def logs(self, job_id: str) -> str:
        return "retrain: done"

    def active(self, schedule: str) -> list[str]:
        return []


def _ticks(tmp_path: Path, *, start: dt.datetime, timezone: str | None, num: int) -> tuple[list[float], list[dict]]:
    clock = _Clock(start.timestamp())
    jobs = _InstantJobs(clock)
    Scheduler(
        cron="0 3 * * *",
        args=["retrain", "conf/x.yaml"],
        runner=jobs,
        history=tmp_path / "h.jsonl",
        clock=clock.time,
        sleep=clock.sleep,
        progress=lambda _: None,
        timezone=timezone,
    ).run(max_ticks=num)
    return jobs.submitted, read_history(tmp_path / "h.jsonl")


def test_schedule_fires_at_wall_clock_time_in_its_zone_across_a_dst_change(tmp_path: Path) -> None:
    new_york = ZoneInfo("America/New_York")  # clocks go forward on 2024-03-10
    start = dt.datetime(2024, 3, 8, 12, 0, tzinfo=dt.timezone.utc)
    submitted, history = _ticks(tmp_path, start=start, timezone="America/New_York", num=3)
    expected = [dt.datetime(2024, 3, day, 3, 0, tzinfo=new_york).timestamp() for day in (9, 10, 11)]
    assert submitted == pytest.approx(expected, abs=1)
    ticks = [e["tick"] for e in history if e["event"] == "submitted"]
    assert ticks == [
        "2024-03-09T03:00:00.000-05:00",
        "2024-03-10T03:00:00.000-04:00",
        "2024-03-11T03:00:00.000-04:00",
    ]
    assert all(re.search(r"[+-]\d\d:\d\d$", e["time"]) for e in history)  # every logged time has its offset


def test_schedule_defaults_to_the_machines_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30, no daylight saving: not UTC under any reading
    start = dt.datetime(2024, 6, 1, 0, 0, tzinfo=dt.timezone.utc)
    submitted, history = _ticks(tmp_path, start=start, timezone=None, num=2)
    kolkata = ZoneInfo("Asia/Kolkata")
    expected = [
        dt.datetime(2024, 6, day, 3, 0, tzinfo=kolkata).timestamp() for day in (2, 3)
    ]  # 00:00 UTC is 05:30 there
    assert submitted == pytest.approx(expected, abs=1)
    assert history[1]["tick"].endswith("+05:30")


def test_schedule_refuses_an_unknown_timezone(tmp_path: Path) -> None:
    args = ["schedule", "--cron", "0 3 * * *", "--timezone", "Mars/Olympus", "--history", str(tmp_path / "h.jsonl")]
    result = runner.invoke(app, [*args, "retrain", "conf/x.yaml"])
    assert result.exit_code == 2
    assert "--timezone 'Mars/Olympus'" in result.output and "Europe/Berlin" in result.output


# ---------------------------------------------------------------------------------------------
# submit: dropped connections are retried, then one error line; the checkout is the working dir


class _DropsJobs(http.server.BaseHTTPRequestHandler):
    """A job server that answers the client's version check, then drops every other request unanswered."""

    dropped: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/api/version":
            body = b'{"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._drop()

    do_PUT = do_POST = do_GET  # noqa: N815

    def _drop(self) -> None:
        type(self).dropped.append(self.path)
        self.close_connection = True  # closed without a status line: the client sees a dropped connection

    def log_message(self, *args) -> None:
        pass


def test_submit_retries_a_dropped_connection_then_prints_one_error_line(tmp_path: Path) -> None:
    _DropsJobs.dropped = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsJobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "conf").mkdir()
    try:
        result = runner.invoke(
            app, ["submit", "--address", address, "--working-dir", str(tmp_path), "--", "run", "conf/x.yaml"]
        )
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    assert len(_DropsJobs.dropped) == 4  # the first try and three retries
    assert result.output.count("dropped the connection") == 3
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and address in errors[0] and "submit again" in errors[0]
    assert "Traceback" not in result.output


def test_submit_ships_the_checkout_from_inside_it_and_packages_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstm_dist.jobs import runtime_env

    monkeypatch.chdir(ROOT / "conf")  # inside this checkout
    spec = runtime_env()
    assert spec["working_dir"] == str(ROOT) and "py_modules" not in spec
    monkeypatch.chdir(tmp_path)  # a user's project dir: the packages this process runs go with it
    spec = runtime_env()
    assert spec["working_dir"] == str(tmp_path.resolve())
    import lstm_dist

    assert str(Path(lstm_dist.__file__).parent) in spec["py_modules"]
    assert any(Path(p).name == "pipelines" and (Path(p) / "train.py").exists() for p in spec["py_modules"])


# ---------------------------------------------------------------------------------------------
# the evaluate table: columns apart, large numbers readable


def test_metrics_table_keeps_large_numbers_apart() -> None:
    from lstm_dist.evaluate import metrics_table

    values = {"mase": 0.8123, "smape": 12.5, "mae": 1388474.43294187, "rmse": 350.2942}
    m = {f"{k}_{metric}": v for k in ("model", "naive", "snaive") for metric, v in values.items()}
    text = metrics_table(m, num_windows=12)
    rows = [line for line in text.splitlines() if line.startswith("model")]
    assert len(rows) == 1
    cells = rows[0].split()[1:]
    assert len(cells) == 4, rows[0]  # four columns, each its own token
    numbers = [float(c.replace(",", "")) for c in cells]
    assert numbers == pytest.approx([0.8123, 12.5, 1388474, 350.29], rel=1e-6)
    assert "1,388,474" in rows[0]
    assert "\x1b[" not in text


@pytest.mark.parametrize("num_windows, tables", [(12, 2), (4, 1)])
def test_metrics_table_prints_the_last_window_once_per_series_only_when_it_differs(num_windows, tables) -> None:
    """With one test window a series (4 windows, 4 series) the last-window table repeats the first: one table,
    AutoETS and AutoTheta in it; with more windows than series, both tables."""
    from lstm_dist.evaluate import metrics_table

    m = {f"{key}_{metric}": 1.0 + i for i, key in enumerate(("model", "naive", "snaive")) for metric in ("mase", "mae")}
    m |= {
        f"last_{key}_{metric}": 2.0 + i
        for i, key in enumerate(("model", "naive", "snaive", "ets", "theta"))
        for metric in ("mase", "mae")
    }
    text = metrics_table(m, num_windows=num_windows, num_last=4)
    titles = [line for line in text.splitlines() if line.endswith(":")]
    assert len(titles) == tables, text
    model_rows = [line for line in text.splitlines() if line.startswith("model")]
    assert len(model_rows) == tables
    ets_rows = [line for line in text.splitlines() if line.startswith("AutoETS")]
    assert len(ets_rows) == 1 and float(ets_rows[0].split()[1]) == 5.0  # the last-window score, in either layout


# ---------------------------------------------------------------------------------------------
# data inspect: a step dir, a shards dir or a manifest


def test_data_inspect_accepts_step_dir_shards_dir_and_manifest(tmp_path: Path, ray_local) -> None:
    from lstm_dist.config import DataConfig
    from lstm_dist.data.ingest import ingest

    step = tmp_path / "shard" / "0123abcd"  # as the pipeline's shard step lays it out
    ingest(DataConfig(sample={"num_series": 2, "num_steps": 300}, lookback=24, horizon=6), out_dir=str(step / "shards"))
    outputs = []
    for path in (step, step / "shards", step / "shards" / "manifest.json"):
        result = runner.invoke(app, ["data", "inspect", str(path)])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert "series: 2" in outputs[0] and outputs[0] == outputs[1] == outputs[2]
    missing = runner.invoke(app, ["data", "inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "does not exist" in missing.output


# ---------------------------------------------------------------------------------------------
# run --explain: every key with its value and its description from config.py


def test_run_explain_prints_every_key_value_and_description() -> None:
    result = runner.invoke(app, ["run", str(ROOT / "conf" / "debug.yaml"), "train.epochs=7", "--explain"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    keys = [line.split(":", 1)[0] for line in lines if not line.startswith(" ")]
    assert len(keys) > 50 and "data.lookback" in keys and "workflow.work_dir" in keys
    assert "(no description)" not in result.output
    epochs = lines.index("train.epochs: 7")  # the override is what is shown
    # The description is the attribute docstring written under the field in config.py.
    source = (ROOT / "lstm_dist" / "config.py").read_text()
    docstring = re.search(r"\n    epochs: [^\n]*\n    \"\"\"(.+?)\"\"\"", source).group(1)
    assert lines[epochs + 1].strip() == docstring.split("\n")[0].strip()
    assert "[ingest]" not in result.output  # nothing runs


@pytest.mark.parametrize(("flags", "level"), [([], "ERROR"), (["-v"], "INFO"), (["-vv"], "DEBUG")])
def test_verbosity_sets_how_loud_mlflow_and_ray_are(flags, level, monkeypatch, tmp_path: Path) -> None:
    import logging

    from lstm_dist.config import VERBOSE_ENV
    from lstm_dist.tracking import route_mlflow_logs

    monkeypatch.setenv(VERBOSE_ENV, "0")  # and back to what it was after the test: the CLI writes os.environ
    out = CliRunner().invoke(app, [*flags, "run", str(ROOT / "conf/debug.yaml"), "--show-config"])
    assert out.exit_code == 0, out.output
    route_mlflow_logs(str(tmp_path))
    terminal = [h for h in logging.getLogger("mlflow").handlers if not isinstance(h, logging.FileHandler)]
    assert [logging.getLevelName(h.level) for h in terminal] == [level]
    route_mlflow_logs(str(tmp_path), verbose=0)  # leave MLflow quiet for the tests after this one


# ---------------------------------------------------------------------------------------------
# the console script's exit: Python's shutdown steps that matter run, the module teardown does not


@pytest.mark.parametrize(("code", "status", "err"), [(0, 0, ""), (3, 3, ""), (None, 0, ""), ("bad", 1, "bad\n")])
def test_the_quick_exit_joins_threads_runs_atexit_and_flushes(code, status: int, err: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = f"""
import atexit, sys, threading, time
from lstm_dist.cli import _exit
atexit.register(lambda: open({str(tmp_path / "atexit")!r}, "w").write("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", end=" "))).start()
print("unflushed", end=" ")  # a pipe: block-buffered, written only by the final flush
_exit({code!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == status
    assert proc.stdout == "unflushed thread done " and proc.stderr == err
    assert (tmp_path / "atexit").read_text() == "ran"
