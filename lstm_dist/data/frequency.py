"""The sampling frequency of a data set: a pandas offset alias and arithmetic on its grid.

Timestamps are stored as unix seconds (UTC). A fixed-length frequency (`15min`, `h`, and `D` when the
data's timezone is UTC) is plain integer arithmetic: `ts + k * seconds`, which keeps a 10M-row ingest fast.
Every other alias (`B`, `W-SUN`, `MS`, `ME`, `QS-JAN`, `QE-DEC`, `YS-JAN`, `YE-DEC`, and days in a local
timezone, which last 23 or 25 hours across daylight-saving changes) is calendar arithmetic: pandas
offsets applied to the timestamps in local time, then converted back to UTC. Nothing outside this module
may compute a timestamp as `t0 + k * seconds`, since that is wrong for a calendar frequency.
"""

from __future__ import annotations

import warnings
import zoneinfo
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from lstm_dist.data.errors import DataError

_DAY_S = 86_400

# Aliases offered when the frequency cannot be inferred or a timestamp is off the grid, coarse to fine.
COMMON_ALIASES = ("YS", "YE", "QS", "QE", "MS", "ME", "W-SUN", "W-MON", "B", "D", "h", "30min", "15min", "min")


def check_timezone(tz: str) -> str:
    """`tz` if it is an IANA timezone name (e.g. Europe/Berlin) or UTC, else a DataError naming data.timezone."""
    if tz.upper() == "UTC":
        return "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DataError(
            f"data.timezone = '{tz}' is not a known timezone; use an IANA name such as UTC, Europe/Berlin "
            "or America/New_York"
        ) from None
    return tz


def localize(naive: np.ndarray, tz: str, *, codes: np.ndarray | None = None) -> tuple[np.ndarray, int | None]:
    """Naive wall-clock seconds in `tz` [N] -> (unix seconds [N], first row that does not exist in `tz` or None).

    A wall time that occurs twice (the hour the clocks go back) is read as summer time at its first
    occurrence within a series (`codes` [N]) and as winter time at its second, as an hourly logger writes it.
    """
    naive = np.asarray(naive, dtype=np.int64)
    if tz == "UTC" or len(naive) == 0:
        return naive, None
    codes = np.zeros(len(naive), dtype=np.int64) if codes is None else codes
    order = np.lexsort((np.arange(len(naive)), naive, codes))
    s_ts, s_c = naive[order], codes[order]
    again = np.zeros(len(naive), dtype=bool)
    again[1:] = (s_ts[1:] == s_ts[:-1]) & (s_c[1:] == s_c[:-1])
    summer = np.empty(len(naive), dtype=bool)
    summer[order] = ~again
    idx = pd.DatetimeIndex(naive.astype("datetime64[s]"))
    local = idx.tz_localize(tz, ambiguous=summer, nonexistent="NaT")
    missing = np.asarray(local.isna())
    if missing.any():
        return naive, int(np.argmax(missing))
    return Frequency.from_local(local), None


def _offset(alias: str) -> pd.DateOffset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # old spellings (M, H, A) still parse; we store the new one
        return to_offset(alias)


