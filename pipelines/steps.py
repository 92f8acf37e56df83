"""The cached steps of the pipelines and their Ray tasks, shared by pipelines/train.py, retrain.py and backtest.py,
and the life of one pipeline execution (`pipeline_run`: Ray, the MLflow parent run, the workflow's run record).

Each step is a `Workflow.step` (or `map`) whose key is its config section and its inputs' keys: a complete step
is taken from the work dir, so a run resumes where an earlier one stopped (lstm_dist.workflow).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lstm_dist.cluster import cluster_summary, init_ray, node_cpus, ray_started, ray_tags, train_backend
from lstm_dist.config import PipelineConfig, load_config
from lstm_dist.data.integrity import verify_shards
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.readers import COLUMN_FIELDS, check_inputs
from lstm_dist.registry import EVAL_KEY_TAG, Registry
from lstm_dist.storage import (
    RECORD,
    SUCCESS,
    Store,
    data_fingerprint,
    fingerprint_files,
    link_or_copy,
    local_copy,
    node_cache,
    save_resolved,
)
from lstm_dist.tracking import (
    NullTracker,
    Tracker,
    check_tracking_uri,
    route_mlflow_logs,
    start_pipeline_run,
    step_runs,
    tag_active_run,
)
from lstm_dist.warmup import Warmup
from lstm_dist.workflow import DONE, FAILED, StepResult, Workflow

FINGERPRINT_TAG = "lstm_dist.data_fingerprint"  # on a model version: the content hash of its input data
FILES_TAG = "lstm_dist.data_files"
# Up to this many target values that AutoETS/AutoTheta are fitted on (each series' rows, at most
# evaluate.baseline_history of them, x targets), the evaluate step scores in the driver: a Ray task does the same
# work after a worker start and the imports of torch and statsforecast that the driver has already paid for
# (4-5 s of a debug run's evaluate step: 4 series x 400 rows; 4 s of the demo's). Above it, in a Ray task that
# takes a node's cores: those fits grow with the history (20 hourly series x 2,000 rows: 49 s in one process).
EVAL_IN_PROCESS_MAX_VALUES = 20_000
# Cores the evaluate task of a large data set asks for (one statsforecast process each).
EVAL_MAX_CPUS = 8
# The train.* keys that only shape the final fit (final_fit_step), left out of the train step's cache key.
FINAL_FIT_KEYS = {"final_fit", "final_fit_epochs", "final_fit_lr"}
# When a pipeline run starts Ray (`pipeline_run`), and what it says about it then.
RayStart = Literal["ahead", "when_needed", "unused"]
RAY_LINES = {"when_needed": "not started yet: the first step that uses it starts it",
             "unused": "not started: no step left to run uses it"}  # fmt: skip
# The DataConfig fields that reading and validating one input file depends on (the ingest step's key).
READ_FIELDS = ("format", *COLUMN_FIELDS, "missing")


def input_files(cfg: PipelineConfig) -> list[str]:
    """The input files of the config (the sample data set is generated under work_dir first)."""
    from lstm_dist.data.readers import list_input_files

    return list_input_files(_input_source(cfg), fmt=cfg.data.format)


def _input_source(cfg: PipelineConfig) -> str:
    """`data.path`, or the sample data set under `<work_dir>/sample/`: generated there once; for a URI work
    dir generated in this machine's cache and uploaded, so every machine reads the same file by one name."""
    from lstm_dist.data.ingest import resolve_input

    work_dir = cfg.workflow.work_dir
    store = Store(work_dir)
    if cfg.data.path is not None or store.local:
        return resolve_input(cfg.data, out_dir=Path(work_dir), work_dir=work_dir)
    cache = node_cache(store)
    local = Path(resolve_input(cfg.data, out_dir=cache, work_dir=str(cache)))
    remote = store.join(*local.relative_to(cache).parts)
    if not store.exists(remote):  # the same seed gives the same file: a race uploads the same bytes twice
        store.upload(local, remote)
    return remote


def input_lineage(cfg: PipelineConfig) -> dict[str, Any]:
    """What the data is, by content: {fingerprint, files: {file: sha256}}. Cheap: unchanged files are not re-read."""
    files = input_files(cfg)
    prints = fingerprint_files(files, cache=Store(cfg.workflow.work_dir).join("_fingerprints.json"))
    return {"fingerprint": data_fingerprint(prints), "files": {f: p["sha256"] for f, p in prints.items()}}


