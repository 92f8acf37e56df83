"""The evaluate step scores small data in the driver instead of a Ray task: the same numbers either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lstm_dist.pipelines import steps

from lstm_dist.cluster import node_cpus
from lstm_dist.config import load_config
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.windows import WindowDataset
from lstm_dist.evaluate import evaluate_checkpoint
from lstm_dist.models import build_model
from lstm_dist.models.saved import save_model
from lstm_dist.train.checkpoints import model_args_for

DEBUG = Path(__file__).resolve().parent.parent / "conf" / "debug.yaml"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Shards of the debug data and a seeded, untrained quantile network over them: (shard dir, checkpoint).
    Wider than the debug model, so a multi-threaded matmul would have room to sum in another order."""
    from lstm_dist.data.ingest import ingest

    work = tmp_path_factory.mktemp("evaluate_step")
    overrides = [f"workflow.work_dir={work}", "model.hidden_size=64", "model.loss=quantile"]
    cfg = load_config(DEBUG, overrides).resolved()
    shards = work / "shards"
    ingest(cfg.data, out_dir=str(shards), work_dir=str(work))
    torch.manual_seed(0)
    args = model_args_for(WindowDataset(str(shards), split="train"))
    ckpt = work / "ckpt"
    ckpt.mkdir()
    save_model(ckpt, model=build_model(cfg.model, **args), model_args={"model": cfg.model.model_dump(), **args})
    return shards, ckpt


def test_in_process_scores_equal_the_ray_tasks(scored, ray_local) -> None:
    shards, ckpt = scored
    threads = torch.get_num_threads()
    here = evaluate_checkpoint(str(ckpt), str(shards))
    assert torch.get_num_threads() == threads  # the driver's thread count is given back
    # As the step sends it for large data: a node's CPUs, the baselines fitted in that many processes.
    cpus = node_cpus(steps.EVAL_MAX_CPUS)
    task = steps.ray_task(evaluate_checkpoint).options(num_cpus=cpus)
    there = ray_local.get(task.remote(str(ckpt), str(shards), n_jobs=cpus))
    assert here["num_windows"] == there["num_windows"] > 0
    assert here["metrics"].keys() == there["metrics"].keys()
    assert {"ets_mase", "theta_mase", "model_pinball"} <= here["metrics"].keys()
    for key, value in there["metrics"].items():
        assert here["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert here["by_step"] == pytest.approx(there["by_step"], rel=1e-9)
    assert here["table"] == there["table"]


def test_small_data_is_scored_in_process(scored, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = Manifest.load(scored[0])
    assert steps.evaluates_in_process(manifest)  # the debug data: 4 series x 400 rows
    values = manifest.totals.num_rows * manifest.num_targets
    monkeypatch.setattr(steps, "EVAL_IN_PROCESS_MAX_VALUES", values - 1)
    assert not steps.evaluates_in_process(manifest)
    # Baselines fitted on each series' last 100 rows: a quarter of the values, in the driver again.
    assert steps.evaluates_in_process(manifest, baseline_history=100)
    monkeypatch.setattr(steps, "EVAL_IN_PROCESS_MAX_VALUES", values // 4 - 1)
    assert not steps.evaluates_in_process(manifest, baseline_history=100)
