"""Hyperparameter search: the `tune.space` of a config -> Ray Tune trials, each a real Ray Train run, or with
train.backend=local and one worker a trial, the training loop in the trial's own process.

In Ray 2.60 (Train V2) a Tune trial is a plain function that builds and fits its own `TorchTrainer`;
`TuneReportCallback` forwards each epoch's report of rank 0 to Tune, so ASHA can stop weak trials. An
in-process trial reports each epoch to Tune itself (`TuneSession`).
The space is written in the YAML config as dotted keys, one distribution each:

    tune:
      space:
        model.hidden_size: {choice: [32, 64, 128]}
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        train.batch_size: {quniform: [64, 256, 64]}

It is checked (`parse_space`) before Ray starts: unknown keys, unknown distributions, bad bounds
and values the config would refuse are reported with the key and what would be valid.
"""

from __future__ import annotations

import difflib
import functools
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lstm_dist.cluster import train_backend
from lstm_dist.config import ConfigError, PipelineConfig, from_dict

# name -> (argument shape shown in errors, number of list arguments or None for a non-empty list)
DISTRIBUTIONS: dict[str, tuple[str, int | None]] = {
    "choice": ("[v1, v2, ...]", None),
    "uniform": ("[low, high]", 2),
    "loguniform": ("[low, high] with 0 < low", 2),
    "randint": ("[low, high] integers, high excluded", 2),
    "quniform": ("[low, high, q]", 3),
}
# Sections whose keys a trial may change. data.* would need other shards per trial, tune/tracking/workflow
# are about the search itself.
SEARCHABLE_SECTIONS = ("model", "train")
# Keys that the search sets itself.
RESERVED_KEYS = {
    "train.num_workers": "each trial uses tune.workers_per_trial workers; set that instead",
    "train.epochs": "it is ASHA's budget (max_t); set train.epochs outside tune.space",
}
METRIC, MODE = "val_loss", "min"
TRIAL_DRIVER_CPUS = 0.01  # a trial only drives its TorchTrainer; its workers hold the real CPUs


@dataclass(frozen=True)
class Param:
    """One searched key: its distribution name and arguments, as written in the config."""

    key: str
    kind: str
    args: list[Any]

    def domain(self):
        """The Ray Tune domain for this parameter."""
        from ray import tune

        a = self.args
        if self.kind == "choice":
            return tune.choice(a)
        if self.kind == "uniform":
            return tune.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return tune.loguniform(a[0], a[1])
        if self.kind == "randint":
            return tune.randint(int(a[0]), int(a[1]))
        return tune.quniform(a[0], a[1], a[2])

    def corners(self) -> list[Any]:
        """Values at the edges of the distribution: every one must make a valid config."""
        a = self.args
        if self.kind == "choice":
            return list(a)
        if self.kind == "randint":
            return [int(a[0]), int(a[1]) - 1]
        if self.kind == "quniform":
            return [_quantize(a[0], a[2]), _quantize(a[1], a[2])]
        return [a[0], a[1]]


@dataclass
class TuneOutcome:
    """What the search produced: the trials table, the best trial and the config to retrain with."""

    trials: pd.DataFrame
    best_trial: str
    best_params: dict[str, Any]
    best_val_loss: float
    best_epoch: int
    final_config: PipelineConfig
    trainval_dir: Path
    """Shards whose train split is train + validation: what the final training reads."""

    def table(self) -> str:
        return format_trials(self.trials)


