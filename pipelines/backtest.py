"""The backtest pipeline: rolling-origin evaluation of the config's model against statsforecast baselines.

Run it as `lstm-dist backtest conf/demo.yaml [key=value ...] --windows 3 --step 24`, or
`python -m pipelines.backtest conf/demo.yaml backtest.windows=3`.

  data      ingest + shard of the whole input (cached, as in pipelines/train.py): each series' rows,
            from which the cutoffs are counted (the last one leaves exactly one horizon after it)
  per fold  the input truncated at cutoff + horizon (lstm_dist.folds), then the same cached ingest,
            shard and train steps on it; one model per cutoff, or one every `backtest.refit_every`
            cutoffs (the cutoffs between reuse it, forecasting from their own cutoff)
  score     the model's forecast from each cutoff and Naive, SeasonalNaive, AutoETS, AutoTheta fitted on
            the same rows up to the same cutoff; a table per cutoff and overall (CSV under the work dir,
            MLflow artifact, a plot), printed
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lstm_dist.config import ConfigError, PipelineConfig
from lstm_dist.storage import Store
from lstm_dist.workflow import Workflow

from .steps import data_steps, input_files, pipeline_run, script_main, train_step

STEPS = ("ingest", "shard", "train")


@dataclass
class BacktestSummary:
    table: pd.DataFrame
    forecasts: pd.DataFrame
    csv: Path
    run_id: str


def run(cfg: PipelineConfig, *, force: set[str] | None = None, progress=print) -> BacktestSummary:
    """Run every fold (cached steps are reused) and score them; see the module docstring."""
    if not Store(cfg.workflow.work_dir).local:
        raise ConfigError("lstm-dist backtest needs a local workflow.work_dir (it writes the truncated inputs there)")
    progress(cfg.summary())
    # Ray starts with the first step that uses it (a fold's ingest): a rerun of cached folds needs none.
    with pipeline_run(cfg, pipeline="backtest", steps=STEPS, force=force, progress=progress, ray="when_needed") as p:
        return _folds(cfg, p.wf, p.tracker, progress)


def _folds(cfg: PipelineConfig, wf: Workflow, tracker, progress) -> BacktestSummary:
    from lstm_dist import folds as bt
    from lstm_dist.data.manifest import Manifest
    from lstm_dist.evaluate import season_of, target_history
    from lstm_dist.models.saved import load_model

    b, horizon = cfg.backtest, cfg.data.horizon
    step = b.step or horizon
    shard, _ = data_steps(cfg, wf, progress=progress)
    season = season_of(Manifest.load(shard.local_copy() / "shards"))  # data.seasonality, or the default of the freq
    history = target_history(shard.local_copy() / "shards")
    ends = bt.cutoff_ends(history, windows=b.windows, step=step, horizon=horizon)
    raw = bt.read_input(cfg, input_files(cfg))
    out_dir = Path(cfg.workflow.work_dir) / "backtest"
    frames, model, model_shards = [], None, None
    for fold in range(1, b.windows + 1):
        path = bt.truncate(raw, ends[ends["fold"] == fold], cfg=cfg, path=out_dir / "inputs" / f"fold-{fold}.parquet")
        fold_cfg = bt.fold_config(cfg, path=path)
        fold_shard, _ = data_steps(fold_cfg, wf, progress=progress)
        shard_dir = str(fold_shard.local_copy() / "shards")
        if (fold - 1) % b.refit_every == 0:  # a fresh model at this cutoff; the next cutoffs reuse it
            trained = train_step(fold_cfg, wf, fold_shard, progress=progress)
            model = load_model(trained.local_copy() / trained.outputs["best_checkpoint"])
            model_shards = shard_dir
        frame = bt.fold_frame(model, shard_dir, model_shards=model_shards)
        frame["fold"] = fold
        frames.append(frame)
        progress(f"[backtest] fold {fold}/{b.windows}: cutoff {frame['cutoff'].max()} forecast")
    forecasts = bt.with_baselines(
        pd.concat(frames, ignore_index=True), history, season=season, slow_history=cfg.evaluate.baseline_history
    )
    table = bt.score_folds(forecasts, history, season=season)
    csv = out_dir / f"backtest-{wf.run_id}.csv"
    table.to_csv(csv, index=False)
    forecasts.to_csv(out_dir / f"forecasts-{wf.run_id}.csv", index=False)
    _log(tracker, cfg, table, step=step)
    progress(bt.table_text(table))
    progress(f"[backtest] table: {csv}")
    return BacktestSummary(table=table, forecasts=forecasts, csv=csv, run_id=tracker.run_id)


def _log(tracker, cfg: PipelineConfig, table: pd.DataFrame, *, step: int) -> None:
    """Params, the overall metrics (`backtest_<forecaster>_<metric>`), the table and a MASE-per-cutoff plot."""
    from lstm_dist import plots

    tracker.log_params({**cfg.flat(), "backtest.step_used": step})
    overall = table[table["fold"] == "all"]
    tracker.log_metrics(
        {
            f"backtest_{r['forecaster']}_{k}": r[k]
            for r in overall.to_dict("records")
            for k in ("mase", "smape", "mae", "rmse")
        }
    )
    tracker.log_table(table, "backtest/metrics")
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(plots.backtest_mase(table, Path(tmp) / "backtest_mase.png"), artifact_path="plots")
    tracker.log_text(json.dumps(cfg.backtest.model_dump(), indent=2), "backtest/config.json")


def main(argv: list[str] | None = None) -> int:
    return script_main("pipelines.backtest", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
