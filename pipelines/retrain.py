"""The retraining pipeline: new data? -> ingest -> shard -> train a challenger -> compare with the champion -> decide.

Run it as `lstm-dist retrain conf/demo.yaml [key=value ...]`, on a schedule with
`lstm-dist schedule --cron "0 3 * * *" retrain conf/demo.yaml`, or as a Ray job entrypoint:
`python -m pipelines.retrain conf/demo.yaml`.

  1. New data? The inputs' content fingerprint is compared with the one the champion was trained on
     (a tag on its registered version). Same: it says so and ends, in seconds, without starting Ray.
  2. ingest/shard as in pipelines/train.py (the steps of pipelines/steps.py): files read before are cached by content, so only new or
     changed files are read and validated again; the shard step rebuilds splits and scalers over all.
  3. train a challenger: fresh, or from the champion's weights with `workflow.warm_start=true`.
  4. evaluate the challenger on the new, most recent hold-out (the test split of the new shards), and
     register it: a challenger that does not beat the seasonal naive forecast (test MASE, by
     `tracking.baseline_margin`) is never promoted (`--allow-below-baseline` overrides); otherwise
     the promotion rule (lstm_dist.promotion) re-scores the champion on the same windows,
     each model with its own scalers, and moves `champion` only if the challenger beats it by
     `tracking.promotion_margin`. The decision is tagged on the version, on the MLflow run, and appended
     to <work_dir>/retrain_decisions.jsonl. A failed retrain never touches the aliases.
     With `train.final_fit` (on by default) the version registered is the challenger trained on every
     row (pipelines/steps.py final_fit_step); the decision stays on the held-out scores.

The champion lookups (`get_champion`, `already_decided`) read the registry through lstm_dist.registry.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lstm_dist.config import PipelineConfig
from lstm_dist.models.saved import MODEL_FILE, read_model_args, same_build
from lstm_dist.registry import CHALLENGER, CHAMPION, Registry
from lstm_dist.storage import Store, node_cache
from lstm_dist.tracking import Tracker
from lstm_dist.workflow import Workflow

from .steps import (
    FILES_TAG,
    FINGERPRINT_TAG,
    data_steps,
    evaluate_step,
    final_fit_step,
    input_lineage,
    pipeline_run,
    register_step,
    script_main,
    train_step,
)

STEPS = ("ingest", "shard", "train", "evaluate", "final_fit", "register")
DECISIONS_FILE = "retrain_decisions.jsonl"
NO_NEW_DATA, PROMOTED, KEPT, FIRST = "no new data", "promoted", "kept champion", "first model"
BELOW_BASELINE = "below baseline"  # not crowned: it does not beat the seasonal naive (lstm_dist.promotion)


@dataclass
class Champion:
    """The registered version behind the `champion` alias, with the lineage tags it was registered with."""

    name: str
    version: str
    tags: dict[str, str]

    @property
    def fingerprint(self) -> str | None:
        return self.tags.get(FINGERPRINT_TAG)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class RetrainSummary:
    """What a retrain did and why; the last line it prints is `retrain: <message>`."""

    decision: str
    message: str
    fingerprint: str
    champion_version: str | None = None
    challenger_version: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    seconds: float = 0.0
    steps: list[dict[str, Any]] = field(default_factory=list)


def run(cfg: PipelineConfig, *, force: set[str] | None = None, progress=print) -> RetrainSummary:
    started = time.perf_counter()
    work_dir = cfg.workflow.work_dir  # a path or a URI (s3://...)
    store = Store(work_dir)
    store.mkdir(store.root)
    lineage = input_lineage(cfg)
    champion = get_champion(cfg)
    seen = already_decided(cfg, lineage["fingerprint"], champion)
    if seen is not None and not force:
        summary = RetrainSummary(
            decision=NO_NEW_DATA,
            message=f"no new data since {seen} (inputs fingerprint {lineage['fingerprint']}, "
            f"{len(lineage['files'])} file(s)); nothing to do",
            fingerprint=lineage["fingerprint"],
            champion_version=champion.version if champion else None,
            seconds=time.perf_counter() - started,
        )
        _append_decision(work_dir, summary)
        progress(f"retrain: {summary.message}")
        return summary

    if champion is None:
        progress(f"[retrain] no champion of '{cfg.tracking.model_name}' yet: training the first model")
    else:
        progress(f"[retrain] {describe_changes(champion, lineage)}; champion is v{champion.version}")
    progress(cfg.summary())
    tags = {FINGERPRINT_TAG: lineage["fingerprint"], "lstm_dist.champion_before": champion.version if champion else ""}
    # Ray starts with the first step that uses it: the ingest of new data; none when only the model changed (the
    # steps left run in this process with train.backend local and small data).
    with pipeline_run(
        cfg, pipeline="retrain", steps=STEPS, force=force, tags=tags, progress=progress, ray="when_needed"
    ) as p:
        try:
            summary = _steps(cfg, p.wf, p.tracker, champion=champion, lineage=lineage, progress=progress)
        except BaseException as exc:  # nothing was promoted: aliases move only in the register step's last call
            p.tracker.set_tags({"lstm_dist.retrain.decision": f"failed: {type(exc).__name__}"})
            raise
        summary.run_id = p.tracker.run_id
        summary.steps = p.wf.summary()
        p.tracker.set_tags(
            {"lstm_dist.retrain.decision": summary.decision, "lstm_dist.retrain.message": summary.message}
        )
        p.tracker.log_text(json.dumps(asdict(summary), indent=2, default=str), "retrain/decision.json")
        p.message = summary.message
    summary.seconds = time.perf_counter() - started
    _append_decision(work_dir, summary)
    progress(f"retrain: {summary.message}")
    return summary


def _steps(cfg, wf: Workflow, tracker: Tracker, *, champion: Champion | None, lineage, progress) -> RetrainSummary:
    shard, _ = data_steps(cfg, wf, progress=progress)
    staged = [r for r in wf.results if r.name == "ingest"]
    fresh = [r.label for r in staged if not r.cached]
    progress(f"[retrain] ingest read {len(fresh)} of {len(staged)} file(s) again: {', '.join(fresh) or 'none'}")
    tracker.log_artifact(shard.local_copy() / "shards" / "manifest.json", artifact_path="data")
    tracker.log_text(json.dumps(lineage, indent=2), "data/lineage.json")

    init_weights = None
    if cfg.workflow.warm_start and champion is not None:
        init_weights = _warm_start_weights(cfg, download_model(cfg, champion), shard.local_copy() / "shards")
        if init_weights:
            progress(f"[retrain] warm start: the challenger starts from champion v{champion.version}'s weights")
    challenger = train_step(cfg, wf, shard, init_weights=init_weights, progress=progress)
    evaluation = evaluate_step(cfg, wf, train=challenger, shard=shard, progress=progress)
    progress(evaluation.outputs["table"])
    tracker.log_metrics({f"test_{k}": v for k, v in evaluation.outputs["metrics"].items()})
    final = None
    if cfg.train.final_fit != "off":
        final = final_fit_step(cfg, wf, shard, train=challenger, init_weights=init_weights, progress=progress)
    reg = register_step(
        cfg, wf, tracker, train=challenger, shard=shard, evaluation=evaluation, lineage=lineage, final=final
    )
    out = reg.outputs
    kind = FIRST if champion is None else PROMOTED if out["promoted"] else KEPT
    if out.get("baseline_blocked"):
        kind = BELOW_BASELINE
    message = f"v{out['version']} {'is' if kind in (FIRST, PROMOTED) else 'stays'} {out['alias']}: {out['decision']}"
    if reg.cached:
        message = f"already decided for this data and config: {message}"
    scores = {"challenger": out.get("challenger_score"), "champion": out.get("champion_score")}
    return RetrainSummary(
        decision=kind,
        message=message,
        fingerprint=lineage["fingerprint"],
        champion_version=champion.version if champion else None,
        challenger_version=out["version"],
        scores={k: v for k, v in scores.items() if v is not None},
    )


def describe_changes(champion: Champion, lineage: dict[str, Any]) -> str:
    """'new data: 1 changed, 2 new, 0 removed file(s) (a.csv, ...)' against the champion's recorded files."""
    if champion.fingerprint is None:
        return f"champion v{champion.version} has no recorded data fingerprint: treating the data as new"
    try:
        before = json.loads(champion.tags.get(FILES_TAG, ""))
    except ValueError:
        return f"new data: inputs fingerprint {lineage['fingerprint']} (champion's: {champion.fingerprint})"
    now = {f: sha[:16] for f, sha in lineage["files"].items()}
    changed = sorted(f for f in now if f in before and before[f] != now[f])
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    names = [Path(f).name for f in changed + added + removed][:5]
    return f"new data: {len(changed)} changed, {len(added)} new, {len(removed)} removed file(s)" + (
        f" ({', '.join(names)})" if names else " (same files, different config)"
    )


