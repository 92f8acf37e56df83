"""The Ray-free parts of training: steps, precision, skipped steps, accumulation, schedule, checkpoints.

Fast unit tests on in-memory windows (no shards, no Ray); `ArrayWindows` is reused by the GPU tests.
"""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
import torch

from lstm_dist.config import ModelConfig, from_dict
from lstm_dist.data.windows import DistributedWindowSampler
from lstm_dist.models import build_model
from lstm_dist.models.saved import load_model, load_weights
from lstm_dist.train.checkpoints import TrainingState, load_training_state, save_training_state
from lstm_dist.train.precision import PrecisionError, autocast, cpu_bf16_works, grad_scaler, resolve_precision
from lstm_dist.train.schedule import EarlyStopping, warmup_cosine, weight_average
from lstm_dist.train.steps import evaluate, to_device, train_epoch, train_step

CPU = torch.device("cpu")


class ArrayWindows:
    """A stand-in for `WindowDataset` over in-memory noisy sine waves: same `batch()` keys and attributes."""

    def __init__(self, *, n: int = 512, lookback: int = 24, horizon: int = 6, num_series: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        t = np.arange(n)[:, None] + np.arange(lookback + horizon)[None, :]  # [N, L + H]
        wave = np.sin(2 * np.pi * t / 12 + rng.uniform(0, 2 * np.pi, (n, 1))) + 0.1 * rng.normal(size=t.shape)
        cov = np.cos(2 * np.pi * t / 12)
        self.x = np.stack([wave, cov], axis=-1)[:, :lookback].astype(np.float32)  # [N, L, 2]
        self.y = wave[:, lookback:, None].astype(np.float32)  # [N, H, 1]
        self.series = rng.integers(0, num_series, n).astype(np.int64)
        self.horizon, self.num_targets, self.num_features, self.num_future = horizon, 1, 2, 0
        self.num_series = num_series
        scale = np.full((num_series, 1), 2.0)  # original units = scaled * 2 + 5
        self.manifest = types.SimpleNamespace(
            target_loc_scale=lambda idx: (np.full((len(idx), 1), 5.0), scale[idx]), data_config={}
        )

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        n = len(indices)
        return {
            "x": self.x[indices],
            "y": self.y[indices],
            "future": np.zeros((n, self.horizon, 0), np.float32),
            "series": self.series[indices],
        }


def small_model(ds: ArrayWindows, *, seed: int = 0, **model: object):
    torch.manual_seed(seed)
    cfg = ModelConfig.model_validate({"hidden_size": 16, **model})
    return build_model(cfg, num_features=ds.num_features, num_targets=1, horizon=ds.horizon, num_series=ds.num_series)


def run_epochs(
    ds: ArrayWindows, *, precision: str = "fp32", epochs: int = 3, seed: int = 0, net=None, **kw
) -> list[dict]:
    """A bare single-process version of the per-worker loop: what the Ray loop does, minus Ray (on `net`, or a
    fresh `small_model`)."""
    net = small_model(ds, seed=seed) if net is None else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = warmup_cosine(opt, total_steps=epochs * 8, warmup_steps=2)
    sampler = DistributedWindowSampler(len(ds), rank=0, world_size=1, seed=seed)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        stats = train_epoch(
            net, net, ds, sampler, optimizer=opt, scheduler=sched, scaler=grad_scaler(precision),
            precision=precision, device=CPU, steps=8, local_batch=32, grad_clip=1.0, **kw,
        )  # fmt: skip
        stats |= evaluate(net, ds, rank=0, world_size=1, precision=precision, device=CPU, batch_size=128)
        out.append(stats)
    return out


# ------------------------------------------------------------------ precision


def test_fp16_on_cpu_is_refused_with_a_clear_message() -> None:
    with pytest.raises(PrecisionError, match=r"fp16 needs a CUDA GPU.*bf16 or fp32"):
        resolve_precision("fp16", CPU)
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bf16_on_cpu_is_taken_where_the_cell_runs_in_it_and_refused_by_name_elsewhere(cell: str) -> None:
    # oneDNN's bf16 LSTM needs AVX-512 BF16 or AMX: on an AVX2-only CPU the forward pass raises deep in torch.
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](3, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs = bool(torch.isfinite(module(torch.randn(2, 5, 3))[0]).all())
    except RuntimeError:
        runs = False
    if runs:
        assert resolve_precision("bf16", CPU, cell=cell) == "bf16"
    else:
        with pytest.raises(
            PrecisionError, match=rf"train.precision=bf16: this CPU has no bf16 kernel for the {cell.upper()}"
        ):
            resolve_precision("bf16", CPU, cell=cell)


def test_fit_refuses_fp16_on_cpu_before_starting_workers() -> None:
    from lstm_dist.train.trainer import fit

    cfg = from_dict({"data": {"sample": {}}, "train": {"precision": "fp16", "use_gpu": "no"}})
    with pytest.raises(PrecisionError, match="train.precision=fp16"):
        fit(cfg, shard_dir="/nonexistent", storage_dir="/nonexistent", name="never")


def test_fit_refuses_fractional_gpus_with_several_workers() -> None:
    from lstm_dist.config import ConfigError
    from lstm_dist.train.trainer import fit

    cfg = from_dict({"data": {"sample": {}}, "train": {"use_gpu": "yes", "gpus_per_worker": 0.5, "num_workers": 2}})
    with pytest.raises(ConfigError, match="a whole GPU per worker"):
        fit(cfg, shard_dir="/nonexistent", storage_dir="/nonexistent", name="never")


def _gpu_yes(backend: str, **train) -> object:
    return from_dict(
        {"data": {"sample": {}}, "train": {"use_gpu": "yes", "backend": backend, "num_workers": 1, **train}}
    )


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_use_gpu_yes_without_a_gpu_here_is_refused_at_once(backend: str, monkeypatch) -> None:
    """A local Ray (or the local backend) has this machine's GPUs and never more: waiting for one would hang
    (Ray Train retries its worker group every 60 s). Run on a CPU machine, as CI is."""
    from lstm_dist.cluster import ray_gpus
    from lstm_dist.config import ConfigError
    from lstm_dist.train.trainer import fit

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if torch.cuda.is_available() or ray_gpus():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"train\.use_gpu=yes: .* 0 GPU\(s\) for 1 worker.*set train\.use_gpu=auto"):
        fit(_gpu_yes(backend), shard_dir="/nonexistent", storage_dir="/nonexistent", name="never")