def parse_space(cfg: PipelineConfig) -> list[Param]:
    """Check `tune.space` against the config; raise ConfigError naming every bad key or distribution."""
    flat = cfg.flat()
    errors: list[str] = []
    params: list[Param] = []
    for key, spec in cfg.tune.space.items():
        where = f"tune.space['{key}']"
        section = key.split(".", 1)[0]
        if key not in flat:
            near = difflib.get_close_matches(key, list(flat), n=1, cutoff=0.6)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            errors.append(f"{where}: '{key}' is not a config key.{hint}")
            continue
        if section not in SEARCHABLE_SECTIONS:
            errors.append(
                f"{where}: only {', '.join(s + '.*' for s in SEARCHABLE_SECTIONS)} keys can be searched "
                f"({section}.* keys change the shards or the search itself)"
            )
            continue
        if key in RESERVED_KEYS:
            errors.append(f"{where}: cannot be searched: {RESERVED_KEYS[key]}")
            continue
        problem = _spec_problem(spec)
        if problem:
            errors.append(f"{where} = {spec!r}: {problem}")
            continue
        ((kind, args),) = spec.items()
        args = list(args) if kind == "choice" else [_number(v) for v in args]
        base = flat[key]
        if isinstance(base, int) and not isinstance(base, bool) and kind in ("uniform", "loguniform"):
            errors.append(
                f"{where}: '{key}' takes integers; use randint [low, high] or quniform [low, high, q] instead of {kind}"
            )
            continue
        param = Param(key=key, kind=kind, args=args)
        for value in param.corners():
            try:
                apply_params(cfg, {key: value})
            except ConfigError as exc:
                detail = str(exc).splitlines()[-1].strip(" -")
                errors.append(f"{where}: the value {value!r} makes an invalid config: {detail}")
                break
        else:
            params.append(param)
    for n, point in enumerate(cfg.tune.start_from):
        unknown = sorted(set(point) - set(cfg.tune.space))
        if unknown:
            errors.append(f"tune.start_from[{n}]: {unknown} not in tune.space (its keys: {sorted(cfg.tune.space)})")
            continue
        try:
            apply_params(cfg, point)
        except ConfigError as exc:
            errors.append(
                f"tune.start_from[{n}] = {point!r} makes an invalid config: {str(exc).splitlines()[-1].strip(' -')}"
            )
    if len(cfg.tune.start_from) > cfg.tune.num_samples:
        errors.append(
            f"tune.start_from has {len(cfg.tune.start_from)} points but tune.num_samples is {cfg.tune.num_samples}"
        )
    if not cfg.tune.space:
        errors.append("tune.space is empty: add at least one key, e.g. model.hidden_size: {choice: [32, 64]}")
    if cfg.tune.scheduler == "asha" and cfg.tune.grace_period > cfg.train.epochs:
        errors.append(
            f"tune.grace_period={cfg.tune.grace_period} exceeds train.epochs={cfg.train.epochs}: "
            "ASHA could never stop a trial; lower it or raise train.epochs"
        )
    if errors:
        raise ConfigError("invalid search space:\n" + "\n".join(f"  - {e}" for e in errors))
    return params


def _spec_problem(spec: Any) -> str | None:
    forms = "; ".join(f"{{{name}: {shape}}}" for name, (shape, _) in DISTRIBUTIONS.items())
    if not isinstance(spec, dict) or len(spec) != 1:
        return f"write one distribution per key, one of: {forms}"
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        near = difflib.get_close_matches(str(kind), list(DISTRIBUTIONS), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        return f"unknown distribution '{kind}'.{hint} Valid: {forms}"
    shape, size = DISTRIBUTIONS[kind]
    if not isinstance(args, list) or not args or (size is not None and len(args) != size):
        return f"{kind} takes a list {shape}"
    if kind == "choice":
        return None
    args = [_number(v) for v in args]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in args):
        return f"{kind} takes numbers {shape}"
    low, high = args[0], args[1]
    if not low < high:
        return f"{kind} needs low < high, got low={low} high={high}"
    if kind == "loguniform" and low <= 0:
        return f"loguniform needs 0 < low, got low={low}"
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        return f"randint takes integers {shape}"
    if kind == "quniform" and args[2] <= 0:
        return f"quniform needs a step q > 0, got q={args[2]}"
    return None


