"""The training pipeline: ingest -> shard -> [tune] -> train -> evaluate -> register, as cached workflow steps.

Run it as `lstm-dist run conf/demo.yaml [key=value ...]`, or as a Ray job entrypoint:
`python -m pipelines.train conf/demo.yaml train.epochs=3`.

  ingest    one Ray task per input file: read, validate (errors name the file, column and row) and keep an
            Arrow copy; cached per file, by content, so a changed file is the only one read again
  shard     clean, split, scale and write Arrow shards + manifest.json from the ingested files
  tune      (tune.enabled) Ray Tune search; the best trial's config is what `train` trains
  train     Ray Train (DDP); checkpoints every epoch in the step's directory, so a killed run resumes there
  evaluate  the best checkpoint on the test split (MASE, sMAPE, MAE, RMSE by utilsforecast), against naive,
            seasonal naive, AutoETS and AutoTheta (statsforecast) on the same windows
  final_fit (train.final_fit) the same config retrained on every window up to the end of each series, for the
            evaluated run's best epoch count (or the evaluated model trained on for a part of it: `continue`),
            so the model that is registered sees the most recent data
  register  MLflow model + alias (champion / challenger), tagged with the lineage of its input data
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_dist.cluster import train_backend
from lstm_dist.config import PipelineConfig
from lstm_dist.data.manifest import Manifest
from lstm_dist.registry import Registry
from lstm_dist.tracking import NullTracker, Tracker, shard_fingerprint, ui_command
from lstm_dist.workflow import DONE, NotCached, Plan, StepResult, Workflow, read_runs

from .steps import (
    check_run,
    data_steps,
    evaluate_step,
    evaluates_in_process,
    final_fit_step,
    pipeline_run,
    register_step,
    script_main,
    train_history,
    train_step,
    tune_step,
)

STEPS = ("ingest", "shard", "tune", "train", "evaluate", "final_fit", "register")


@dataclass
class PipelineSummary:
    """What the run produced, for the final printout and for tests."""

    run_id: str
    metrics: dict[str, float]
    model_uri: str | None = None
    version: str | None = None
    alias: str | None = None
    tracking_uri: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Results:
    """The steps of one run, as the workflow returned them."""

    shard: StepResult
    lineage: dict[str, Any]
    tune: StepResult | None
    train: StepResult
    evaluation: StepResult
    register: StepResult | None = None


def run(cfg: PipelineConfig, *, force: set[str] | None = None, progress=print) -> PipelineSummary:
    """Run every step of the pipeline; complete steps are reused from the work dir. A run with nothing left to
    do answers from the work dir alone: no Ray, no MLflow run."""
    progress(cfg.summary())
    check_run(cfg)  # a store or an input that cannot work fails here, before Ray starts
    cached, pending = _all_cached(cfg, force=force, progress=progress)
    if cached is not None:
        return cached
    ray = "ahead" if _needs_ray(cfg, pending) else "unused"
    with pipeline_run(cfg, pipeline="train", steps=STEPS, force=force, progress=progress, ray=ray) as p:
        results = _steps(cfg, p.wf, p.tracker, progress)
        log_report(p.tracker, results=results)
        if results.tune and results.register:  # which trial the registered model comes from
            found = {f"tune.{k}": results.tune.outputs[k] for k in ("best_trial", "best_val_loss")}
            p.tracker.set_tags(found)
            Registry(p.tracker.uri).set_tags(cfg.tracking.model_name, results.register.outputs["version"], found)
    return _summary(cfg, results, run_id=p.tracker.run_id, steps=p.wf.summary())


def _steps(cfg: PipelineConfig, wf: Workflow, tracker: Tracker | NullTracker, progress) -> Results:
    """ingest -> shard -> [tune] -> train -> evaluate -> [final_fit] -> register, logging into the run as it goes."""
    shard, lineage = data_steps(cfg, wf, progress=progress)
    shard_dir = shard.local_copy() / "shards"
    tracker.log_artifact(shard_dir / "manifest.json", artifact_path="data")
    tracker.log_text(json.dumps(lineage, indent=2), "data/lineage.json")
    tracker.set_tags(
        {"data.fingerprint": lineage["fingerprint"], "data.shard_fingerprint": shard_fingerprint(shard_dir)}
    )
    tracker.log_datasets(shard_dir, splits={"train": "training", "val": "validation", "test": "testing"})

    tune = tune_step(cfg, wf, shard, progress=progress) if cfg.tune.enabled else None
    train_cfg = PipelineConfig.model_validate(tune.outputs["final_config"]) if tune else cfg
    train = train_step(train_cfg, wf, shard, tune=tune, progress=progress)
    tracker.log_history(train_history(train))
    tracker.log_artifact(train.local_copy() / "history.csv", artifact_path="train")

    evaluation = evaluate_step(cfg, wf, train=train, shard=shard, progress=progress)
    tracker.log_metrics({f"test_{k}": v for k, v in evaluation.outputs["metrics"].items()})
    progress(evaluation.outputs["table"])
    results = Results(shard=shard, lineage=lineage, tune=tune, train=train, evaluation=evaluation)
    if not cfg.tracking.register_model:
        return results

    final = (
        final_fit_step(train_cfg, wf, shard, train=train, progress=progress) if cfg.train.final_fit != "off" else None
    )
    results.register = register_step(
        cfg, wf, tracker, train=train, shard=shard, evaluation=evaluation, lineage=lineage, final=final
    )
    progress(f"[register] {results.register.outputs['decision']}")
    return results


def _summary(cfg: PipelineConfig, results: Results, *, run_id: str, steps: list[dict[str, Any]]) -> PipelineSummary:
    metrics = {f"test_{k}": v for k, v in results.evaluation.outputs["metrics"].items()}
    summary = PipelineSummary(run_id=run_id, metrics=metrics, tracking_uri=cfg.tracking_uri(), steps=steps)
    if results.register is not None:
        out = results.register.outputs
        summary.model_uri, summary.version, summary.alias = out["model_uri"], out["version"], out["alias"]
    return summary


@dataclass
class _Pending:
    """The first step a run has to run, and the shard step when that one is complete."""

    step: str
    shard: StepResult | None


def _needs_ray(cfg: PipelineConfig, pending: _Pending | None) -> bool:
    """Whether a step from `pending` on may use Ray: ingest, shard and tune do; train and the final fit on Ray
    Train; evaluate unless it scores in this process (few values to fit the baselines on). A run with only
    steps left that run in this process (a model change on cached shards with train.backend local, a
    re-registration) does not start Ray. Unsure (no shard step yet, an unreadable manifest): it does."""
    if pending is None or pending.shard is None or pending.step.split("[")[0] in ("ingest", "shard", "tune"):
        return True
    fits = {"train", "evaluate", "final_fit"} if cfg.train.final_fit != "off" else {"train"}
    if pending.step in fits and train_backend(cfg) == "ray":
        return True
    if pending.step not in ("train", "evaluate"):
        return False
    try:
        manifest = Manifest.load(pending.shard.local_copy() / "shards")
    except Exception:  # noqa: BLE001 - unsure: start Ray as usual
        return True
    return not evaluates_in_process(manifest, baseline_history=cfg.evaluate.baseline_history)


def _all_cached(
    cfg: PipelineConfig, *, force: set[str] | None, progress
) -> tuple[PipelineSummary | None, _Pending | None]:
    """(the summary, None) of a run whose every step is complete in the work dir (and its model still in the
    registry), found without starting Ray: the same steps asked of a `Plan`, which computes their keys as the
    engine does and raises NotCached at the first one that would run (a forced one included). Otherwise
    (None, that step), or (None, None) on any other doubt (run as usual)."""
    lines: list[str] = []  # shown only when the answer is "all cached"; else the real run prints its own
    try:
        plan = Plan(cfg.workflow.work_dir, pipeline="train", steps=STEPS, force=force, progress=lines.append)
        results = _steps(cfg, plan, NullTracker(), lines.append)
    except NotCached as pending:
        shard = [r for r in plan.results if r.name == "shard"]
        return None, _Pending(step=str(pending), shard=shard[0] if shard else None)
    except Exception:  # noqa: BLE001 - any other doubt: the real run meets it again and reports it in its place
        return None, None
    run_id = _made_by(cfg.workflow.work_dir, results.evaluation.key)
    if run_id is None:  # no record of the MLflow run that holds these results
        return None, None
    plan.record["mlflow_run_id"] = run_id
    plan.finish(DONE, message="every step cached: nothing ran")
    for line in lines:
        progress(line)
    progress(f"[train] every step cached: nothing to run (no Ray, no new MLflow run; results of run {run_id})")
    return _summary(cfg, results, run_id=run_id, steps=plan.summary()), None


def _made_by(work_dir: str, evaluate_key: str) -> str | None:
    """The MLflow run of the newest finished train run of this work dir whose evaluate step had this key."""
    for record in read_runs(work_dir, limit=50):
        keys = {s["key"] for s in record["steps"] if s["name"] == "evaluate"}
        if record["pipeline"] == "train" and record["status"] == DONE and evaluate_key in keys:
            return record.get("mlflow_run_id")
    return None


def log_report(tracker: Tracker, *, results: Results) -> None:
    """The run's pictures and tables: loss curves, forecast vs actual, error by horizon step, gate heat map
    (PNGs under plots/), and the test metrics as a table (metrics/test_metrics.csv|json, by_step.csv)."""
    import tempfile

    import pandas as pd

    from lstm_dist import plots
    from lstm_dist.evaluate import ETS, LAST, MODEL, NAIVE, POINT_METRICS, SNAIVE, THETA

    train, outputs = results.train, results.evaluation.outputs
    shard_dir = results.shard.local_copy() / "shards"
    with tempfile.TemporaryDirectory() as tmp:
        paths = [plots.loss_curves(train_history(train), Path(tmp) / "loss_curves.png")]
        paths += plots.evaluation_plots(
            train.local_copy() / train.outputs["best_checkpoint"], shard_dir, evaluation=outputs, out_dir=tmp
        )
        for path in paths:
            tracker.log_artifact(path, artifact_path="plots")
    m = outputs["metrics"]
    table = pd.DataFrame(
        [
            {
                "windows": windows,
                "forecaster": key,
                **{metric: m.get(f"{prefix}{key}_{metric}") for metric in POINT_METRICS},
            }
            for windows, prefix in (("all", ""), ("last", LAST))
            for key in (MODEL, NAIVE, SNAIVE, ETS, THETA)
            if f"{prefix}{key}_mae" in m and not (prefix == "" and key in (ETS, THETA))
        ]
    )
    tracker.log_table(table, "metrics/test_metrics")
    by_step = pd.DataFrame({"step": range(1, len(outputs["by_step"]) + 1), "model_mae": outputs["by_step"]})
    tracker.log_text(by_step.to_csv(index=False), "metrics/test_mae_by_step.csv")


def print_summary(summary: PipelineSummary, *, cfg: PipelineConfig, progress=print) -> None:
    m = summary.metrics
    progress("")
    progress("== summary ==")
    progress(
        f"test MAE  model {m['test_model_mae']:.4f}  naive {m['test_naive_mae']:.4f}"
        + (f"  seasonal-naive {m['test_snaive_mae']:.4f}" if "test_snaive_mae" in m else "")
    )
    progress(f"test RMSE model {m['test_model_rmse']:.4f}  naive {m['test_naive_rmse']:.4f}")
    if "test_snaive_mase" in m:
        progress(f"test MASE model {m['test_model_mase']:.4f}  seasonal-naive {m['test_snaive_mase']:.4f}")
    progress(f"MLflow run: {summary.run_id}")
    if summary.model_uri:
        progress(f"registered: models:/{cfg.tracking.model_name}/{summary.version} (alias: {summary.alias})")
        progress(f"load it:    mlflow.pyfunc.load_model('models:/{cfg.tracking.model_name}@{summary.alias}')")
    progress(f"MLflow UI:  {ui_command(summary.tracking_uri)}")


def main(argv: list[str] | None = None) -> int:
    return script_main("pipelines.train", lambda cfg: print_summary(run(cfg), cfg=cfg), argv)


if __name__ == "__main__":
    raise SystemExit(main())