def test_use_gpu_yes_on_a_joined_cluster_without_gpus_warns_and_waits(monkeypatch) -> None:
    """A cluster this run joins may gain GPUs (an autoscaler): there the run warns and waits instead."""
    from lstm_dist.train import trainer

    monkeypatch.setattr(trainer, "ray_gpus", lambda: 0.0)  # the joined cluster's count, without joining one
    cfg = _gpu_yes("ray", num_workers=2)
    cfg.workflow.ray_address = "127.0.0.1:6379"
    with pytest.warns(UserWarning, match=r"the Ray cluster has 0 GPU\(s\) for 2 worker.*waits until enough GPUs join"):
        trainer._check_gpu_count(cfg)
    monkeypatch.setattr(trainer, "ray_gpus", lambda: 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer._check_gpu_count(cfg)  # enough GPUs: silent


@pytest.mark.skipif(not cpu_bf16_works("lstm"), reason="this CPU has no bf16 LSTM kernel (AVX-512 BF16 / AMX)")
def test_bf16_path_runs_on_cpu_and_learns() -> None:
    ds = ArrayWindows()
    with autocast("bf16", CPU):
        # window_norm off: with it on, outputs are mapped back to the series' level in fp32.
        out = small_model(ds, window_norm="none")(torch.from_numpy(ds.x[:4]))
    assert out.dtype == torch.bfloat16  # autocast really is on
    hist = run_epochs(ds, precision="bf16")
    assert all(math.isfinite(h["train_loss"]) and h["skipped_steps"] == 0 for h in hist)
    assert hist[-1]["val_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["loss_scale"] == 1.0  # no GradScaler outside fp16


# ------------------------------------------------------------------ steps


def test_training_is_reproducible_and_reports_every_metric() -> None:
    a, b = run_epochs(ArrayWindows()), run_epochs(ArrayWindows())
    assert [h["val_loss"] for h in a] == [h["val_loss"] for h in b]  # bit-identical on CPU
    assert a[-1]["val_loss"] < a[0]["val_loss"]
    for key in ("train_loss", "grad_norm", "lr", "skipped_steps", "samples_per_s", "val_mae", "val_rmse"):
        assert math.isfinite(a[-1][key]), key
    assert a[-1]["train_samples"] == 8 * 32


def test_val_mae_and_rmse_are_in_original_units() -> None:
    ds = ArrayWindows(n=64)
    net = small_model(ds)
    val = evaluate(net, ds, rank=0, world_size=1, precision="fp32", device=CPU, batch_size=40)
    with torch.no_grad():
        err = (net(torch.from_numpy(ds.x))[..., 0] - torch.from_numpy(ds.y)).numpy() * 2.0  # scale 2
    assert val["val_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert val["val_rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-5)
    # Two "ranks" with disjoint halves cover the same windows: their sums add up to the whole.
    halves = [evaluate(net, ds, rank=r, world_size=2, precision="fp32", device=CPU, batch_size=40) for r in (0, 1)]
    assert np.mean([h["val_loss"] for h in halves]) == pytest.approx(val["val_loss"], rel=1e-5)


def test_a_step_with_nan_gradients_is_skipped_and_counted() -> None:
    ds = ArrayWindows(n=128)
    net = small_model(ds)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in net.parameters()]
    bad = to_device(ds.batch(np.arange(16)), CPU)
    bad["y"] = bad["y"].clone()
    bad["y"][0, 0, 0] = float("nan")
    loss, norm = train_step(net, net, [bad], optimizer=opt, scaler=grad_scaler("fp32"), precision="fp32", grad_clip=1.0)
    assert not torch.isfinite(norm)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters(), strict=True))  # no update
    assert not opt.state  # AdamW's moments were not touched either
    # Through train_epoch: the NaN batch is counted, the good steps still train.
    ds.y[5, 0, 0] = np.nan
    sampler = DistributedWindowSampler(len(ds), rank=0, world_size=1, seed=0, shuffle=False)
    sched = warmup_cosine(opt, total_steps=8, warmup_steps=0)
    stats = train_epoch(
        net, net, ds, sampler, optimizer=opt, scheduler=sched, scaler=grad_scaler("fp32"),
        precision="fp32", device=CPU, steps=8, local_batch=16, grad_clip=1.0,
    )  # fmt: skip
    assert stats["skipped_steps"] == 1.0
    assert math.isfinite(stats["grad_norm"])
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_gradient_accumulation_equals_one_big_batch() -> None:
    ds = ArrayWindows(n=64)
    batches = [to_device(ds.batch(np.arange(i, i + 16)), CPU) for i in (0, 16)]
    whole = to_device(ds.batch(np.arange(32)), CPU)
    nets = []
    for micro in (batches, [whole]):
        net = small_model(ds)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        train_step(net, net, micro, optimizer=opt, scaler=grad_scaler("fp32"), precision="fp32", grad_clip=0.5)
        nets.append(net)
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ schedule and early stopping