def data_steps(cfg: PipelineConfig, wf: Workflow, *, progress=print) -> tuple[StepResult, dict[str, Any]]:
    """ingest (per file) -> shard. Returns the shard step and the lineage of the input data."""
    lineage = input_lineage(cfg)
    labels = _labels(list(lineage["files"]))
    items = {labels[f]: {"file": f, "sha256": sha} for f, sha in lineage["files"].items()}
    read_cfg = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k in READ_FIELDS}

    def ingest_files(outs: dict[str, str]) -> dict[str, dict[str, Any]]:
        from lstm_dist.data.ingest import get_or_raise, stage_file

        ensure_ray(cfg, progress)
        by_label = {labels[f]: f for f in lineage["files"]}
        task = ray_task(stage_file).options(**on_driver_node(wf))  # writes into `out`, on the driver's disk
        refs = {
            label: task.remote(by_label[label], cfg.data.model_dump(mode="json"), out) for label, out in outs.items()
        }
        return dict(zip(refs, get_or_raise(list(refs.values())), strict=True))

    staged = wf.map("ingest", items, ingest_files, config=read_cfg)
    shard_cfg_key = cfg.data.model_dump(mode="json", exclude={"path", "format"})

    def shard_step(out: str) -> dict[str, Any]:
        from lstm_dist.data.ingest import STAGED_FILE, ingest

        ensure_ray(cfg, progress)
        # The shard step reads the ingested Arrow copies, listed under one directory by hard links (no copy).
        inputs = Path(out) / "inputs"
        inputs.mkdir()
        for i, (label, res) in enumerate(sorted(staged.items())):
            link_or_copy(res.local_copy() / STAGED_FILE, inputs / f"{i:05d}-{Path(label).name.split('.')[0]}.parquet")
        shard_cfg = cfg.data.model_copy(update={"path": str(inputs), "format": "parquet", "sample": None})
        # Shards holding only unchanged series are hard-linked from the newest earlier shard set of this data
        # config (other input files); a forced rerun rebuilds everything.
        forced = "shard" in wf.force or any(r.forced for r in staged.values())
        previous = None if forced else _previous_shards(Path(out).parent, config=shard_cfg_key)
        _, report = ingest(
            shard_cfg,
            out_dir=str(Path(out) / "shards"),
            work_dir=cfg.workflow.work_dir,
            previous=previous,
            task_options=on_driver_node(wf),  # its tasks read `inputs` and write shards on the driver's disk
        )
        shutil.rmtree(inputs)
        progress(report.summary())
        return {"shards": "shards", "report": report.summary(), "num_series": report.num_series}

    shard = wf.step("shard", shard_step, config=shard_cfg_key, inputs={
        f"ingest:{label}": res for label, res in staged.items()
    }, still_valid=_shards_intact(progress))  # fmt: skip
    return shard, lineage


def _shards_intact(progress):
    """A cached shard set is reused only while its files match the manifest's sizes and checksums: a
    corrupted one is rebuilt, never trained on."""

    def check(cached: StepResult) -> bool:
        problems = verify_shards(cached.local_copy() / "shards")
        for problem in problems[:3]:
            progress(f"[shard] cached shard set is damaged: {problem}")
        return not problems

    return check


def tune_step(cfg: PipelineConfig, wf: Workflow, shard: StepResult, *, progress=print) -> StepResult:
    """Ray Tune search over `tune.space`; its output is the config the final training uses."""
    from lstm_dist.tune import run_tune

    def search(out: str) -> dict[str, Any]:
        ensure_ray(cfg, progress)
        # Each trial becomes a nested run under this step's run (wf.step_context).
        outcome = run_tune(
            cfg,
            shard_dir=str(shard.local_copy() / "shards"),
            trial_shards=shard.file("shards"),  # trials on any node read their own node's copy
            out_dir=out,
            tracker=wf.step_context,
            progress=progress,
        )
        outcome.trials.to_csv(Path(out) / "trials.csv", index=False)
        progress(outcome.table())
        return {
            "best_trial": outcome.best_trial,
            "best_params": outcome.best_params,
            "best_val_loss": outcome.best_val_loss,
            "best_epoch": outcome.best_epoch,
            "final_config": outcome.final_config.model_dump(mode="json"),
            "trainval_shards": os.path.relpath(outcome.trainval_dir, out),
        }

    return wf.step(
        "tune", search, config={"model": cfg.model, "train": cfg.train, "tune": cfg.tune}, inputs={"shard": shard}
    )


