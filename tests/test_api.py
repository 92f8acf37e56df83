"""The Python API (lstm_dist/api.py): DataFrames in, the CLI's pipelines, DataFrames out.

One in-process pipeline run on conf/debug.yaml (real local Ray, real sqlite MLflow store) is shared by the slow
tests: its forecast equals `lstm-dist predict` (Ray tasks) on the same rows written to a file, a second run
with the same rows (pandas or pyarrow) is all cached, and a bad frame fails as the CLI fails on that file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import lstm_dist
from lstm_dist.data.errors import DataError
from lstm_dist.data.synthetic import generate_sample

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf/debug.yaml"
SEED = 3  # not the config's sample seed: these rows come from the caller, not from data.sample


def _sample() -> pa.Table:
    return generate_sample(num_series=4, num_steps=400, seed=SEED)


# ---------------------------------------------------------------------------------------------
# Fast: the package stays light, and the input file is named by its content


def test_import_is_light_and_exports_the_api() -> None:
    script = (
        "import sys, lstm_dist\n"
        "heavy = [m for m in ('ray', 'torch', 'mlflow', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(lstm_dist.run) and callable(lstm_dist.forecast) and callable(lstm_dist.backtest)\n"
        "assert {'run', 'forecast', 'backtest', 'load_config'} <= set(dir(lstm_dist))\n"
        "try:\n    lstm_dist.no_such_name\nexcept AttributeError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "no attribute 'no_such_name'" in proc.stdout


def test_no_api_name_is_also_a_submodule() -> None:
    """Importing a submodule sets the package attribute of its name, which would then hide the API function
    (and `from lstm_dist import <name>` would get the function instead of the module)."""
    package = ROOT / "lstm_dist"
    clashes = [n for n in lstm_dist._API if (package / f"{n}.py").exists() or (package / n).is_dir()]
    assert not clashes, clashes
    script = "import lstm_dist, lstm_dist.pipelines.backtest as p, lstm_dist.folds\nassert callable(lstm_dist.backtest)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_a_frame_is_written_once_under_its_content_hash(tmp_path: Path) -> None:
    from lstm_dist.api import _write_input

    table = _sample()
    path = Path(_write_input(pa.Table.from_pandas(table.to_pandas(), preserve_index=False), work_dir=str(tmp_path)))
    assert path.parent == tmp_path / "inputs" and path.suffix == ".parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(path), table.to_pandas(), check_dtype=False)  # Parquet has no [s]
    before = path.stat()
    # The same rows as a pyarrow Table (no pandas metadata, other chunks): the same file, not written again.
    again = _write_input(pa.concat_tables([table.slice(0, 100), table.slice(100)]), work_dir=str(tmp_path))
    assert Path(again) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = _write_input(generate_sample(num_series=4, num_steps=400, seed=SEED + 1), work_dir=str(tmp_path))
    assert Path(other) != path
    assert sorted(p.name for p in (tmp_path / "inputs").iterdir()) == sorted([path.name, Path(other).name])


def test_arguments_become_the_overrides_the_cli_gives(tmp_path: Path, monkeypatch) -> None:
    from lstm_dist.api import _prepare
    from lstm_dist.config import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = lstm_dist.load_config(DEBUG, overrides=["workflow.work_dir=w", "train.epochs=3"])
    assert cfg.workflow.work_dir == str(tmp_path / "w") and cfg.train.epochs == 3  # resolved as the CLI does
    assert cfg.tracking.uri == f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"
    by_path = _prepare(cfg, "data/x.csv", ["tracking.allow_below_baseline=false", "backtest.windows=2"])
    assert by_path.data.path == str(tmp_path / "data/x.csv") and by_path.data.format == cfg.data.format
    assert not by_path.tracking.allow_below_baseline and by_path.backtest.windows == 2
    by_frame = _prepare(DEBUG, _sample(), [])  # a YAML path works as well as a config (work_dir: runs/debug)
    assert Path(by_frame.data.path).parent == tmp_path / "runs" / "debug" / "inputs"
    assert by_frame.data.format == "parquet" and Path(by_frame.data.path).is_file()
    assert _prepare(cfg, None, []) == cfg
    with pytest.raises(ConfigError, match="backtest.windows"):
        _prepare(cfg, None, ["backtest.windows=zero"])
    with pytest.raises(ConfigError, match="does not exist"):
        lstm_dist.load_config(tmp_path / "missing.yaml")


def test_data_of_another_kind_and_a_missing_store_are_clear_errors(tmp_path: Path, monkeypatch) -> None:
    from lstm_dist.predict import PredictError

    with pytest.raises(TypeError, match="pandas DataFrame, a pyarrow Table or a path"):
        lstm_dist.run(DEBUG, data=[1, 2, 3])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(PredictError, match="tracking_uri="):
        lstm_dist.forecast("models:/lstm_debug@champion", _sample().to_pandas())


# ---------------------------------------------------------------------------------------------
# Slow: one real pipeline run, in this process


@pytest.fixture(scope="module")
def api_run(ray_local, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the config's own store: <work_dir>/mlflow.db
        cfg = lstm_dist.load_config(DEBUG, overrides=[f"workflow.work_dir={work / 'w'}"])
    df = _sample().to_pandas()
    lines: list[str] = []
    result = lstm_dist.run(cfg, data=df, progress=lines.append)
    return work, cfg, df, result, lines


@pytest.mark.slow
def test_run_then_forecast_equals_the_cli_on_a_file(api_run) -> None:
    import mlflow
    from typer.testing import CliRunner

    from lstm_dist.cli import app

    work, cfg, df, result, _ = api_run
    assert result.version == "1" and result.alias == "champion" and result.model_uri
    assert result.metrics["test_model_mae"] > 0 and result.run_id
    [written] = (work / "w" / "inputs").iterdir()
    # Lineage: the registered version names the Parquet copy of the frame as its input.
    tags = mlflow.MlflowClient(result.tracking_uri).get_model_version("lstm_debug", "1").tags
    assert str(written) in json.loads(tags["lstm_dist.data_files"])
    assert tags["refit"] == "false"  # debug.yaml registers the evaluated model (train.final_fit: false)

    fc = lstm_dist.forecast("models:/lstm_debug@champion", df, tracking_uri=result.tracking_uri)
    assert len(fc) == df["series_id"].nunique() * cfg.data.horizon

    # `lstm-dist predict` on the same rows in a file: its Ray tasks (this process's Ray, joined through --config).
    df.to_parquet(work / "history.parquet", index=False)
    args = ["predict", "--model", "models:/lstm_debug@champion", "--input", str(work / "history.parquet")]
    args += ["--output", str(work / "cli.parquet"), "--tracking-uri", result.tracking_uri, "--num-tasks", "2"]
    out = CliRunner().invoke(app, [*args, "--config", str(DEBUG)])
    assert out.exit_code == 0, out.output
    cli = pd.read_parquet(work / "cli.parquet")
    pd.testing.assert_frame_equal(fc, cli, check_dtype=False)
    # --config with key=value overrides, as `run` takes them: the store of that run, no --tracking-uri.
    args = ["predict", "--model", "models:/lstm_debug@champion", "--input", str(work / "history.parquet")]
    args += ["--output", str(work / "cli2.parquet"), "--config", str(DEBUG), f"workflow.work_dir={work / 'w'}"]
    out = CliRunner(env={"MLFLOW_TRACKING_URI": None}).invoke(app, args)
    assert out.exit_code == 0, out.output
    pd.testing.assert_frame_equal(pd.read_parquet(work / "cli2.parquet"), cli)

    # The history as a path or as a pyarrow Table: the same forecast.
    by_path = lstm_dist.forecast("models:/lstm_debug/1", work / "history.parquet", tracking_uri=result.tracking_uri)
    pd.testing.assert_frame_equal(by_path, fc)
    pd.testing.assert_frame_equal(lstm_dist.forecast("models:/lstm_debug/1", _sample(), config=cfg), fc)
    # A cutoff: the forecast starts after it.
    as_of = df["timestamp"].max() - pd.Timedelta(hours=24)
    early = lstm_dist.forecast("models:/lstm_debug/1", df, as_of=str(as_of), config=cfg)
    assert early["timestamp"].min() == as_of + pd.Timedelta(hours=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pandas", "pyarrow"])
def test_a_second_run_with_the_same_rows_is_all_cached(api_run, kind: str) -> None:
    work, cfg, df, result, _ = api_run
    [written] = (work / "w" / "inputs").iterdir()
    before = written.stat()
    lines: list[str] = []
    again = lstm_dist.run(cfg, data=df if kind == "pandas" else _sample(), progress=lines.append)
    assert {s["state"] for s in again.steps} == {"cached"}, again.steps
    assert (again.version, again.alias) == (result.version, result.alias)  # nothing registered again
    assert [p.name for p in (work / "w" / "inputs").iterdir()] == [written.name]
    assert (written.stat().st_ino, written.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.slow
def test_a_frame_without_a_column_fails_as_the_cli_does(api_run) -> None:
    from typer.testing import CliRunner

    from lstm_dist.cli import app

    work, cfg, df, _, _ = api_run
    bad = df.drop(columns=["target"])
    with pytest.raises(DataError) as caught:
        lstm_dist.run(cfg, data=bad, progress=lambda *_: None)
    api_file = next(p for p in (work / "w" / "inputs").iterdir() if pd.read_parquet(p).columns.size == 3)
    bad.to_parquet(work / "bad.parquet", index=False)
    out = CliRunner().invoke(
        app, ["run", str(DEBUG), f"workflow.work_dir={work / 'w'}", f"data.path={work / 'bad.parquet'}"]
    )
    assert out.exit_code == 1, out.output
    message = str(caught.value)
    assert "column 'target' (data.target_cols) not found" in message
    assert f"error: {message.replace(str(api_file), str(work / 'bad.parquet'))}" in out.output
