"""Window reader over memory-mapped Arrow shards, and the distributed sampler that deals out window indices.

Nothing here materialises windows: each shard's [N, F] float32 matrix is a memory-mapped view, a strided
view over it (`torch.as_strided`) is a view of all its windows, and a batch is one gather per shard touched
(one in total when the batch comes from a single shard).

The gathers run in torch (`index_select` over strided views of the same memory-mapped matrices): it copies
each window as one contiguous block and uses torch's intra-op threads, 2-3x faster than numpy fancy
indexing here (benchmarks/RESULTS.md). Batches are still returned as numpy arrays (views of the tensors).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from lstm_dist.data.errors import DataError
from lstm_dist.data.features import calendar_features
from lstm_dist.data.integrity import require_intact
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.shards import open_shard
from lstm_dist.data.splits import WINDOW_SPLITS


class WindowDataset:
    """All windows of one split, addressed by a dense index 0 .. len-1.

    `batch(indices)` returns:
      x       float32 [B, L, F]   scaled targets, covariates, derived, future covariates, calendar sin/cos
      y       float32 [B, H, T]   scaled targets over the horizon
      future  float32 [B, H, Ff]  known-future covariates + calendar over the horizon (Ff may be 0)
      series  int64   [B]         series index (manifest order; for embeddings and inverse scaling)
      t0      int64   [B]         unix seconds of the first forecast step
    """

    def __init__(
        self, shard_dir: str, *, split: Literal["train", "val", "test", "all"], stride: int | None = None
    ) -> None:
        if split not in WINDOW_SPLITS:
            raise ValueError(f"split must be one of {WINDOW_SPLITS}, got '{split}'")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.shard_dir = Path(shard_dir)
        self.split = split
        m = self._manifest = Manifest.load(self.shard_dir)
        require_intact(self.shard_dir, m)  # never train or score on a damaged shard set
        self.stride = stride or m.stride
        self._lookback, self._horizon = m.lookback, m.horizon
        self._num_t = len(m.target_cols)
        self._num_stored = len(m.stored_cols)
        self._num_future_cols = len(m.future_cols)
        self._calendar = list(m.calendar_features)
        self._tz = m.frequency().tz  # calendar features are local time
        self._holidays = m.holidays
        window = m.lookback + m.horizon

        # Window starts per segment form an arithmetic progression: keep (shard, first row, count) only.
        seg_shard, seg_first, seg_count, seg_series = [], [], [], []
        self._ts_views: list[np.ndarray | None] = []
        self._shards = []
        # Inputs and horizons as torch views (gathers run in torch): [N-L+1, L, Fs], [N-H+1, H, Fs].
        self._x_t: list[torch.Tensor | None] = []
        self._h_t: list[torch.Tensor | None] = []
        for k, info in enumerate(m.shards):
            shard = open_shard(self.shard_dir / info.file)
            if shard.features.shape != (info.num_rows, self._num_stored):
                raise DataError(
                    f"{self.shard_dir / info.file}: shape {shard.features.shape} does not match the manifest; re-run ingest"
                )
            self._shards.append(shard)
            ok = info.num_rows >= window
            # Views, no copy: [N-W+1, W] timestamps.
            self._ts_views.append(sliding_window_view(shard.ts, window) if ok else None)
            for views, length in ((self._x_t, m.lookback), (self._h_t, m.horizon)):
                views.append(_window_tensor(shard.features, length) if ok else None)
            for seg in info.segments:
                first, count = m.segment_starts(seg, split, stride=self.stride)
                if count:
                    seg_shard.append(k)
                    seg_first.append(seg.offset + first - seg.row_start)  # row in the shard file
                    seg_count.append(count)
                    seg_series.append(seg.series)
        self._seg_shard = np.asarray(seg_shard, dtype=np.int64)
        self._seg_first = np.asarray(seg_first, dtype=np.int64)
        # On a regular fixed-length grid (every ingest except missing=drop or a calendar frequency such as
        # months) t0 follows from the segment's first window; otherwise it is read from the shard.
        self._regular = m.data_config.get("missing") != "drop" and m.frequency().fixed
        self._step_s = self.stride * m.freq
        self._seg_t0 = np.asarray(
            [self._shards[k].ts[r + m.lookback] for k, r in zip(seg_shard, seg_first, strict=True)], dtype=np.int64
        )
        self._seg_series = np.asarray(seg_series, dtype=np.int64)
        self._seg_cum = np.concatenate([[0], np.cumsum(seg_count, dtype=np.int64)])

    # ------------------------------------------------------------ properties

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def lookback(self) -> int:
        return self._lookback

    @property
    def horizon(self) -> int:
        return self._horizon

    @property
    def num_features(self) -> int:
        return self._num_stored + 2 * len(self._calendar)

    @property
    def num_targets(self) -> int:
        return self._num_t

    @property
    def num_future(self) -> int:
        return self._num_future_cols + 2 * len(self._calendar)

    @property
    def num_series(self) -> int:
        return self._manifest.num_series

    def __len__(self) -> int:
        return int(self._seg_cum[-1])

    # ------------------------------------------------------------ access

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard [B], first input row in the shard file [B], series [B]) of window indices."""
        shard, rows, series, _, _ = self._locate(indices)
        return shard, rows, series

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"window index out of range for {n} {self.split} windows")
        idx = np.where(idx < 0, idx + n, idx)
        seg = np.searchsorted(self._seg_cum, idx, side="right") - 1
        step = idx - self._seg_cum[seg]  # position of the window inside its segment
        rows = self._seg_first[seg] + step * self.stride
        return self._seg_shard[seg], rows, self._seg_series[seg], seg, step

    def window_series(self) -> np.ndarray:
        """int64 [len] series index of every window (for per-series sampling weights)."""
        return np.repeat(self._seg_series, np.diff(self._seg_cum))

    def window_shards(self) -> np.ndarray:
        """int64 [len] shard of every window (for shard-local batches: `DistributedWindowSampler(groups=...)`)."""
        return np.repeat(self._seg_shard, np.diff(self._seg_cum))

    def window_weights(self, series_weights: dict[str, float] | None = None) -> np.ndarray | None:
        """float64 [len] sampling weight of each window from per-series weights (unnamed series weigh 1).

        Default: `data.series_weights` of the manifest's config; None when no weights are set.
        """
        if series_weights is None:
            series_weights = self._manifest.data_config.get("series_weights") or {}
        if not series_weights:
            return None
        names = self._manifest.series_index()
        unknown = sorted(set(series_weights) - set(names))
        if unknown:
            raise DataError(f"data.series_weights names unknown series {unknown[:5]}; known: {sorted(names)[:5]} ...")
        per_series = np.ones(self.num_series)
        for name, w in series_weights.items():
            if w < 0:
                raise DataError(f"data.series_weights['{name}'] = {w}: weights must be >= 0")
            per_series[names[name]] = w
        return per_series[self.window_series()]

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Gather windows `indices` into a batch (see the class docstring for keys and shapes), in that order.

        Batches drawn across many shards are a little cheaper with sorted indices (`np.sort` a sampler's
        batch: order within a batch does not matter to training).
        """
        shard, rows, series, seg, step = self._locate(indices)
        lookback, num_stored = self._lookback, self._num_stored
        if len(rows) == 0 or shard.min() == shard.max():  # one shard: one gather for inputs, one for horizons
            k = int(shard[0]) if len(rows) else 0
            if len(rows):  # one gather each: [B, L, Fs] inputs, [B, H, Fs] horizons
                win_x = self._x_t[k].index_select(0, torch.from_numpy(rows)).numpy()
                win_h = self._h_t[k].index_select(0, torch.from_numpy(rows + lookback)).numpy()
            else:
                win_x = np.empty((0, lookback, num_stored), np.float32)
                win_h = np.empty((0, self._horizon, num_stored), np.float32)
            ts = self._ts_views[k][rows] if self._calendar and len(rows) else None
            t0 = None if self._regular else self._shards[k].ts[rows + lookback]
        else:
            win_x, win_h, ts, t0 = self._gather_many(shard, rows)
        if t0 is None:
            t0 = self._seg_t0[seg] + step * self._step_s  # [B], no gather needed on a regular grid
        num_fut = self._num_future_cols
        fut = win_h[:, :, num_stored - num_fut :]  # [B, H, Fu]
        if self._calendar:
            if ts is None:
                ts = np.empty((0, lookback + self._horizon), dtype=np.int64)
            # [B, L+H, 2C], from the real timestamps
            cal = calendar_features(ts, self._calendar, tz=self._tz, holidays=self._holidays)
            x = np.concatenate([win_x, cal[:, :lookback]], axis=2)  # [B, L, F]
            future = np.concatenate([fut, cal[:, lookback:]], axis=2)  # [B, H, Ff]
        else:
            x, future = win_x, np.ascontiguousarray(fut)
        return {
            "x": x,
            "y": np.ascontiguousarray(win_h[:, :, : self._num_t]),  # [B, H, T]
            "future": future,
            "series": series,
            "t0": t0,
        }

    def _gather_many(self, shard: np.ndarray, rows: np.ndarray) -> tuple:
        """Windows spread over several shards: rows are grouped by shard; per group one gather of inputs and
        one of horizons, each written straight to its places in the batch (no second copy)."""
        lookback, horizon, num_stored = self._lookback, self._horizon, self._num_stored
        b = len(rows)
        in_order = bool(np.all(shard[1:] >= shard[:-1]))  # sorted indices: groups are contiguous slices
        order = np.arange(b) if in_order else np.argsort(shard, kind="stable")
        s_sorted, r_sorted = shard[order], rows[order]
        cuts = np.concatenate([[0], np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1, [b]])
        win_x = torch.empty((b, lookback, num_stored), dtype=torch.float32)  # [B, L, Fs]
        win_h = torch.empty((b, horizon, num_stored), dtype=torch.float32)  # [B, H, Fs]
        ts = np.empty((b, lookback + horizon), dtype=np.int64) if self._calendar else None
        t0 = None if self._regular else np.empty(b, dtype=np.int64)
        for a, e in zip(cuts[:-1], cuts[1:], strict=True):
            k, r = int(s_sorted[a]), r_sorted[a:e]
            at = slice(a, e) if in_order else order[a:e]
            r_t, r_h = torch.from_numpy(r), torch.from_numpy(r + lookback)
            if in_order:  # gathered straight into its slice of the batch
                torch.index_select(self._x_t[k], 0, r_t, out=win_x[a:e])
                torch.index_select(self._h_t[k], 0, r_h, out=win_h[a:e])
            else:
                at_t = torch.from_numpy(at)
                win_x.index_copy_(0, at_t, self._x_t[k].index_select(0, r_t))
                win_h.index_copy_(0, at_t, self._h_t[k].index_select(0, r_h))
            if ts is not None:
                ts[at] = self._ts_views[k][r]
            if t0 is not None:
                t0[at] = self._shards[k].ts[r + lookback]
        return win_x.numpy(), win_h.numpy(), ts, t0


def _window_tensor(features: np.ndarray, length: int) -> torch.Tensor:
    """All windows of `length` rows of a C-contiguous [N, F] matrix as a strided [N-length+1, length, F] tensor
    view (no copy). The matrix is a read-only memory map; torch warns about that, but nothing writes to it."""
    num_rows, width = features.shape
    if not features.flags.c_contiguous:
        raise DataError(f"shard features must be C-contiguous, got strides {features.strides}; re-run ingest")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        base = torch.from_numpy(features)
    return base.as_strided((num_rows - length + 1, length, width), (width, width, 1))


class DistributedWindowSampler:
    """Window indices for one rank: disjoint across ranks, together covering every window once per epoch.

    Every rank draws the same seeded permutation for the epoch and keeps positions rank, rank + N, ...
    so ranks differ in length by at most one and nothing is padded or repeated. Callers must run the same
    number of steps on every rank (DDP and `ray.train.report` need it): iterate at most `min_len` indices
    (= num_windows // world_size) per rank, or drop the last partial batch accordingly.

    With `weights` [num_windows] the epoch is `num_windows` draws with replacement, with probability
    proportional to the weights (same draw on all ranks, then split as above): disjoint positions, not
    unique windows.

    With `block` = B > 0 (shard-local batches, i.e. block shuffling) and `groups` [num_windows] (the shard of
    each window, `WindowDataset.window_shards()`; None = one group): each epoch the windows are shuffled
    within their group, each group's order is cut into chunks of B, and whole chunks are dealt to ranks
    round-robin in a shuffled order, full chunks first; each group's last, partial chunk comes after them and
    goes to the rank holding the fewest windows so far. Ranks stay disjoint and together complete, and their
    lengths differ by at most B. Every rank
    starts with at least `min_len` = (full chunks // world_size) * B indices made of full chunks, so each
    aligned run of B indices there comes from one group (one gather per batch). Not combined with weights.
    """

    def __init__(
        self,
        num_windows: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
        weights: np.ndarray | None = None,
        block: int = 0,
        groups: np.ndarray | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_windows < 0:
            raise ValueError(f"num_windows must be >= 0, got {num_windows}")
        self.num_windows, self.rank, self.world_size, self.seed, self.shuffle = (
            num_windows,
            rank,
            world_size,
            seed,
            shuffle,
        )
        self.epoch = 0
        self._p = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (num_windows,) or (w < 0).any() or not np.isfinite(w).all() or (num_windows and w.sum() <= 0):
                raise ValueError(f"weights must be {num_windows} finite non-negative numbers with a positive sum")
            self._p = w / w.sum() if num_windows else w
        if block < 0:
            raise ValueError(f"block must be >= 0, got {block}")
        if block and weights is not None:
            raise ValueError(
                "block > 0 (shard-local batches, data.batch_locality=shard) cannot be combined with sampling weights"
            )
        self.block = block
        self._cache: tuple[int, np.ndarray] | None = None
        if block:
            g = np.zeros(num_windows, np.int64) if groups is None else np.asarray(groups).astype(np.int64)
            if g.shape != (num_windows,):
                raise ValueError(f"groups must have one entry per window ({num_windows}), got shape {g.shape}")
            # Group sizes -> chunk table (start in the group-sorted order, size), fixed across epochs.
            dense = np.unique(g, return_inverse=True)[1].reshape(-1)  # 0 .. groups-1
            # the smallest unsigned dtype: numpy's stable argsort is then a radix sort (fast per epoch)
            self._dense = dense.astype(np.min_scalar_type(max(int(dense.max(initial=0)), 0)))
            self._by_group = np.argsort(self._dense, kind="stable")
            sizes = np.bincount(g - g.min()) if num_windows else np.zeros(0, np.int64)
            sizes = sizes[sizes > 0]
            n_chunks = -(-sizes // block)
            first = (np.cumsum(sizes) - sizes).astype(np.int64)
            j = np.arange(n_chunks.sum()) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
            self._chunk_start = np.repeat(first, n_chunks) + j * block
            self._chunk_size = np.minimum(block, np.repeat(sizes, n_chunks) - j * block)
            self._group_first, self._group_size = first, sizes
            self._full = np.flatnonzero(self._chunk_size == block)
            self._partial = np.flatnonzero(self._chunk_size < block)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call on every rank with the same value)."""
        self.epoch = epoch

    def _block_indices(self) -> np.ndarray:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        within = self._by_group  # windows sorted by group; shuffled within each group below
        full, partial = self._full, self._partial
        if self.shuffle:
            perm = rng.permutation(self.num_windows)
            within = perm[np.argsort(self._dense[perm], kind="stable")]
            full, partial = rng.permutation(full), rng.permutation(partial)
        mine = np.concatenate([full[self.rank :: self.world_size], self._deal_partial(full, partial)])
        size, start = self._chunk_size[mine], self._chunk_start[mine]
        total = int(size.sum())
        pos = np.arange(total) + np.repeat(start - (np.cumsum(size) - size), size)
        out = within[pos]
        self._cache = (self.epoch, out)
        return out

    def _deal_partial(self, full: np.ndarray, partial: np.ndarray) -> np.ndarray:
        """This rank's partial chunks: each in turn (the same order on every rank) goes to the rank that
        holds the fewest windows so far (lowest rank on ties), so rank lengths end within one block."""
        held = np.bincount(np.arange(len(full)) % self.world_size, minlength=self.world_size) * self.block
        owner = np.empty(len(partial), dtype=np.int64)
        for i, size in enumerate(self._chunk_size[partial].tolist()):
            owner[i] = r = int(np.argmin(held))
            held[r] += size
        return partial[owner == self.rank]

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self._p is not None:
            return rng.choice(self.num_windows, size=self.num_windows, replace=True, p=self._p)
        if self.shuffle:
            return rng.permutation(self.num_windows)
        return np.arange(self.num_windows)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, int64 [len(self)]."""
        if self.block:
            return self._block_indices()
        return self._order()[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.block:
            return len(self._block_indices())
        return max(0, -(-(self.num_windows - self.rank) // self.world_size))

    @property
    def min_len(self) -> int:
        """Length of the shortest rank: the number of indices every rank can take in lockstep.

        With `block`: the full chunks every rank is sure to get, (full chunks // world_size) * block, the
        same in every epoch (a lower bound; partial chunks come after them).
        """
        if self.block:
            return len(self._full) // self.world_size * self.block
        return self.num_windows // self.world_size