def test_warmup_then_cosine() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, min_ratio=0.05)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up to the peak
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # then never rises
    assert lrs[-1] == pytest.approx(0.05, abs=1e-3)  # down to min_ratio x peak
    assert lrs[55] == pytest.approx(0.05 + 0.95 * 0.5, abs=0.02)  # half-way: the cosine's midpoint


def test_early_stopping_patience_min_delta_and_state() -> None:
    stop = EarlyStopping(patience=2, min_delta=0.1)
    assert not stop.update(1.0, 1)
    assert not stop.update(0.95, 2)  # better, but by less than min_delta: a bad epoch
    assert stop.update(0.91, 3)  # second bad epoch in a row
    assert (stop.best, stop.best_epoch, stop.stopped) == (1.0, 1, True)
    again = EarlyStopping(patience=3)
    again.load_state_dict(stop.state_dict())
    assert (again.best, again.bad_epochs, again.patience) == (1.0, 2, 3)  # counters, not the new patience
    assert not EarlyStopping(patience=0).update(5.0, 1)  # 0 disables


def test_the_weight_average_follows_each_update_and_not_a_skipped_step() -> None:
    ds = ArrayWindows(n=64)
    net = small_model(ds)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    average = weight_average(net, opt, decay=0.9)
    assert weight_average(small_model(ds), opt, decay=0.0) is None  # 0 is off
    good = to_device(ds.batch(np.arange(16)), CPU)
    bad = {**good, "y": good["y"].clone()}
    bad["y"][0, 0, 0] = float("nan")
    expected, updates = None, 0
    for batch in (good, good, bad, good):
        train_step(net, net, [batch], optimizer=opt, scaler=grad_scaler("fp32"), precision="fp32", grad_clip=1.0)
        raw = [p.detach().clone() for p in net.parameters()]
        if batch is bad:
            continue
        # The first update is taken as it is; the n-th after it decays by min(0.9, (1 + n) / (10 + n)).
        d = min(0.9, (1 + updates) / (10 + updates))
        expected = raw if expected is None else [d * e + (1 - d) * r for e, r in zip(expected, raw, strict=True)]
        updates += 1
    assert int(average.n_averaged) == updates == 3
    for want, got in zip(expected, average.module.parameters(), strict=True):
        torch.testing.assert_close(got, want)
    assert not all(torch.equal(a, r) for a, r in zip(average.module.parameters(), raw, strict=True))  # it lags


