"""Training on a real local Ray (CPU workers, gloo): DDP equivalence, a pinned loss, a killed worker, --resume.

Every fit here uses the same tiny config, so their final losses can be compared exactly: a run that
lost a worker mid-epoch, or was stopped and resumed, must end where an uninterrupted run ends.
Four Ray Train fits of ~20-60 s each (worker-group start dominates on 2 cores), one in-process fit and a Tune
search of one Ray Train trial.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from lstm_dist.config import from_dict
from lstm_dist.train.checkpoints import load_history
from lstm_dist.train.loop import FAIL_ENV

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

# Frozen here, not read from conf/: the pinned-loss test depends on every number of it.
CONFIG = {
    "data": {
        "sample": {"num_series": 4, "num_steps": 400, "seed": 0},
        "target_cols": ["target"],
        "covariate_cols": ["temperature"],
        "lookback": 48,
        "horizon": 12,
        "stride": 2,
        "val_size": 0.15,
        "test_size": 0.15,
    },
    "model": {"hidden_size": 16, "window_norm": "none"},  # the pinned loss predates window normalisation
    "train": {
        "num_workers": 2,
        "epochs": 3,
        "batch_size": 32,  # global: 16 per worker with 2 workers
        "max_steps_per_epoch": 6,
        "lr": 0.01,
        "warmup_frac": 0.1,
        "patience": 0,
        "seed": 7,
        "keep_checkpoints": 1,
        "max_failures": 1,
    },
    "tracking": {"register_model": False},
}

# Final validation loss of the 1-worker run of CONFIG (torch 2.13 CPU). If a deliberate change to the
# model, the loss, the optimizer or the data moves it, update it here and say why in the commit.
PINNED_VAL_LOSS = 1.0049587


def config(work_dir: Path, **train: object):
    cfg = from_dict({**CONFIG, "train": {**CONFIG["train"], **train}, "workflow": {"work_dir": str(work_dir)}})
    return cfg.resolved()


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Ray Train's checkpoint directories of a run, oldest first (names carry the time)."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lstm_dist.data.ingest import ingest

    work = tmp_path_factory.mktemp("train_ray")
    cfg = config(work)
    ingest(cfg.data, out_dir=str(work / "shards"), work_dir=str(work))
    return work / "shards"


@pytest.fixture(scope="module")
def reference(shards: Path):
    """The uninterrupted 2-worker run every other 2-worker run is compared with."""
    from lstm_dist.train.trainer import fit

    work = shards.parent
    return fit(config(work), shard_dir=str(shards), storage_dir=str(work / "runs"), name="reference")


@pytest.fixture(scope="module")
def single(shards: Path):
    """The 1-worker run, in this process (train.backend=local: the weights of a 1-worker Ray Train run,
    tests/test_e2e.py), which spares this module one Ray Train start-up."""
    from lstm_dist.train.trainer import fit

    work = shards.parent
    cfg = config(work, num_workers=1, backend="local")
    return fit(cfg, shard_dir=str(shards), storage_dir=str(work / "runs"), name="single")


def test_two_workers_match_one_worker_with_the_same_global_batch(reference, single) -> None:
    two, one = reference.history, single.history
    assert list(two["epoch"]) == list(one["epoch"]) == [1, 2, 3]
    # Rank r takes positions r, r+2, ... of the epoch's permutation, so a 2-worker step sees the same
    # 32 windows as the 1-worker step; only the order of float sums differs (DDP averages gradients).
    for key in ("train_loss", "val_loss", "val_mae", "grad_norm"):
        assert list(two[key]) == pytest.approx(list(one[key]), rel=2e-3), key
    assert list(two["train_samples"]) == list(one["train_samples"]) == [6 * 32] * 3
    assert two["val_loss"].iloc[-1] < two["val_loss"].iloc[0]  # it learns


def test_pinned_final_loss_of_a_fixed_single_worker_run(single) -> None:
    final = single.history["val_loss"].iloc[-1]
    print(f"final val_loss of the pinned run: {final!r}")
    assert final == pytest.approx(PINNED_VAL_LOSS, abs=1e-4)


def test_metrics_and_checkpoints_of_a_run(reference) -> None:
    h = reference.history
    for key in ("train_loss", "val_loss", "val_mae", "val_rmse", "lr", "grad_norm", "loss_scale", "skipped_steps",
                "samples_per_s", "samples_per_cpu_s", "epoch_time_s", "peak_gpu_mem_mb", "best_val_loss"):  # fmt: skip
        assert key in h and h[key].notna().all(), key
    assert (h["skipped_steps"] == 0).all() and (h["loss_scale"] == 1.0).all()  # fp32 on CPU
    # keep_checkpoints=1: the best by val_loss plus the latest (kept for resuming), no more.
    assert reference.latest_checkpoint in reference.checkpoints and reference.best_checkpoint in reference.checkpoints
    assert len(reference.checkpoints) <= 2
    assert checkpoint_dirs(reference.run_dir) == reference.checkpoints


def test_the_pipeline_resumes_a_ray_train_run_from_its_newest_complete_checkpoint(reference, tmp_path) -> None:
    """The train step's resume point (pipelines/steps._resume_point) on a copy of a real Ray Train run: Ray's
    snapshot names the latest checkpoint, but a kill between a checkpoint's write and the snapshot's leaves the
    snapshot one behind: the newest complete checkpoint beside it wins, an incomplete one does not."""
    from lstm_dist.pipelines.steps import _resume_point

    from lstm_dist.train.checkpoints import MODEL_FILE, STATE_JSON
    from lstm_dist.train.trainer import SNAPSHOT_FILE

    run = tmp_path / "runs" / "reference"
    shutil.copytree(reference.run_dir, run)
    latest = reference.latest_checkpoint.name
    assert _resume_point(str(tmp_path / "runs"), "reference") == (latest, 3)
    # The snapshot still names an older checkpoint (epoch 1) than the one on disk.
    older = run / "checkpoint_0000-older"
    shutil.copytree(run / latest, older)
    (older / STATE_JSON).write_text(json.dumps({**json.loads((older / STATE_JSON).read_text()), "epoch": 1}))
    snapshot = json.loads((run / SNAPSHOT_FILE).read_text())
    snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] = older.name
    snapshot["latest_checkpoint_result"]["metrics"]["epoch"] = 1
    (run / SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    (run / "checkpoint_9999-partial").mkdir()  # killed while writing: only the weights made it
    shutil.copy(run / latest / MODEL_FILE, run / "checkpoint_9999-partial" / MODEL_FILE)
    assert _resume_point(str(tmp_path / "runs"), "reference") == (latest, 3)
    assert _resume_point(str(tmp_path / "runs"), "missing") is None


def test_a_worker_killed_mid_epoch_restarts_from_the_last_checkpoint(shards, reference, monkeypatch) -> None:
    from lstm_dist.train.trainer import fit

    work = shards.parent
    marker = work / "killed-once"
    # Rank 1 dies (os._exit) at step 2 of the second epoch; max_failures=1 lets Ray restart the group.
    monkeypatch.setenv(FAIL_ENV, f"1:2:1:{marker}")
    result = fit(config(work), shard_dir=str(shards), storage_dir=str(work / "runs"), name="killed")
    assert marker.exists()  # the kill really happened
    assert list(result.history["epoch"]) == [1, 2, 3]  # epoch 2 ran again in full, once in the history
    assert list(result.history["resumed_from_epoch"]) == [0, 1, 1]  # restarted from epoch 1's checkpoint
    # Restored model, optimizer, scheduler and sampler/dropout seeds: the same numbers as never killed.
    for key in ("train_loss", "val_loss", "val_mae"):
        assert list(result.history[key]) == pytest.approx(list(reference.history[key]), rel=1e-6), key


def test_cli_train_resume_continues_a_stopped_run_without_repeating_epochs(shards, reference, monkeypatch) -> None:
    from lstm_dist.cli import app

    work = shards.parent / "cli"
    conf = work / "train.yaml"
    work.mkdir()
    conf.write_text(yaml.safe_dump({**CONFIG, "workflow": {"work_dir": str(work)}}))
    runner = CliRunner()

    # A run that dies in its second epoch with no restarts left: stopped after epoch 1.
    monkeypatch.setenv(FAIL_ENV, f"1:2:0:{work / 'killed-once'}")
    stopped = runner.invoke(app, ["train", str(conf), "--shards", str(shards), "train.max_failures=0"])
    assert stopped.exit_code != 0
    (run_dir,) = (work / "train_runs").iterdir()
    (epoch_one,) = load_history(checkpoint_dirs(run_dir)[-1])  # what the stopped run saved
    monkeypatch.delenv(FAIL_ENV)

    resumed = runner.invoke(app, ["train", str(conf), "--resume", run_dir.name])
    assert resumed.exit_code == 0, resumed.output
    assert "best checkpoint:" in resumed.output and "--resume " + run_dir.name in resumed.output
    assert f"run:               {run_dir}" in resumed.output
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert list(history["resumed_from_epoch"]) == [0, 1, 1]
    for key in ("train_loss", "val_loss"):
        assert list(history[key]) == pytest.approx(list(reference.history[key]), rel=1e-6), key
    # Epoch 1 was not run again: its row, wall time included, is the one the stopped run saved.
    assert history["epoch_time_s"].iloc[0] == pytest.approx(epoch_one["epoch_time_s"], rel=1e-9)


def test_tune_trials_on_ray_train_train_like_a_local_run_and_release_their_workers(shards, single) -> None:
    """tune with train.backend=ray: each trial drives its own Ray Train run (the ASHA search of
    tests/test_tracking_server.py trains its trials in their own processes instead)."""
    from ray.util import placement_group_table

    from lstm_dist.tune import run_tune

    work = shards.parent
    # One trial (each costs a Ray Train start-up): CONFIG's own values, sampled from a one-value space.
    tune = {"enabled": True, "num_samples": 1, "scheduler": "none", "space": {"train.lr": {"choice": [0.01]}}}
    cfg = from_dict({**CONFIG, "tune": tune, "workflow": {"work_dir": str(work)}}).resolved()
    groups_before = set(placement_group_table())
    outcome = run_tune(cfg, shard_dir=str(shards), out_dir=work / "tune_ray", progress=lambda line: None)
    trials = outcome.trials
    assert len(trials) == 1 and list(trials["stopped"]) == ["no"], trials
    assert len(list((work / "tune_ray" / "train").glob("trial_*/checkpoint_manager_snapshot.json"))) == 1
    # The trial is the 1-worker run of CONFIG: the same losses as the in-process run, epoch by epoch.
    assert trials["history"][0]["val_loss"] == pytest.approx(list(single.history["val_loss"]), rel=1e-6)
    # Every placement group a trial reserved for its workers is gone (tune._group_registry_class).
    new = {k: v for k, v in placement_group_table().items() if k not in groups_before}
    assert new and all(g["state"] == "REMOVED" for g in new.values()), new


def test_cli_train_names_what_is_missing(tmp_path) -> None:
    from lstm_dist.cli import app

    conf = tmp_path / "train.yaml"
    conf.write_text(yaml.safe_dump({**CONFIG, "workflow": {"work_dir": str(tmp_path)}}))
    out = CliRunner().invoke(app, ["train", str(conf)])
    assert out.exit_code == 2 and "--shards" in out.output
    out = CliRunner().invoke(app, ["train", str(conf), "--resume", "nope"])
    assert out.exit_code != 0 and "no training run with checkpoints" in (out.output + str(out.exception))
    assert os.environ.get(FAIL_ENV) is None