def train_step(
    cfg: PipelineConfig,
    wf: Workflow,
    shard: StepResult,
    *,
    tune: StepResult | None = None,
    name: str = "train",
    init_weights: str | None = None,
    split: str = "train",
    after: dict[str, StepResult] | None = None,
    progress=print,
) -> StepResult:
    """Ray Train fit; resumable: a killed attempt's checkpoints are where the next attempt starts from.

    `split="all"` is the final fit (every window up to the end of each series, no validation); `after`:
    further steps the result depends on (the final fit's epoch count comes from the evaluated run)."""
    # After a search the final model trains on train + validation (tune.trainval_view): no validation is
    # left to pick an epoch by, so the model is the last epoch (the best trial's best epoch count). The
    # same holds for the final fit on all rows. Workers get the shards' locator and read their own node's
    # copy (`storage.local_copy`).
    no_val = tune is not None or split == "all"
    shard_loc = tune.file(tune.outputs["trainval_shards"]) if tune and split == "train" else shard.file("shards")

    def train(out: str) -> dict[str, Any]:
        from lstm_dist.train.trainer import fit

        if train_backend(cfg) == "ray":
            ensure_ray(cfg, progress)
        shard_dir = local_copy(shard_loc)  # the driver's copy, for the dataset logging
        # Checkpoints go where workers on any node can write them and a rerun on any machine finds them:
        # the attempt itself for a local / mounted work dir, its place in the store for a URI one.
        storage = wf.shared_dir(out)
        run = wf.step_context  # this step's nested MLflow run
        run.log_params(cfg.flat())
        splits = {split: "training"} if no_val else {"train": "training", "val": "validation"}
        run.log_datasets(shard_dir, splits=splits)
        resume = _resume_point(storage, "ray_train")
        if resume is not None:
            progress(f"[{name}] resuming from checkpoint {resume[0]} (epoch {resume[1]} of {cfg.train.epochs})")
        kwargs = {"init_weights": init_weights} if init_weights else {}
        with run.system_metrics(interval_s=cfg.tracking.system_metrics_interval_s):
            result = fit(
                cfg,
                shard_dir=shard_loc,
                storage_dir=storage,
                local_dir=out,
                name="ray_train",
                train_split=split,
                label=name,  # "[train] epoch …" / "[final_fit] epoch …" on the terminal
                **kwargs,
            )
        result.history.to_csv(Path(out) / "history.csv", index=False)
        best = result.latest_checkpoint if no_val else result.best_checkpoint
        return {
            "best_checkpoint": os.path.relpath(best, out),
            "latest_checkpoint": os.path.relpath(result.latest_checkpoint, out),
            "epochs": int(result.history["epoch"].max()),
            "resumed_from": resume[0] if resume is not None else None,
        }

    inputs = {"shard": shard, **({"tune": tune} if tune else {}), **(after or {})}
    extra = {"init_weights": init_weights} if init_weights else {}
    if split != "train":
        extra["split"] = split
    # train.final_fit* say what happens after this step, not how it trains: they stay out of the key (the final
    # fit's own key holds their effect: its epochs, learning rate and initial weights).
    config = {"model": cfg.model, "train": cfg.train.model_dump(mode="json", exclude=FINAL_FIT_KEYS)}
    return wf.step(name, train, config=config, inputs=inputs, extra=extra, resumable=True)


def final_fit_step(
    cfg: PipelineConfig, wf: Workflow, shard: StepResult, *, train: StepResult, init_weights=None, progress=print
) -> StepResult:
    """The evaluated config trained on every window whose targets lie up to the end of each series.

    No validation is left, so early stopping is off and its latest checkpoint is the model. `continue` starts
    from the evaluated model's weights; `refit` from `init_weights` (fresh, or the champion's in a warm-started
    retrain), as tune's train + validation refit does. Its scores on the test windows would be scores on
    training data: it is not evaluated; the registered version carries the evaluated model's held-out scores."""
    final = final_fit_config(cfg, best_epoch=best_epoch(train))
    if cfg.train.final_fit == "continue":
        init_weights = str(train.local_copy() / train.outputs["best_checkpoint"])
    return train_step(
        final, wf, shard, name="final_fit", split="all", after={"train": train}, init_weights=init_weights,
        progress=progress,
    )  # fmt: skip