# ---------------------------------------------------------------------------------------------
# The champion in the registry


def get_champion(cfg: PipelineConfig) -> Champion | None:
    """The current champion of `tracking.model_name`, or None when there is no such model or alias."""
    version = Registry(cfg.tracking_uri()).alias_version(cfg.tracking.model_name, CHAMPION)
    if version is None:
        return None
    return Champion(name=cfg.tracking.model_name, version=str(version.version), tags=dict(version.tags))


def already_decided(cfg: PipelineConfig, fingerprint: str, champion: Champion | None) -> str | None:
    """Which registered version was already trained on exactly this data: the champion, or the challenger
    that lost to it (so a tick after a kept champion does not retrain on the same data again)."""
    if champion is None:
        return None
    if champion.fingerprint == fingerprint:
        return f"champion v{champion.version} was trained"
    challenger = Registry(cfg.tracking_uri()).alias_version(champion.name, CHALLENGER)
    if challenger is None:
        return None
    if challenger.tags.get(FINGERPRINT_TAG) == fingerprint:
        return f"challenger v{challenger.version} was trained and compared with champion v{champion.version}"
    return None


def download_model(cfg: PipelineConfig, champion: Champion) -> Path:
    """The champion's weights and manifest as local files, under <work_dir>/champions/<name>-v<version>/
    (in this machine's cache when the work dir is a URI)."""
    cache = node_cache(cfg.workflow.work_dir) / "champions"
    return Registry(cfg.tracking_uri()).download(champion.uri, cache_dir=cache).directory


