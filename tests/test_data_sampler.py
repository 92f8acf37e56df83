"""DistributedWindowSampler: disjoint, complete, reshuffled per epoch, reproducible; fake ranks, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_dist.data.windows import DistributedWindowSampler


def _all_ranks(n: int, world: int, *, seed: int, epoch: int, **kw) -> list[np.ndarray]:
    out = []
    for rank in range(world):
        s = DistributedWindowSampler(n, rank=rank, world_size=world, seed=seed, **kw)
        s.set_epoch(epoch)
        idx = np.fromiter(iter(s), dtype=np.int64)
        assert len(idx) == len(s)
        out.append(idx)
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 500), world=st.integers(1, 8), seed=st.integers(0, 99), epoch=st.integers(0, 5))
def test_disjoint_and_complete(n, world, seed, epoch):
    parts = _all_ranks(n, world, seed=seed, epoch=epoch)
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n))  # every window exactly once, no padding
    lens = [len(p) for p in parts]
    assert max(lens) - min(lens) <= 1
    s = DistributedWindowSampler(n, rank=0, world_size=world, seed=seed)
    assert s.min_len == min(lens) == n // world


def test_epochs_differ_and_seed_reproduces():
    a0 = _all_ranks(1000, 2, seed=1, epoch=0)
    a1 = _all_ranks(1000, 2, seed=1, epoch=1)
    b0 = _all_ranks(1000, 2, seed=1, epoch=0)
    c0 = _all_ranks(1000, 2, seed=2, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(a0, b0, strict=True))
    assert not np.array_equal(a0[0], a1[0])
    assert not np.array_equal(a0[0], c0[0])


def test_no_shuffle_is_in_order():
    parts = _all_ranks(10, 3, seed=0, epoch=4, shuffle=False)
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_weights_follow_probabilities_and_stay_disjoint_by_position():
    w = np.zeros(100)
    w[:10] = 1.0  # only the first ten windows may be drawn
    parts = _all_ranks(100, 2, seed=0, epoch=0, weights=w)
    assert sum(len(p) for p in parts) == 100
    assert np.concatenate(parts).max() < 10
    with pytest.raises(ValueError, match="weights"):
        DistributedWindowSampler(3, rank=0, world_size=1, seed=0, weights=np.array([1.0, -1.0, 1.0]))


def test_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        DistributedWindowSampler(10, rank=2, world_size=2, seed=0)


# ------------------------------------------------------------ block (shard-local batches)


def _groups(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Group id of every window: `sizes[k]` windows of group k, interleaved in a random order."""
    g = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(g)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    world=st.integers(1, 5),
    block=st.integers(1, 9),
    seed=st.integers(0, 99),
    epoch=st.integers(0, 5),
)
def test_block_disjoint_complete_and_one_group_per_block(sizes, world, block, seed, epoch):
    groups = _groups(sizes, seed)
    n = len(groups)
    parts = _all_ranks(n, world, seed=seed, epoch=epoch, block=block, groups=groups)
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))  # disjoint and complete
    s = DistributedWindowSampler(n, rank=0, world_size=world, seed=seed, block=block, groups=groups)
    assert s.min_len % block == 0
    assert s.min_len <= min(len(p) for p in parts)  # every rank can take min_len
    full = sum(size // block for size in sizes)
    assert s.min_len == full // world * block
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= block  # partial chunks go to the shortest rank
    for p in parts:
        head = p[: s.min_len].reshape(-1, block)  # every aligned block of B in the lockstep part: one group
        assert all(len(set(groups[b].tolist())) == 1 for b in head)


def test_block_epochs_differ_and_seed_reproduces():
    groups = _groups([300, 250, 450], seed=3)
    kw = {"block": 16, "groups": groups}
    a0 = _all_ranks(1000, 2, seed=1, epoch=0, **kw)
    a1 = _all_ranks(1000, 2, seed=1, epoch=1, **kw)
    b0 = _all_ranks(1000, 2, seed=1, epoch=0, **kw)
    c0 = _all_ranks(1000, 2, seed=2, epoch=0, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a0, b0, strict=True))
    assert not np.array_equal(a0[0], a1[0])
    assert not np.array_equal(a0[0], c0[0])
    # blocks of one epoch come from different groups in a mixed order, not group after group
    heads = [groups[b[0]] for b in a0[0][: 30 * 16].reshape(-1, 16)]
    assert len(set(heads)) == 3 and heads != sorted(heads)


def test_block_zero_is_unchanged():
    n, world = 777, 3
    plain = _all_ranks(n, world, seed=5, epoch=2)
    zero = _all_ranks(n, world, seed=5, epoch=2, block=0, groups=_groups([777]))
    assert all(np.array_equal(x, y) for x, y in zip(plain, zero, strict=True))
    ref = np.random.default_rng([5, 2]).permutation(n)  # today's order, bit for bit
    assert all(np.array_equal(p, ref[r::world]) for r, p in enumerate(plain))


def test_block_rejects_weights_and_bad_groups():
    with pytest.raises(ValueError, match="weights"):
        DistributedWindowSampler(4, rank=0, world_size=1, seed=0, block=2, weights=np.ones(4))
    with pytest.raises(ValueError, match="groups"):
        DistributedWindowSampler(4, rank=0, world_size=1, seed=0, block=2, groups=np.zeros(3))
    with pytest.raises(ValueError, match="block"):
        DistributedWindowSampler(4, rank=0, world_size=1, seed=0, block=-1)