def final_fit_config(cfg: PipelineConfig, *, best_epoch: int) -> PipelineConfig:
    """The final fit's config: the evaluated one without validation, for the held-out run's best epoch count
    (`refit`), or for `train.final_fit_epochs` of it at `train.final_fit_lr` x lr (`continue`: the weights
    only have to take in the rows after the training part, which a short, gentler run does)."""
    from lstm_dist.tune import final_config

    tc = cfg.train
    if tc.final_fit != "continue":
        return final_config(cfg, {}, epochs=best_epoch)
    final = final_config(cfg, {}, epochs=math.ceil(best_epoch * tc.final_fit_epochs))
    final.train.lr = tc.lr * tc.final_fit_lr
    return final


def best_epoch(train: StepResult) -> int:
    """The epoch of the checkpoint the evaluated run kept: the lowest validation loss, or the last epoch
    when it trained without validation (after a tune search)."""
    history = train_history(train)
    val = history["val_loss"] if "val_loss" in history else None
    if val is None or val.isna().all():
        return int(history["epoch"].max())
    return int(history.loc[val.idxmin(), "epoch"])


def evaluate_step(
    cfg: PipelineConfig, wf: Workflow, *, train: StepResult, shard: StepResult, progress=print
) -> StepResult:
    def evaluate(out: str) -> dict[str, Any]:
        from lstm_dist.evaluate import evaluate_checkpoint

        shards = shard.local_copy() / "shards"
        wf.step_context.log_datasets(shards, splits={"test": "testing"})
        # Locators, not driver paths: the task may run on any node and reads that node's copies.
        ckpt, shard_dir = train.file(train.outputs["best_checkpoint"]), shard.file("shards")
        manifest = Manifest.load(shards)
        slow_history = cfg.evaluate.baseline_history
        rows = max(s.num_rows for s in manifest.series) - manifest.horizon
        rows = min(rows, slow_history or rows)
        # On many series AutoETS/AutoTheta take a while (~1 s a series on 1,000 rows): say so first.
        progress(
            f"[evaluate] the model and naive baselines on every test window; AutoETS and AutoTheta on the last "
            f"one of {len(manifest.series):,} series (fitted on up to {rows:,} rows)"
        )
        if evaluates_in_process(manifest, baseline_history=slow_history):
            evaluation = evaluate_checkpoint(ckpt, shard_dir, slow_history=slow_history)
        else:
            import ray

            ensure_ray(cfg, progress)
            # Nothing else runs during this step: its AutoETS/AutoTheta fits (most of its time on many
            # series) take a whole node's cores, one process each.
            cpus = node_cpus(EVAL_MAX_CPUS)
            task = ray_task(evaluate_checkpoint).options(num_cpus=cpus)
            evaluation = ray.get(task.remote(ckpt, shard_dir, n_jobs=cpus, slow_history=slow_history))
        (Path(out) / "metrics.json").write_text(json.dumps(evaluation["metrics"], indent=2))
        return evaluation

    return wf.step(
        "evaluate",
        evaluate,
        config={
            "seasonality": cfg.data.seasonality,
            "scores": "utilsforecast+statsforecast",
            "baseline_history": cfg.evaluate.baseline_history,
        },
        inputs={"train": train, "shard": shard},
    )