def _warm_start_weights(cfg: PipelineConfig, champion_dir: Path, shard_dir: Path) -> str | None:
    """The champion's weights file when the training loop can start from it and the shapes match; else None."""
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.train.checkpoints import model_args_for
    from lstm_dist.train.trainer import fit

    if "init_weights" not in inspect.signature(fit).parameters:
        warnings.warn(
            "workflow.warm_start=true does nothing yet: lstm_dist.train.trainer.fit has no init_weights "
            "argument; the challenger trains from fresh weights",
            stacklevel=2,
        )
        return None
    saved = read_model_args(champion_dir / MODEL_FILE)
    wanted = {"model": cfg.model.model_dump(), **model_args_for(WindowDataset(str(shard_dir), split="train"))}
    if not same_build(saved, wanted):
        warnings.warn(
            "workflow.warm_start: the champion's architecture or data shape differs from this config's; "
            "the challenger trains from fresh weights",
            stacklevel=2,
        )
        return None
    return str(champion_dir / MODEL_FILE)


def _append_decision(work_dir: str, summary: RetrainSummary) -> None:
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **asdict(summary)}
    line.pop("steps", None)
    store = Store(work_dir)
    if store.local:
        with open(Path(store.join(DECISIONS_FILE)), "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
        return
    # Object stores cannot append: read and rewrite (two retrains ending at the same moment could lose a line).
    path = store.join(DECISIONS_FILE)
    before = store.read_text(path) if store.exists(path) else ""
    store.write_text(path, before + json.dumps(line, default=str) + "\n")


def print_summary(summary: RetrainSummary, *, progress=print) -> None:
    progress(f"retrain: {summary.message}")


def main(argv: list[str] | None = None) -> int:
    return script_main("pipelines.retrain", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
