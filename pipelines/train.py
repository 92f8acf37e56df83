"""The training pipeline: ingest -> train (Ray Train, DDP) -> evaluate -> register (MLflow).

Run it as `lstm-dist run conf/demo.yaml [key=value ...]`, or as a Ray job entrypoint:
`python -m pipelines.train conf/demo.yaml train.epochs=3`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from lstm_dist.cluster import cluster_summary, init_ray
from lstm_dist.config import PipelineConfig, dump_yaml, load_config
from lstm_dist.tracking import Tracker, assign_alias, log_forecaster, start_pipeline_run, ui_command
from lstm_dist.workflow import Workflow, fingerprint_inputs, reset_incomplete


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


def run(cfg: PipelineConfig, *, force: set[str] | None = None, progress=print) -> PipelineSummary:
    """Run every step of the pipeline; complete steps are reused from the work dir."""
    work_dir = Path(cfg.workflow.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    progress(cfg.summary())
    init_ray(cfg)
    progress(f"[ray] {cluster_summary()}")
    tracker = start_pipeline_run(cfg, run_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    tracker.set_tags({"ray.cluster": cluster_summary()})
    wf = Workflow(work_dir, tracker=tracker, force=force)
    try:
        summary = _steps(cfg, wf, tracker, progress)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.log_text(json.dumps(wf.summary(), indent=2), "workflow/steps.json")
    tracker.finish()
    summary.steps = wf.summary()
    return summary


def _steps(cfg: PipelineConfig, wf: Workflow, tracker: Tracker, progress) -> PipelineSummary:
    from lstm_dist.data.ingest import ingest

    work_dir = Path(cfg.workflow.work_dir)

    def ingest_step(out: Path) -> dict[str, Any]:
        shard_dir = out / "shards"
        reset_incomplete(shard_dir)  # a killed ingest left a temp dir at most; never a complete-looking one
        manifest, report = ingest(cfg.data, out_dir=str(shard_dir), work_dir=str(work_dir))
        progress(report.summary())
        return {"shard_dir": str(shard_dir), "report": report.summary()}

    ingest_res = wf.step(
        "ingest",
        ingest_step,
        key_parts={"data": cfg.data.model_dump(mode="json"), "inputs": fingerprint_inputs(cfg.data.path)},
        progress=progress,
    )
    shard_dir = Path(ingest_res.outputs["shard_dir"])
    tracker.log_artifact(shard_dir / "manifest.json", artifact_path="data")

    def train_step(out: Path) -> dict[str, Any]:
        from lstm_dist.train.trainer import fit

        # A rerun after a crash finds Ray Train's checkpoints under the same name and resumes from them.
        result = fit(cfg, shard_dir=str(shard_dir), storage_dir=str(out), name="ray_train")
        result.history.to_csv(out / "history.csv", index=False)
        return {"best_checkpoint": str(result.best_checkpoint), "epochs": int(result.history["epoch"].max())}

    train_res = wf.step(
        "train",
        train_step,
        key_parts={
            "model": cfg.model.model_dump(mode="json"),
            "train": cfg.train.model_dump(mode="json"),
            "ingest": ingest_res.key,
        },
        progress=progress,
    )
    import pandas as pd

    history = pd.read_csv(train_res.path / "history.csv")
    tracker.log_history(history)
    tracker.log_artifact(train_res.path / "history.csv", artifact_path="train")
    best_ckpt = Path(train_res.outputs["best_checkpoint"])

    def evaluate_step(out: Path) -> dict[str, Any]:
        evaluation = ray.get(_evaluate_task.remote(str(best_ckpt), str(shard_dir), cfg.data.seasonality))
        (out / "metrics.json").write_text(json.dumps(evaluation["metrics"], indent=2))
        return evaluation

    eval_res = wf.step("evaluate", evaluate_step, key_parts={"train": train_res.key}, progress=progress)
    metrics = {f"test_{k}": v for k, v in eval_res.outputs["metrics"].items()}
    tracker.log_metrics(metrics)
    progress(eval_res.outputs["table"])

    summary = PipelineSummary(run_id=tracker.run_id, metrics=metrics, tracking_uri=cfg.tracking_uri())
    if not cfg.tracking.register_model:
        return summary

    def register_step(out: Path) -> dict[str, Any]:
        example = _input_example(shard_dir, lookback=cfg.data.lookback)
        model_uri, version = log_forecaster(
            tracker,
            checkpoint_dir=best_ckpt,
            shard_dir=shard_dir,
            input_example=example,
            registered_name=cfg.tracking.model_name,
        )
        metric = cfg.tracking.promotion_metric
        alias = assign_alias(
            tracker,
            name=cfg.tracking.model_name,
            version=version,
            metric=metric,
            score=eval_res.outputs["metrics"][f"model_{metric}"],
            margin=cfg.tracking.promotion_margin,
        )
        return {"model_uri": model_uri, "version": version, "alias": alias}

    # Keyed on the evaluated model: a rerun of a finished pipeline does not register it twice.
    reg = wf.step(
        "register",
        register_step,
        key_parts={
            "evaluate": eval_res.key,
            "tracking": cfg.tracking.model_dump(mode="json"),
            "uri": cfg.tracking_uri(),
        },
        progress=progress,
    )
    summary.model_uri = reg.outputs["model_uri"]
    summary.version = reg.outputs["version"]
    summary.alias = reg.outputs["alias"]
    return summary


@ray.remote(num_cpus=1)
def _evaluate_task(checkpoint: str, shard_dir: str, season: int) -> dict[str, Any]:
    """Score the best checkpoint on the test split (a Ray task, so it runs wherever a CPU is free)."""
    from lstm_dist.data.windows import WindowDataset

    from lstm_dist.evaluate import evaluate_model
    from lstm_dist.train.checkpoints import load_model

    evaluation = evaluate_model(load_model(checkpoint), WindowDataset(shard_dir, split="test"), season=season)
    return {
        "metrics": evaluation.metrics,
        "by_step": evaluation.by_step.tolist(),
        "num_windows": evaluation.num_windows,
        "table": evaluation.table(),
    }


def _input_example(shard_dir: Path, *, lookback: int):
    """A small raw-history frame (one series, `lookback` rows) for the model's signature and example."""
    from lstm_dist.data.inference import example_history

    return example_history(shard_dir, rows=lookback)


def print_summary(summary: PipelineSummary, *, cfg: PipelineConfig, progress=print) -> None:
    m = summary.metrics
    progress("")
    progress("== summary ==")
    progress(
        f"test MAE  model {m['test_model_mae']:.4f}  naive {m['test_naive_mae']:.4f}"
        + (f"  seasonal-naive {m['test_snaive_mae']:.4f}" if "test_snaive_mae" in m else "")
    )
    progress(f"test RMSE model {m['test_model_rmse']:.4f}  naive {m['test_naive_rmse']:.4f}")
    progress(f"MLflow run: {summary.run_id}")
    if summary.model_uri:
        progress(f"registered: models:/{cfg.tracking.model_name}/{summary.version} (alias: {summary.alias})")
        progress(f"load it:    mlflow.pyfunc.load_model('models:/{cfg.tracking.model_name}@{summary.alias}')")
    progress(f"MLflow UI:  {ui_command(summary.tracking_uri)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m pipelines.train CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 2
    cfg = load_config(argv[0], argv[1:]).resolved()
    Path(cfg.workflow.work_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.workflow.work_dir) / "last_config.yaml").write_text(dump_yaml(cfg))
    summary = run(cfg)
    print_summary(summary, cfg=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