def register_step(
    cfg: PipelineConfig,
    wf: Workflow,
    tracker: Tracker | NullTracker,
    *,
    train: StepResult,
    shard: StepResult,
    evaluation: StepResult,
    lineage: dict[str, Any],
    final: StepResult | None = None,
) -> StepResult:
    """Log + register the model with its lineage tags, then let the promotion rule give it its alias.

    With `final` (the final fit on all rows) that model is registered, tagged `refit: true`; the held-out scores,
    the model card and the promotion decision are the evaluated model's, whose weights travel along (artifact
    `heldout_model`) so that a later challenger re-scores this one on weights that did not see its test windows.
    Keyed on the evaluated model: a rerun is cached, and an attempt killed after the registry call gets the same
    version back (found by its evaluate key); a cached step whose version is gone from the registry runs again.
    The champion is re-scored on this model's test windows, and the `champion` alias moves only in the last
    call: a failure before leaves the champion as it was. The input example is rebuilt from the shards.
    """
    from lstm_dist.promotion import baseline_gate, promote_if_better

    name, metric, uri = cfg.tracking.model_name, cfg.tracking.promotion_metric, cfg.tracking_uri()
    eval_key = f"{evaluation.key}+{final.key}" if final else evaluation.key  # a rerun finds its version by it

    def register(out: str) -> dict[str, Any]:
        shards = shard.local_copy() / "shards"
        metrics = evaluation.outputs["metrics"]
        gate = baseline_gate(
            metrics, margin=cfg.tracking.baseline_margin, allow_below=cfg.tracking.allow_below_baseline
        )
        refit = refit_tags(final, shard=shard, mode=cfg.train.final_fit)
        tracker.set_tags(refit)
        model_uri, version = _log_model(
            cfg, tracker, train=train, shard=shard, evaluation=evaluation, lineage=lineage, final=final,
            eval_key=eval_key, refit=refit,
        )  # fmt: skip
        decision = promote_if_better(
            Registry(uri),
            name=name,
            version=version,
            metric=metric,
            margin=cfg.tracking.promotion_margin,
            challenger_score=metrics[f"model_{metric}"],
            shard_dir=str(shards),
            season=Manifest.load(shards).season_length,  # data.seasonality or the freq's default
            gate=gate,
        )
        (Path(out) / "decision.json").write_text(json.dumps(decision.__dict__, indent=2, default=str))
        return {
            "model_uri": model_uri,
            "version": version,
            "alias": decision.alias,
            "promoted": decision.promoted,
            "decision": decision.reason,
            "champion_version": decision.champion_version,
            "champion_score": decision.champion_score,
            "challenger_score": decision.challenger_score,
            "below_baseline": not gate.passed,
            "baseline_blocked": not gate.passed and not gate.allow_below,  # kept from champion by the gate
        }

    return wf.step(
        "register",
        register,
        config={"tracking": cfg.tracking, "uri": uri},
        inputs={"evaluate": evaluation, "train": train, "shard": shard, **({"final_fit": final} if final else {})},
        resumable=True,
        still_valid=lambda cached: _still_registered(uri, name, eval_key, version=cached.outputs["version"]),
    )


def _log_model(
    cfg: PipelineConfig,
    tracker: Tracker | NullTracker,
    *,
    train: StepResult,
    shard: StepResult,
    evaluation: StepResult,
    lineage: dict[str, Any],
    final: StepResult | None,
    eval_key: str,
    refit: dict[str, str],
) -> tuple[str, str]:
    """Log the pyfunc model into the pipeline's run and register it with its lineage tags and model card;
    its input example comes from the shards (no raw input file is read again)."""
    from lstm_dist.serving import history_from_shards, log_forecaster, model_card

    shards = shard.local_copy() / "shards"
    keys = {"shard": shard.key, "train": train.key, **({"final_fit": final.key} if final else {})}
    model = final or train
    return log_forecaster(
        tracker,
        checkpoint_dir=model.local_copy() / model.outputs["best_checkpoint"],
        shard_dir=shards,
        input_example=history_from_shards(shards),
        registered_name=cfg.tracking.model_name,
        version_tags={
            EVAL_KEY_TAG: eval_key,
            **lineage_tags(lineage, keys),
            **refit,
        },
        heldout_checkpoint=train.local_copy() / train.outputs["best_checkpoint"] if final else None,
        description=model_card(cfg, shard_dir=shards, scores=evaluation.outputs["table"], refit=bool(final)),
    )


def _still_registered(uri: str, name: str, eval_key: str, *, version: str) -> bool:
    """Whether the registry still holds the version a cached register step made: the registry lives outside
    the work dir, and a step whose version is gone (a new or wiped tracking store) registers again."""
    found = Registry(uri).find_version(name, tag=EVAL_KEY_TAG, value=eval_key)
    return found is not None and str(found.version) == str(version)


def refit_tags(final: StepResult | None, *, shard: StepResult, mode: str) -> dict[str, str]:
    """`refit`: whether the registered weights were trained on all rows; how (`continue` from the evaluated
    weights, or a `refit` from fresh ones), for how many epochs, on how many rows, up to when."""
    if final is None:
        return {"refit": "false"}
    from lstm_dist.data.manifest import Manifest

    m = Manifest.load(shard.local_copy() / "shards")
    return {
        "refit": "true",
        "refit.mode": mode,
        "refit.epochs": str(final.outputs["epochs"]),
        "refit.rows": str(m.totals.num_rows),
        "refit.last_timestamp": str(max(s.last_timestamp for s in m.series)),
    }