def test_the_weight_average_warms_up_then_decays_as_configured() -> None:
    """Few updates: the average follows the weights (a small data set is not served its first steps' weights);
    many: the configured decay."""
    from lstm_dist.train.schedule import _warmed_up

    def after(n: int) -> float:  # one update of an average at 0 towards weights at 1, after n earlier ones
        averaged = [torch.zeros(1)]
        _warmed_up(0.99)(averaged, [torch.ones(1)], torch.tensor(n))
        return float(averaged[0])

    assert after(1) == pytest.approx(1 - 2 / 11)
    assert after(40) == pytest.approx(1 - 41 / 50)
    assert after(5000) == pytest.approx(0.01)


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_restores_everything(tmp_path) -> None:
    ds = ArrayWindows(n=64)
    net = small_model(ds)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    stop = EarlyStopping(patience=3)
    batch = to_device(ds.batch(np.arange(16)), CPU)
    train_step(net, net, [batch], optimizer=opt, scaler=grad_scaler("fp32"), precision="fp32", grad_clip=1.0)
    sched.step()
    stop.update(0.5, 1)
    args = {"model": net.cfg.model_dump(mode="json"), **net.build_args}
    history = [{"epoch": 1, "val_loss": 0.5}]
    state = TrainingState(model=net, optimizer=opt, scheduler=sched, scaler=grad_scaler("fp32"), stopper=stop)
    save_training_state(tmp_path, state, epoch=1, history=history, model_args=args)
    expected_draw = torch.rand(3)  # the RNG state saved above, drawn from

    fresh = small_model(ds, seed=1)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    sched2 = warmup_cosine(opt2, total_steps=10, warmup_steps=2)
    stop2 = EarlyStopping(patience=3)
    epoch, hist = load_training_state(
        tmp_path,
        TrainingState(model=fresh, optimizer=opt2, scheduler=sched2, scaler=grad_scaler("fp32"), stopper=stop2),
    )
    assert (epoch, hist, stop2.best) == (1, history, 0.5)
    assert torch.equal(torch.rand(3), expected_draw)
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for p, q in zip(net.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
    served = load_model(tmp_path)
    x = torch.from_numpy(ds.x[:4])
    assert torch.equal(served(x), net.eval()(x))
    warm = small_model(ds, seed=2)  # warm start (fit's init_weights): weights only, from the dir or model.pt
    load_weights(warm, tmp_path / "model.pt")
    assert torch.equal(warm.eval()(x), net(x))


def _averaged_state(ds: ArrayWindows, *, seed: int) -> TrainingState:
    net = small_model(ds, seed=seed)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    return TrainingState(
        net, opt, sched, grad_scaler("fp32"), EarlyStopping(patience=3), weight_average(net, opt, decay=0.8)
    )


def test_a_checkpoint_under_weight_averaging_serves_the_average_and_resumes_both(tmp_path) -> None:
    ds = ArrayWindows(n=64)
    batches = [to_device(ds.batch(np.arange(i, i + 16)), CPU) for i in (0, 16, 32)]

    def step(state: TrainingState, batch) -> None:
        train_step(state.model, state.model, [batch], optimizer=state.optimizer, scaler=state.scaler,
                   precision="fp32", grad_clip=1.0)  # fmt: skip
        state.scheduler.step()

    state = _averaged_state(ds, seed=0)
    for batch in batches[:2]:
        step(state, batch)
    args = {"model": state.model.cfg.model_dump(mode="json"), **state.model.build_args}
    save_training_state(tmp_path, state, epoch=1, history=[], model_args=args)
    x = torch.from_numpy(ds.x[:4])
    served = load_model(tmp_path)
    assert torch.equal(served(x), state.average.module.eval()(x))  # the model file is the average
    assert not torch.equal(served(x), state.model.eval()(x))

    resumed = _averaged_state(ds, seed=1)
    load_training_state(tmp_path, resumed)
    for run in (state, resumed):  # one more step each: the same raw weights and the same average
        step(run, batches[2])
    assert int(resumed.average.n_averaged) == int(state.average.n_averaged) == 3
    for p, q in zip(state.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(state.average.module.parameters(), resumed.average.module.parameters(), strict=True):
        assert torch.equal(p, q)


def test_an_epoch_line_shows_validation_only_when_there_was_one() -> None:
    from lstm_dist.train.loop import _epoch_line

    metrics = {"epoch": 3, "train_loss": 0.5, "val_loss": 0.25, "val_mae": 1.5, "lr": 1e-3, "samples_per_s": 900.0,
               "stopped_early": False}  # fmt: skip
    line = _epoch_line(metrics, epochs=5, label="train")
    assert line == "[train] epoch 3/5 train_loss=0.5000 val_loss=0.2500 val_mae=1.500 lr=1.00e-03 900 samples/s"
    refit = _epoch_line({**metrics, "val_loss": float("nan"), "val_mae": float("nan")}, epochs=5, label="final_fit")
    assert refit == "[final_fit] epoch 3/5 train_loss=0.5000 lr=1.00e-03 900 samples/s"


def test_an_ensemble_trains_through_the_loop_and_validates_on_its_mean() -> None:
    ds = ArrayWindows()
    net = small_model(ds, members=2)
    history = run_epochs(ds, net=net)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    members = [evaluate(m, ds, rank=0, world_size=1, precision="fp32", device=CPU, batch_size=128) for m in net.members]
    assert members[0]["val_mae"] != members[1]["val_mae"]  # two networks, not one twice
    # The mean forecast's absolute error is at most the members' mean one (Jensen), and here below it.
    assert history[-1]["val_mae"] < sum(m["val_mae"] for m in members) / 2