@dataclass(frozen=True)
class Frequency:
    """A validated pandas offset alias (canonical spelling, e.g. `h`, `MS`, `W-SUN`) in a timezone."""

    alias: str
    tz: str = "UTC"

    @cached_property
    def _pandas(self) -> pd.DateOffset:
        return _offset(self.alias)

    @property
    def fixed(self) -> bool:
        """True when every step lasts the same number of seconds (the fast integer path)."""
        off = self._pandas
        if not isinstance(off, pd.offsets.Tick):
            return False
        return self.tz == "UTC" or off.nanos % (_DAY_S * 10**9) != 0  # local days last 23-25 hours

    @cached_property
    def offset(self) -> pd.DateOffset:
        """The pandas offset of one step, in local time (days in a local timezone are calendar days)."""
        off = self._pandas
        if isinstance(off, pd.offsets.Tick) and not self.fixed:
            return pd.DateOffset(days=off.nanos // (_DAY_S * 10**9))
        return off

    @property
    def seconds(self) -> int:
        """Length of a step in seconds: exact for a fixed frequency, the average over 400 steps otherwise."""
        off = self._pandas
        if isinstance(off, pd.offsets.Tick):
            return int(off.nanos // 10**9)
        start = off.rollforward(pd.Timestamp("2000-01-01"))
        return int(round((start + 400 * off - start).total_seconds() / 400))

    # ------------------------------------------------------------ timestamps

    def wall_clock(self, ts: np.ndarray) -> np.ndarray:
        """Unix seconds [...] -> local wall-clock seconds [...] in this timezone (the same numbers for UTC)."""
        ts = np.asarray(ts, dtype=np.int64)
        if self.tz == "UTC":
            return ts
        local = self.to_local(ts.reshape(-1)).tz_localize(None)
        return local.values.astype("datetime64[s]").astype(np.int64).reshape(ts.shape)

    def to_local(self, ts: np.ndarray) -> pd.DatetimeIndex:
        """Unix seconds [N] -> tz-aware DatetimeIndex in this frequency's timezone."""
        return (
            pd.DatetimeIndex(np.asarray(ts, dtype=np.int64).astype("datetime64[s]"))
            .tz_localize("UTC")
            .tz_convert(self.tz)
        )

    @staticmethod
    def from_local(idx: pd.DatetimeIndex) -> np.ndarray:
        """tz-aware DatetimeIndex -> unix seconds int64 [N]."""
        return idx.tz_convert("UTC").tz_localize(None).values.astype("datetime64[s]").astype(np.int64)

    def shift(self, ts: np.ndarray, k: int) -> np.ndarray:
        """Timestamps `ts` (on the grid) moved `k` steps along it."""
        ts = np.asarray(ts, dtype=np.int64)
        if k == 0:
            return ts.copy()
        if self.fixed:
            return ts + k * self.seconds
        flat = self.to_local(ts.reshape(-1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)  # some offsets loop in Python
            return self.from_local(flat + k * self.offset).reshape(ts.shape)

    def previous_steps(self, first_ts: int, n: int) -> np.ndarray:
        """[n] the `n` grid timestamps before `first_ts`, oldest first (the grid continued backwards)."""
        if self.fixed:
            return int(first_ts) + self.seconds * np.arange(-n, 0, dtype=np.int64)
        first = np.array([first_ts], dtype=np.int64)
        return np.array([self.shift(first, k)[0] for k in range(-n, 0)], dtype=np.int64)

    def next_steps(self, last_ts: np.ndarray, n: int) -> np.ndarray:
        """[S, n] the `n` grid timestamps after each of `last_ts` [S]."""
        last = np.asarray(last_ts, dtype=np.int64).reshape(-1)
        if self.fixed:
            return last[:, None] + self.seconds * np.arange(1, n + 1)
        return np.stack([self.shift(last, k) for k in range(1, n + 1)], axis=1).reshape(len(last), n)

    def _grid(self, lo: int, hi: int) -> np.ndarray:
        """Calendar path: every grid timestamp from `lo` (which starts the grid) up to `hi`, unix seconds."""
        local = self.to_local(np.array([lo, hi]))
        return self.from_local(pd.date_range(local[0], local[1], freq=self.offset))

    def positions(self, ts: np.ndarray, anchor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(steps from `anchor` to `ts`, on_grid), both [N]; `anchor` [N] is on the grid (a series' first row).

        A timestamp off the grid gets on_grid False (its position is then meaningless).
        """
        ts, anchor = np.asarray(ts, dtype=np.int64), np.asarray(anchor, dtype=np.int64)
        if self.fixed:
            delta = ts - anchor
            return delta // self.seconds, delta % self.seconds == 0
        if len(ts) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        grid = self._grid(int(min(ts.min(), anchor.min())), int(max(ts.max(), anchor.max())))
        if len(grid) == 0:  # the range holds no grid point at all
            return np.zeros(len(ts), dtype=np.int64), np.zeros(len(ts), dtype=bool)
        pos = np.minimum(np.searchsorted(grid, ts), len(grid) - 1)
        base = np.minimum(np.searchsorted(grid, anchor), len(grid) - 1)
        on = (grid[pos] == ts) & (grid[base] == anchor)
        return pos - base, on

    def at(self, steps: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Timestamps `steps` [N] grid steps after `anchor` [N] (inverse of `positions`)."""
        steps, anchor = np.asarray(steps, dtype=np.int64), np.asarray(anchor, dtype=np.int64)
        if self.fixed:
            return anchor + steps * self.seconds
        if len(steps) == 0:
            return anchor[:0].copy()
        far = int(self.shift(np.array([anchor.max()]), int(steps.max()) + 1)[0])
        grid = self._grid(int(anchor.min()), far)
        return grid[np.searchsorted(grid, anchor) + steps]

    def steps_between(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Grid steps from `start` to `stop` (arrays of unix seconds); DataError if either is off the grid."""
        pos, on = self.positions(
            np.atleast_1d(stop), np.broadcast_to(np.atleast_1d(start), np.shape(np.atleast_1d(stop)))
        )
        if not on.all():
            raise DataError(f"timestamps are not on the data.freq = {self.alias} grid")
        return pos

    def default_season_lengths(self) -> list[int]:
        """Season lengths in steps for this frequency (see `default_season_lengths`)."""
        return default_season_lengths(self.alias)


def parse(alias: str, *, tz: str = "UTC") -> Frequency:
    """Validate a pandas offset alias (`15min`, `h`, `D`, `B`, `W-SUN`, `MS`, `QE`, `YS`, ...) -> Frequency."""
    tz = check_timezone(tz)
    try:
        off = _offset(str(alias))
    except (ValueError, TypeError):
        raise DataError(
            f"data.freq = '{alias}' is not a pandas offset alias; use e.g. {', '.join(COMMON_ALIASES)}"
        ) from None
    if off.n <= 0:
        raise DataError(f"data.freq = '{alias}' must step forward (a positive multiple)")
    if isinstance(off, pd.offsets.Tick) and off.nanos % 10**9:
        raise DataError(f"data.freq = '{alias}' must be a whole number of seconds (timestamps are stored in seconds)")
    return Frequency(off.freqstr, tz)


def from_seconds(seconds: int, *, tz: str = "UTC") -> Frequency:
    """The fixed frequency of `seconds` per step, canonically spelled (3600 -> `h`)."""
    return parse(to_offset(pd.Timedelta(seconds=int(seconds))).freqstr, tz=tz)


def infer_series(ts: np.ndarray, *, tz: str = "UTC") -> str | None:
    """pandas.infer_freq of one series' sorted unique unix seconds, in local time; None when irregular."""
    if len(ts) < 3:
        return None
    idx = Frequency("s", tz).to_local(ts)
    try:
        alias = pd.infer_freq(idx)
    except (ValueError, TypeError):
        return None
    return None if alias is None else _quarter_anchor(_offset(alias)).freqstr


def _quarter_anchor(off: pd.DateOffset) -> pd.DateOffset:
    """Quarters anchored on equivalent months are one grid (QS-OCT = QS-JAN): spell them as QS-JAN.. / QE-..DEC."""
    month = getattr(off, "startingMonth", None)
    if month is None or not off.rule_code.startswith(("Q", "BQ")):
        return off
    ends = off.rule_code.startswith(("QE", "BQE"))
    return type(off)(n=off.n, startingMonth=(month - 1) % 3 + (10 if ends else 1))


def vote(votes: Counter | dict[str, int]) -> str | None:
    """The alias most series agree on (ties: the alphabetically first, so the choice is deterministic)."""
    if not votes:
        return None
    return sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def valid_aliases(a: int, b: int, *, tz: str = "UTC") -> list[str]:
    """Common aliases on whose grid both unix-second timestamps `a` and `b` lie (for error messages)."""
    out = []
    for alias in COMMON_ALIASES:
        f = parse(alias, tz=tz)
        _, on = f.positions(np.array([b]), np.array([a]))
        if on.all():
            out.append(f.alias)
    return out


def season_lengths(seasonality: int | list[int] | None, alias: str) -> list[int]:
    """data.seasonality resolved: an int or a list as given, None by the frequency (`default_season_lengths`)."""
    if seasonality is None:
        return default_season_lengths(alias)
    return [int(seasonality)] if isinstance(seasonality, int) else [int(s) for s in seasonality]


_SEASONS_BY_PREFIX = {"Y": 1, "A": 1, "BY": 1, "Q": 4, "BQ": 4, "M": 12, "BM": 12, "SM": 24, "W": 52, "B": 5, "C": 5}


def default_season_lengths(alias: str) -> list[int]:
    """Default season lengths in steps: 1 yearly, 4 quarterly, 12 monthly, 52 weekly, 5 business-daily,
    7 daily; a sub-daily tick gets one day's steps (24 hourly, 48 half-hourly, 96 for 15min)."""
    off = _offset(alias)
    if isinstance(off, pd.offsets.Tick):
        step = off.nanos // 10**9
        if step >= _DAY_S:
            return [max(1, 7 * _DAY_S // step)] if step < 7 * _DAY_S else [1]
        return [max(1, _DAY_S // step)]
    name = off.rule_code.split("-")[0]
    for prefix in sorted(_SEASONS_BY_PREFIX, key=len, reverse=True):
        if name.startswith(prefix):
            return [max(1, _SEASONS_BY_PREFIX[prefix] // off.n)]
    return [1]