def lineage_tags(lineage: dict[str, Any], keys: dict[str, str]) -> dict[str, str]:
    """Model version tags saying what it was trained on: the inputs' content fingerprint, files, step keys."""
    tags = {FINGERPRINT_TAG: lineage["fingerprint"], **{f"lstm_dist.{k}_key": v for k, v in keys.items()}}
    files = json.dumps({f: sha[:16] for f, sha in lineage["files"].items()})
    if len(files) < 5000:  # MLflow caps tag values; the full list is in the run's data/lineage.json
        tags[FILES_TAG] = files
    return tags


# ---------------------------------------------------------------------------------------------
# One execution of a pipeline


@dataclass
class PipelineRun:
    """What a pipeline's steps run in: the workflow (cache and run record) and the MLflow parent run.
    `message`: the line the run record keeps when the run ends well."""

    wf: Workflow
    tracker: Tracker
    message: str = ""


def check_run(cfg: PipelineConfig) -> None:
    """What must hold before anything starts (Ray, an MLflow run): the work dir (a path or a URI) exists,
    the tracking store can work and `data.path` names files. MLflow's own log lines go to the work dir's log."""
    route_mlflow_logs(cfg.workflow.work_dir)
    store = Store(cfg.workflow.work_dir)
    store.mkdir(store.root)
    check_tracking_uri(cfg.tracking_uri())  # MLflow itself would retry a dead server for minutes
    check_inputs(cfg.data)


