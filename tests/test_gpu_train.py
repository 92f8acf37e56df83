"""The CUDA path of training: fp16 autocast + GradScaler, skipped inf steps, NCCL DDP, resume on the GPU.

Run on a CUDA machine: `python3 -m pytest -m gpu tests/test_gpu_train.py` (no Ray needed: these use the
Ray-free steps, and DDP through plain torch.distributed with one NCCL rank). Skipped without CUDA.
"""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from test_train_steps import ArrayWindows, small_model

from lstm_dist.data.windows import DistributedWindowSampler
from lstm_dist.train.checkpoints import TrainingState, load_training_state, save_training_state
from lstm_dist.train.precision import grad_scaler, resolve_precision
from lstm_dist.train.schedule import EarlyStopping, warmup_cosine
from lstm_dist.train.steps import evaluate, to_device, train_epoch, train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda", 0)


def cuda_model(ds, **kw):
    return small_model(ds, **kw).to(CUDA)


def epochs_on_gpu(ds, *, precision: str, model=None, net=None, epochs: int = 3) -> list[dict]:
    net = net or cuda_model(ds)
    model = model or net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = warmup_cosine(opt, total_steps=epochs * 8, warmup_steps=2)
    scaler = grad_scaler(precision)
    sampler = DistributedWindowSampler(len(ds), rank=0, world_size=1, seed=0)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        stats = train_epoch(
            model, net, ds, sampler, optimizer=opt, scheduler=sched, scaler=scaler,
            precision=precision, device=CUDA, steps=8, local_batch=32, grad_clip=1.0,
        )  # fmt: skip
        stats |= evaluate(net, ds, rank=0, world_size=1, precision=precision, device=CUDA, batch_size=128)
        out.append(stats)
    return out


def test_auto_precision_is_fp16_on_cuda() -> None:
    assert resolve_precision("auto", CUDA) == "fp16"


def test_fp16_trains_with_a_live_grad_scaler_and_fp32_master_weights() -> None:
    ds = ArrayWindows()
    hist = epochs_on_gpu(ds, precision="fp16")
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert hist[-1]["val_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["loss_scale"] > 1.0  # the scaler is on (starts at 2**16, halves on overflow)
    fp32 = epochs_on_gpu(ds, precision="fp32")
    assert hist[-1]["val_loss"] == pytest.approx(fp32[-1]["val_loss"], rel=0.2)  # same learning, other rounding


def test_bf16_runs_on_cuda() -> None:
    hist = epochs_on_gpu(ArrayWindows(), precision="bf16")
    assert math.isfinite(hist[-1]["val_loss"]) and hist[-1]["loss_scale"] == 1.0


def test_an_fp16_overflow_skips_the_step_halves_the_scale_and_is_counted() -> None:
    ds = ArrayWindows(n=128)
    net = cuda_model(ds)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    scaler = grad_scaler("fp16")
    good = to_device(ds.batch(np.arange(32)), CUDA)
    train_step(net, net, [good], optimizer=opt, scaler=scaler, precision="fp16", grad_clip=1.0)
    scale = scaler.get_scale()
    before = [p.detach().clone() for p in net.parameters()]
    bad = {**good, "y": good["y"].clone()}
    bad["y"][0, 0, 0] = 1e5  # the fp32 loss is finite, but its gradient x the scale overflows fp16
    _, norm = train_step(net, net, [bad], optimizer=opt, scaler=scaler, precision="fp16", grad_clip=1.0)
    assert not torch.isfinite(norm)
    assert scaler.get_scale() == scale / 2
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters(), strict=True))
    # Counted through train_epoch, and training goes on afterwards.
    ds.y[3, 0, 0] = 1e5
    sampler = DistributedWindowSampler(len(ds), rank=0, world_size=1, seed=0, shuffle=False)
    stats = train_epoch(
        net, net, ds, sampler, optimizer=opt, scheduler=warmup_cosine(opt, total_steps=4, warmup_steps=0),
        scaler=scaler, precision="fp16", device=CUDA, steps=4, local_batch=32, grad_clip=1.0,
    )  # fmt: skip
    assert stats["skipped_steps"] >= 1 and math.isfinite(stats["grad_norm"])
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.fixture()
def nccl_group():
    with socket.socket() as s:  # a free port from the OS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_over_nccl_matches_the_bare_model(nccl_group) -> None:
    ds = ArrayWindows()
    net = cuda_model(ds)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[0])
    # train_epoch and evaluate all-reduce their totals: over NCCL those must be CUDA tensors.
    with_ddp = epochs_on_gpu(ds, precision="fp16", model=ddp, net=net)
    bare = epochs_on_gpu(ds, precision="fp16")
    assert with_ddp[-1]["val_loss"] == pytest.approx(bare[-1]["val_loss"], rel=1e-2)


def test_resume_on_the_gpu_continues_like_an_uninterrupted_run(tmp_path) -> None:
    ds = ArrayWindows(n=256)
    batches = [to_device(ds.batch(np.arange(i, i + 32)), CUDA) for i in range(0, 256, 32)]

    def setup(seed: int = 0):
        net = cuda_model(ds, seed=seed)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)  # built after the move to the GPU, as in the loop
        return net, opt, warmup_cosine(opt, total_steps=8, warmup_steps=1), grad_scaler("fp16")

    def run(net, opt, sched, scaler, part):
        for b in part:
            train_step(net, net, [b], optimizer=opt, scaler=scaler, precision="fp16", grad_clip=1.0)
            sched.step()

    net, opt, sched, scaler = setup()
    run(net, opt, sched, scaler, batches)
    straight = [p.detach().clone() for p in net.parameters()]

    net, opt, sched, scaler = setup()
    run(net, opt, sched, scaler, batches[:4])
    state = TrainingState(model=net, optimizer=opt, scheduler=sched, scaler=scaler, stopper=EarlyStopping(patience=1))
    save_training_state(tmp_path, state, epoch=1, history=[], model_args={})
    net, opt, sched, scaler = setup(seed=1)
    load_training_state(
        tmp_path, TrainingState(model=net, optimizer=opt, scheduler=sched, scaler=scaler, stopper=EarlyStopping(1))
    )
    assert all(s["exp_avg"].is_cuda for s in opt.state.values())  # restored optimizer state lives on the GPU
    run(net, opt, sched, scaler, batches[4:])
    for p, q in zip(straight, net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_peak_memory_is_measurable() -> None:
    torch.cuda.reset_peak_memory_stats(CUDA)
    epochs_on_gpu(ArrayWindows(n=256), precision="fp16", epochs=1)
    assert torch.cuda.max_memory_allocated(CUDA) > 0