def _number(value: Any) -> Any:
    """YAML reads 1e-4 (no dot) as a string; take it as the number it plainly is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _quantize(value: float, q: float) -> float:
    return round(value / q) * q


def apply_params(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """A copy of `cfg` with dotted keys set to sampled values (floats that are whole numbers kept as ints
    where the config holds an int, as quniform samples 64.0 for 64)."""
    tree = cfg.model_dump(mode="json")
    for key, value in params.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        if isinstance(node.get(leaf), int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        node[leaf] = value
    return from_dict(tree, source="tune.space")


def trial_config(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """The config one trial trains with: sampled values, tune.workers_per_trial workers (on Ray Train unless the
    trial trains in its own process, `in_process_trials`)."""
    trial = apply_params(cfg, params)
    if not in_process_trials(cfg):
        trial.train.backend = "ray"
    trial.train.num_workers = cfg.tune.workers_per_trial
    return trial


def in_process_trials(cfg: PipelineConfig) -> bool:
    """Whether each trial trains in its own Tune process (train.backend local, or auto resolved to it; one worker a
    trial) instead of driving a Ray Train run: no Ray Train start-up per trial, which on small data is most of a
    trial."""
    return train_backend(cfg) == "local" and cfg.tune.workers_per_trial == 1


def max_concurrent(cfg: PipelineConfig, resources: dict[str, float], *, gpu: bool) -> int:
    """tune.max_concurrent_trials, or as many trials as the cluster's CPUs (GPUs) can hold at once.

    A Train run starts only when all its workers fit, so more trials in flight would just wait
    (and on a small machine can time out in worker-group startup)."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    workers = cfg.tune.workers_per_trial
    fit = int(resources.get("CPU", 1) // (workers * cfg.train.cpus_per_worker))
    if gpu:
        gpus_per_worker = getattr(cfg.train, "gpus_per_worker", 1.0)  # a fraction lets trials share a GPU
        fit = min(fit, int(resources.get("GPU", 0) // (workers * gpus_per_worker)))
    return max(1, min(fit, cfg.tune.num_samples))


class TuneSession:
    """A trial's own process as rank 0 of 1 (train.backend=local): its checkpoints and reports go to Ray Tune,
    which keeps them in the trial's directory and gives the latest back when the trial restarts."""

    rank, world_size = 0, 1

    def __init__(self, device) -> None:
        self.device = device

    def prepare(self, net):
        return net.to(self.device)

    def restored(self) -> AbstractContextManager[Path | None]:
        import ray.tune

        from lstm_dist.train.loop import checkpoint_dir

        return checkpoint_dir(ray.tune.get_checkpoint())  # Ray: the trial's latest checkpoint when it is restarted

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        import ray.tune

        ckpt = ray.tune.Checkpoint.from_directory(checkpoint) if checkpoint else None
        ray.tune.report(metrics, checkpoint=ckpt)  # Ray: to the scheduler (ASHA) and the trial's directory


def _local_trial(params: dict[str, Any], *, base: dict[str, Any], shard_dir: str, **_) -> None:
    """One Tune trial in its own process: the training loop with this trial's config (in_process_trials)."""
    import ray
    import torch

    from lstm_dist.train.loop import run_loop

    cfg = trial_config(PipelineConfig.model_validate(base), params)
    device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")  # Ray: the GPU given to this trial, if any
    loop_config = {"pipeline": cfg.model_dump(mode="json"), "shard_dir": shard_dir, "train_split": "train"}
    run_loop(loop_config, TuneSession(device))


def _trial(params: dict[str, Any], *, base: dict[str, Any], shard_dir: str, storage_dir: str, groups) -> None:
    """One Tune trial: build this trial's config and run a full Ray Train fit with it."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lstm_dist.ray_compat import placement_group_callbacks
    from lstm_dist.train.trainer import fit

    cfg = trial_config(PipelineConfig.model_validate(base), params)
    trial_id = ray.tune.get_context().get_trial_id()  # Ray: unique, stable across trial restarts
    fit(
        cfg,
        shard_dir=shard_dir,
        storage_dir=storage_dir,
        name=f"trial_{trial_id}",
        callbacks=[
            TuneReportCallback(),  # Ray: forward rank 0's epoch reports to Tune (and ASHA)
            *placement_group_callbacks(lambda group: groups.add.remote(trial_id, group)),
        ],
    )


# Ray 2.60: the placement group a Train run reserves for its workers lives as long as the job, not as long
# as the Train controller that made it. A Tune trial's controller is killed with the trial (always when
# ASHA stops it, and often right after a normal finish), before it removes that group: each trial would
# leave its workers' CPUs/GPUs reserved, and later trials wait for them forever. So every trial reports
# its groups to a small actor, and the search removes them when the trial ends.


@functools.cache
def _group_registry_class():
    import ray

    @ray.remote(num_cpus=0)
    class PlacementGroupRegistry:
        def __init__(self) -> None:
            self.groups: dict[str, list] = {}  # trial id -> its PlacementGroup handles

        def add(self, trial_id: str, group) -> None:
            self.groups.setdefault(trial_id, []).append(group)

        def pop(self, trial_id: str | None = None) -> list:
            if trial_id is None:
                every = [g for groups in self.groups.values() for g in groups]
                self.groups.clear()
                return every
            return self.groups.pop(trial_id, [])

    return PlacementGroupRegistry


def _remove_groups(groups: list) -> None:
    from ray.util.placement_group import remove_placement_group

    for group in groups:
        try:
            remove_placement_group(group)
        except Exception:  # already removed by its controller
            pass


def _cleanup_callback(groups):
    from ray.tune import Callback

    class RemoveTrialGroups(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            import ray

            _remove_groups(ray.get(groups.pop.remote(trial.trial_id)))

        on_trial_error = on_trial_complete

    return RemoveTrialGroups()


def run_tune(
    cfg: PipelineConfig,
    *,
    shard_dir: str,
    out_dir: str | Path,
    tracker=None,
    progress=print,
    trial_shards: str | None = None,
) -> TuneOutcome:
    """Run the search on the connected Ray cluster; returns the trials table and the best config.

    `trial_shards`: what the trials' workers open instead of the driver's `shard_dir`, e.g. the shards'
    locator in an object-store work dir (`StepResult.file("shards")`), which each node reads through its
    own copy (`storage.local_copy`).
    With a `tracker` (the tune step's run), each trial becomes a nested run under it, and the trials
    table (CSV/JSON) and a plot of every trial's validation loss are logged there."""
    import ray

    from lstm_dist.cluster import resources
    from lstm_dist.train.trainer import use_gpu

    params = parse_space(cfg)
    out_dir = Path(out_dir)
    concurrent = max_concurrent(cfg, resources(), gpu=use_gpu(cfg))
    scheduler = _scheduler(cfg)
    groups = _group_registry_class().remote()
    progress(
        f"[tune] {cfg.tune.num_samples} trials, {cfg.tune.search} search, scheduler {cfg.tune.scheduler}, "
        f"{concurrent} at a time, {cfg.tune.workers_per_trial} worker(s) each"
        + (f", budget {cfg.tune.time_budget_s:.0f}s" if cfg.tune.time_budget_s else "")
    )
    started = time.time()
    tuner = _tuner(
        cfg,
        params=params,
        scheduler=scheduler,
        concurrent=concurrent,
        groups=groups,
        shard_dir=trial_shards or shard_dir,
        out_dir=out_dir,
    )
    try:
        grid = tuner.fit()
    finally:
        _remove_groups(ray.get(groups.pop.remote()))
        ray.kill(groups)
    trials = trials_table(grid, params=params, max_epochs=cfg.train.epochs, stopped_at=scheduler.stopped_at)
    budget_hit = bool(cfg.tune.time_budget_s) and time.time() - started >= cfg.tune.time_budget_s
    if budget_hit:
        progress(f"[tune] time budget of {cfg.tune.time_budget_s:.0f}s reached; trials still running were stopped")
    outcome = _outcome(cfg, trials, params=params, errors=grid.errors, shard_dir=shard_dir, out_dir=out_dir)
    trials.drop(columns=["history"], errors="ignore").to_csv(out_dir / "trials.csv", index=False)
    if tracker is not None:
        _log(tracker, outcome, out_dir=out_dir, budget_hit=budget_hit)
    return outcome


def _scheduler(cfg: PipelineConfig):
    """ASHA or FIFO, recording the epoch at which each trial was stopped."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "asha":
        return _recording(ASHAScheduler)(
            max_epochs=cfg.train.epochs,
            time_attr="epoch",
            max_t=cfg.train.epochs,
            grace_period=cfg.tune.grace_period,
            reduction_factor=cfg.tune.reduction_factor,
        )
    return _recording(FIFOScheduler)(max_epochs=cfg.train.epochs)


def _tuner(cfg: PipelineConfig, *, params, scheduler, concurrent: int, groups, shard_dir: str, out_dir: Path):
    """The Tuner: one function trial per sample, each driving its own TorchTrainer or training in its own process
    (`in_process_trials`)."""
    from ray import tune

    local = in_process_trials(cfg)
    trainable = tune.with_parameters(
        _local_trial if local else _trial,
        base=cfg.model_dump(mode="json"),
        shard_dir=shard_dir,
        storage_dir=str(out_dir / "train"),
        groups=groups,
    )
    return tune.Tuner(
        tune.with_resources(trainable, _trial_resources(cfg, local=local)),
        param_space={p.key: p.domain() for p in params},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            num_samples=cfg.tune.num_samples,
            scheduler=scheduler,
            # The random search's generator limits concurrency itself: Tune ignores max_concurrent_trials
            # for it (it only wraps a Searcher such as Optuna's in a ConcurrencyLimiter).
            search_alg=_search_alg(cfg, max_concurrent=concurrent),
            max_concurrent_trials=None if cfg.tune.search == "random" else concurrent,
            time_budget_s=cfg.tune.time_budget_s or None,
            trial_dirname_creator=lambda trial: trial.trial_id,  # short paths: no config values in names
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(out_dir),
            verbose=1,
            callbacks=[_cleanup_callback(groups)],
            # In-process trials keep checkpoints as a Ray Train run would (train/trainer._run_config).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints,
                checkpoint_score_attribute=METRIC,
                checkpoint_score_order=MODE,
            ),
        ),
    )


def _trial_resources(cfg: PipelineConfig, *, local: bool) -> dict[str, float]:
    """An in-process trial holds what its one worker would; a Ray Train trial only drives its workers."""
    from lstm_dist.train.trainer import use_gpu

    if not local:
        return {"cpu": TRIAL_DRIVER_CPUS}
    return {"cpu": cfg.train.cpus_per_worker, **({"gpu": cfg.train.gpus_per_worker} if use_gpu(cfg) else {})}


def _outcome(cfg: PipelineConfig, trials: pd.DataFrame, *, params, errors, shard_dir: str, out_dir: Path):
    """The best trial among those that reported a validation loss, and the config to train it on train + val."""
    ok = trials[trials["best_val_loss"].notna()]
    if ok.empty:
        first = "; ".join(_last_line(e) for e in errors[:3])
        raise RuntimeError(f"no tune trial reported a validation loss ({len(trials)} trials). First errors: {first}")
    best = ok.sort_values("best_val_loss").iloc[0]
    best_params = {p.key: _plain(best[p.key]) for p in params}
    best_epoch = int(best["best_epoch"])
    return TuneOutcome(
        trials=trials,
        best_trial=str(best["trial_id"]),
        best_params=best_params,
        best_val_loss=float(best["best_val_loss"]),
        best_epoch=best_epoch,
        final_config=final_config(cfg, best_params, epochs=best_epoch),
        trainval_dir=trainval_view(shard_dir, out_dir / "trainval_shards"),
    )


def _log(tracker, outcome: TuneOutcome, *, out_dir: Path, budget_hit: bool) -> None:
    from lstm_dist import plots
    from lstm_dist.tracking import log_trials

    log_trials(tracker, outcome.trials, best_trial=outcome.best_trial)
    tracker.log_table(outcome.trials.drop(columns=["history"], errors="ignore"), "tune/trials")
    tracker.log_artifact(plots.tune_trials(outcome.trials, out_dir / "tune_trials.png"), artifact_path="plots")
    tracker.log_params({f"best.{k}": v for k, v in outcome.best_params.items()})
    tracker.log_metrics({"best_val_loss": outcome.best_val_loss, "best_epoch": outcome.best_epoch})
    stopped = outcome.trials["stopped"]
    tracker.set_tags(
        {
            "tune.best_trial": outcome.best_trial,
            "tune.num_trials": len(outcome.trials),
            "tune.stopped_by_scheduler": int((stopped == "scheduler").sum()),
            "tune.errors": int((stopped == "error").sum()),
            "tune.time_budget_hit": str(budget_hit).lower(),
        }
    )


def final_config(cfg: PipelineConfig, params: dict[str, Any], *, epochs: int) -> PipelineConfig:
    """The best trial's config for the last training on train + validation.

    Validation is then part of the training data, so it can neither pick a checkpoint nor stop early:
    train for the epochs at which the best trial reached its best validation loss, with patience off."""
    final = apply_params(cfg, params)
    final.train.epochs = max(1, epochs)
    final.train.patience = 0
    # Without validation every epoch scores alike; keep them all so the last one (the model) is never pruned.
    final.train.keep_checkpoints = max(final.train.keep_checkpoints, final.train.epochs)
    final.tune.enabled = False
    return final


def trainval_view(shard_dir: str | Path, out_dir: str | Path) -> Path:
    """A shard directory whose `train` split is train + validation of `shard_dir`, for the final training.

    The shard files are hard-linked (copied across filesystems); only the manifest changes: each series'
    validation part starts where its test part starts, so `train` windows reach up to the test part
    (windows straddling the old boundary included) and `val` is empty. Scaler stats stay as fitted on
    the train part, so the model's inputs mean the same as during the search; `test` is unchanged."""
    from lstm_dist.data.manifest import SUCCESS_FILE, Manifest
    from lstm_dist.data.splits import SPLITS
    from lstm_dist.storage import link_or_copy

    src, out = Path(shard_dir), Path(out_dir)
    m = Manifest.load(src)
    out.mkdir(parents=True, exist_ok=True)
    for shard in m.shards:
        target = out / shard.file
        if not target.exists():
            link_or_copy(src / shard.file, target)
    view = m.model_copy(deep=True)
    for info in view.series:
        info.val_start = info.test_start
    totals = dict.fromkeys(SPLITS, 0)
    for shard in view.shards:
        shard.windows = dict.fromkeys(SPLITS, 0)
        for seg in shard.segments:
            for split in SPLITS:
                count = view.segment_starts(seg, split)[1]
                seg.windows[split] = count
                shard.windows[split] += count
                totals[split] += count
    view.totals.windows = totals
    view.save(out)
    (out / SUCCESS_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return out


def _search_alg(cfg: PipelineConfig, *, max_concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    points = [dict(p) for p in cfg.tune.start_from] or None
    if cfg.tune.search == "random":
        # Seeded, so the same config samples the same trials; at most `max_concurrent` trials run at once.
        return BasicVariantGenerator(
            random_state=cfg.train.seed, points_to_evaluate=points, max_concurrent=max_concurrent
        )
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "tune.search=optuna needs the optional optuna package: pip install 'lstm_dist[optuna]' "
            "(or set tune.search=random)"
        ) from None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.train.seed), points_to_evaluate=points)


def _recording(scheduler_cls):
    """The scheduler class, noting the epoch at which it stopped each trial (`stopped_at`).

    A stopped trial's Train run may finish an epoch or two already under way before the trial is killed,
    so the epochs it ran do not tell by themselves whether the scheduler stopped it."""
    from ray.tune.schedulers import TrialScheduler

    class Recording(scheduler_cls):
        def __init__(self, *args, max_epochs: int, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.max_epochs = max_epochs
            self.stopped_at: dict[str, int] = {}

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            # ASHA also says STOP at max_t: that is the end of the budget, not an early stop.
            early = int(result.get("epoch", 0)) < self.max_epochs
            if decision == TrialScheduler.STOP and early and trial.trial_id not in self.stopped_at:
                self.stopped_at[trial.trial_id] = int(result.get("epoch", 0))
            return decision

    Recording.__name__ = Recording.__qualname__ = scheduler_cls.__name__
    return Recording


def trials_table(
    grid, *, params: list[Param], max_epochs: int, stopped_at: dict[str, int] | None = None
) -> pd.DataFrame:
    """One row per trial: sampled values, best val loss (and its epoch), epochs run, why it stopped.

    `stopped`: "scheduler" (ASHA stopped it, or the time budget ended it), "patience" (its own early
    stopping), "error", or "no" (it ran train.epochs); `stopped_at` is the epoch of the scheduler's decision;
    `started_at`, `ended_at`: when the trial ran (unix seconds, from its reports)."""
    stopped_at = stopped_at or {}
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        config = result.config or {}
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update({p.key: _plain(config.get(p.key)) for p in params})
        if history is None or history.empty or METRIC not in history:
            row.update(
                best_val_loss=float("nan"),
                best_epoch=0,
                epochs=0,
                stopped="error" if result.error else "no",
                stopped_at=0,
            )
            row["error"] = _last_line(result.error) if result.error else ""
            rows.append(row)
            continue
        history = history.sort_values("epoch")
        best_idx = history[METRIC].idxmin()
        epochs = int(history["epoch"].max())
        patience_stop = bool(history["stopped_early"].iloc[-1]) if "stopped_early" in history else False
        if result.error:
            stopped = "error"
        elif trial_id in stopped_at or (epochs < max_epochs and not patience_stop):
            stopped = "scheduler"  # ASHA's decision (or the time budget)
        elif patience_stop:
            stopped = "patience"
        else:
            stopped = "no"
        row.update(
            best_val_loss=float(history.loc[best_idx, METRIC]),
            best_epoch=int(history.loc[best_idx, "epoch"]),
            epochs=epochs,
            stopped=stopped,
            stopped_at=stopped_at.get(trial_id, 0),
            error=_last_line(result.error) if result.error else "",
        )
        if {"timestamp", "time_total_s"} <= set(history.columns):  # when it ran (unix seconds)
            row["ended_at"] = float(history["timestamp"].max())
            row["started_at"] = row["ended_at"] - float(history["time_total_s"].max())
        row["history"] = history[[c for c in history.columns if _is_epoch_metric(c)]].to_dict("list")
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("best_val_loss", na_position="last").reset_index(drop=True)


def _last_line(error: BaseException) -> str:
    """The line of a (remote) traceback that says what went wrong: its last non-empty one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _is_epoch_metric(column: str) -> bool:
    skip = {"trial_id", "date", "hostname", "node_ip", "pid", "done", "checkpoint_path", "experiment_tag"}
    return column not in skip and not column.startswith(("config/", "time_", "timestamp", "iterations_"))


def format_trials(trials: pd.DataFrame) -> str:
    """The trials table as text: one line per trial, best first."""
    keys = [c for c in trials.columns if "." in c]
    show = trials[["trial_id", *keys, "best_val_loss", "best_epoch", "epochs", "stopped"]].copy()
    show["best_val_loss"] = show["best_val_loss"].map(lambda v: f"{v:.5f}")
    for key in keys:
        show[key] = show[key].map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    return show.to_string(index=False)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python, for configs, params and JSON."""
    return value.item() if hasattr(value, "item") else value