@contextmanager
def pipeline_run(
    cfg: PipelineConfig,
    *,
    pipeline: str,
    steps: Sequence[str],
    force: set[str] | None = None,
    tags: dict[str, Any] | None = None,
    progress=print,
    ray: RayStart = "ahead",
) -> Iterator[PipelineRun]:
    """The life of one execution around its steps: the checks (`check_run`), Ray (`ray`: "ahead", with the warm-up
    of `lstm_dist.warmup` beside it; "unused" when no step left to run uses it; "when_needed": the first step that
    uses it starts it, `ensure_ray`), the MLflow parent run (tagged with the pipeline, the cluster and `tags`) and
    the workflow's run record. Both end `done` / FINISHED (with the steps as `workflow/steps.json`), or `failed` /
    FAILED with the error's first line when the body raises, which then propagates."""
    check_run(cfg)
    warm = Warmup(cfg).start()  # MLflow's store and the later steps' imports, while Ray starts
    summary = RAY_LINES.get(ray, "")
    if ray == "ahead":
        init_ray(cfg)
        summary = cluster_summary()  # asks Ray for its nodes: once, for the line and the tag
        tags = {"ray.cluster": summary, **(tags or {})}
    progress(f"[ray] {summary}")
    warm.store_ready()
    tracker = start_pipeline_run(cfg, run_name=f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}")
    tracker.set_tags({"lstm_dist.pipeline": pipeline, **(tags or {})})
    try:
        wf = Workflow(
            cfg.workflow.work_dir, pipeline=pipeline, steps=steps, on_step=step_runs(tracker),
            mlflow_run_id=tracker.run_id, force=force, progress=progress,
        )  # fmt: skip
    except BaseException:
        tracker.finish("FAILED")
        raise
    run = PipelineRun(wf=wf, tracker=tracker)
    try:
        yield run
    except BaseException as exc:
        try:
            wf.finish(FAILED, message=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        finally:  # a run record that cannot be written (a full or read-only disk) still ends the MLflow run
            tracker.finish("FAILED")
        raise
    tracker.log_text(json.dumps(wf.summary(), indent=2), "workflow/steps.json")
    wf.finish(DONE, message=run.message)
    tracker.finish()


# ---------------------------------------------------------------------------------------------
# Ray tasks and helpers


def ensure_ray(cfg: PipelineConfig, progress=print) -> None:
    """Ray for a step about to use it, when the run did not start it ahead (`pipeline_run(ray=False)`: the
    steps left looked as if none would use it). The pipeline's run gets the cluster tags it would have had."""
    if not ray_started():
        init_ray(cfg)
        tags = ray_tags()
        summary = cluster_summary(tags)
        progress(f"[ray] {summary}")
        tag_active_run({"ray.cluster": summary, **tags})


@functools.cache
def ray_task(fn: Callable) -> Any:
    """`fn` as a Ray task of one CPU, made on first use: importing the pipelines (a cached rerun, which starts
    no Ray) does not import Ray."""
    import ray

    return ray.remote(num_cpus=1)(fn)


def evaluates_in_process(manifest: Manifest, *, baseline_history: int = 0) -> bool:
    """Whether the evaluate step scores in the driver (few values to fit the baselines on, each series' last
    `baseline_history` rows, 0: all) rather than in a Ray task."""
    rows = sum(min(s.num_rows, baseline_history or s.num_rows) for s in manifest.series)
    return rows * manifest.num_targets <= EVAL_IN_PROCESS_MAX_VALUES


def on_driver_node(wf: Workflow) -> dict[str, Any]:
    """Ray task options for tasks that write into a step's attempt dir: none for a local or mounted work
    dir; for a URI one the attempt is on the driver's disk only, so they run on the driver's node."""
    if wf.store.local:
        return {}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def _labels(files: list[str]) -> dict[str, str]:
    """Short, unique display names for input files: their paths below the common directory."""
    if len(files) == 1:
        return {files[0]: files[0].rsplit("/", 1)[-1]}
    common = os.path.commonpath([f.split("://", 1)[-1] for f in files])
    return {f: os.path.relpath(f.split("://", 1)[-1], common) for f in files}


def _previous_shards(steps_dir: Path, *, config: dict[str, Any]) -> str | None:
    """The shard dir of the newest complete, intact shard step in `steps_dir` made with this data config, if any."""
    best: tuple[float, Path] | None = None
    for record_file in steps_dir.glob(f"*/{RECORD}"):
        step_dir = record_file.parent
        if "." in step_dir.name or not (step_dir / SUCCESS).exists():  # attempts, temp copies, unfinished steps
            continue
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue
        if record.get("key_parts", {}).get("config") != config or not (step_dir / "shards" / SUCCESS).exists():
            continue
        if verify_shards(step_dir / "shards"):  # a damaged set lends no files to the next one
            continue
        if best is None or record.get("finished_at", 0) > best[0]:
            best = (record.get("finished_at", 0), step_dir / "shards")
    return str(best[1]) if best else None


def _resume_point(storage: str, name: str) -> tuple[str, int | str] | None:
    """(checkpoint name, epochs done) that training will resume `<storage>/<name>` from (a path or a URI):
    Ray Train's snapshot, or a newer complete checkpoint beside it; a local run's record (train.local)."""
    from lstm_dist.train.local import read_record
    from lstm_dist.train.trainer import SNAPSHOT_FILE

    store = Store(storage)
    record = read_record(Path(storage) / name) if store.local else {}
    if record:  # a train.backend=local run: its record names the latest checkpoint and its epoch
        latest = next(e for e in record["checkpoints"] if e["dir"] == record["latest"])
        return latest["dir"], latest["epoch"]
    try:
        latest = json.loads(store.read_text(store.join(name, SNAPSHOT_FILE)))["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):
        return None
    if not latest:
        return None
    name_, epoch = latest["checkpoint_dir_name"], int(latest.get("metrics", {}).get("epoch", 0)) or "?"
    if store.local:  # the loop resumes from the newest complete checkpoint beside it (a kill can outrun the snapshot)
        from lstm_dist.train.checkpoints import completed_epoch, newest_checkpoint

        newest = newest_checkpoint(Path(storage) / name / name_)
        name_, epoch = newest.name, completed_epoch(newest) or epoch
    return name_, epoch


def train_history(train: StepResult):
    """The per-epoch history (loss, val_loss, ...) a train step wrote: one row per epoch."""
    import pandas as pd

    return pd.read_csv(train.local_copy() / "history.csv")


def script_main(module: str, run_config: Callable[[PipelineConfig], Any], argv: list[str] | None = None) -> int:
    """`python -m <module> CONFIG.yaml [key=value ...]` (a Ray job entrypoint): load, resolve and save the config,
    then `run_config` it; exit status 2 with the usage line when no config is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"usage: python -m {module} CONFIG.yaml [key=value ...]", file=sys.stderr)
        return 2
    cfg = load_config(argv[0], argv[1:]).resolved()
    save_resolved(cfg)
    run_config(cfg)
    return 0
