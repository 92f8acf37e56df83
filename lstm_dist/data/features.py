"""Features shared by ingest, the window reader and inference: calendar sine/cosine, lags, moving averages, RSI.

All are computed per series from the past only (a row never sees a later row), so training windows and
inference batches get identical numbers from the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from lstm_dist.data.frequency import Frequency

# Period of each calendar feature, in its own unit.
CALENDAR_PERIODS: dict[str, float] = {"hour": 24.0, "weekday": 7.0, "daytype": 7.0, "month": 12.0, "dayofyear": 366.0}
SUNDAY = 6  # weekday numbers: Monday = 0
HOLIDAY = "holiday"
"""The calendar feature of public holidays (data.holidays names the calendar): days since the last holiday and
until the next, each capped at HOLIDAY_REACH_DAYS and divided by it (both 0 on a holiday)."""
HOLIDAY_REACH_DAYS = 7


def calendar_names(names: Sequence[str]) -> list[str]:
    """Column names of the calendar features, two per entry: `hour_sin`, `hour_cos`, ..., `holiday_since`, `holiday_until`."""
    return [f"{n}_{f}" for n in names for f in (("since", "until") if n == HOLIDAY else ("sin", "cos"))]


def calendar_features(ts: np.ndarray, names: Sequence[str], *, tz: str = "UTC", holidays: str = "") -> np.ndarray:
    """Calendar features of unix-second timestamps `ts` [...] -> float32 [..., 2 * len(names)], in the local time of
    `tz` (daylight-saving aware: 08:00 in Berlin is hour 8 in summer and in winter): a sine/cosine pair per
    periodic feature; for `holiday`, the distance in local days to the public holidays of `holidays` (`AU-VIC`);
    `daytype` is `weekday` with those holidays counted as Sundays."""
    ts = Frequency("s", tz).wall_clock(ts) if tz != "UTC" else np.asarray(ts, dtype=np.int64)
    out = np.empty((*ts.shape, 2 * len(names)), dtype=np.float32)
    for i, name in enumerate(names):
        if name == HOLIDAY:
            out[..., 2 * i : 2 * i + 2] = holiday_distances(ts // 86_400, holidays)
            continue
        if name == "hour":
            value = (ts % 86_400) / 3600.0  # fractional hour: sub-hourly data gets a smooth cycle
        elif name in ("weekday", "daytype"):
            value = (ts // 86_400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
            if name == "daytype":  # a public holiday counted as a Sunday
                value = np.where(is_holiday(ts // 86_400, holidays), SUNDAY, value)
        elif name == "month":
            value = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12
        elif name == "dayofyear":
            days = ts.astype("datetime64[s]").astype("datetime64[D]")
            value = (days - days.astype("datetime64[Y]")).astype(np.int64)
        else:
            raise ValueError(f"unknown calendar feature '{name}'; choose from {sorted(CALENDAR_PERIODS)}")
        angle = (2 * np.pi / CALENDAR_PERIODS[name]) * value
        out[..., 2 * i] = np.sin(angle)
        out[..., 2 * i + 1] = np.cos(angle)
    return out


def is_holiday(days: np.ndarray, spec: str) -> np.ndarray:
    """Local days since 1970 [...] -> bool [...]: whether each is a public holiday of `spec`."""
    if not spec:
        raise ValueError("the calendar feature 'daytype' needs data.holidays, e.g. data.holidays=AU-VIC")
    days = np.asarray(days, dtype=np.int64)
    if days.size == 0:
        return np.zeros(days.shape, dtype=bool)
    first, last = _year_span(days)
    return np.isin(days, _holiday_days(spec, first, last))


def _year_span(days: np.ndarray) -> tuple[int, int]:
    """The first and last calendar year of days since 1970 (non-empty)."""
    years = days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    return int(years.min()), int(years.max())


def holiday_distances(days: np.ndarray, spec: str) -> np.ndarray:
    """Local days since 1970 [...] -> [..., 2]: days since the last public holiday of `spec` and until the next
    (0 on a holiday), each capped at HOLIDAY_REACH_DAYS and divided by it."""
    if not spec:
        raise ValueError("the calendar feature 'holiday' needs data.holidays, e.g. data.holidays=AU-VIC")
    days = np.asarray(days, dtype=np.int64)
    out = np.ones((*days.shape, 2), dtype=np.float32)
    if days.size == 0:
        return out
    first, last = _year_span(days)
    hol = _holiday_days(spec, first - 1, last + 1)  # a year either side: the distances across New Year
    if hol.size == 0:
        return out
    after = np.searchsorted(hol, days, side="right")  # holidays on or before each day: hol[:after]
    since = np.where(after > 0, days - hol[np.maximum(after - 1, 0)], HOLIDAY_REACH_DAYS)
    before = np.searchsorted(hol, days, side="left")  # the first holiday on or after each day: hol[before]
    until = np.where(before < hol.size, hol[np.minimum(before, hol.size - 1)] - days, HOLIDAY_REACH_DAYS)
    out[..., 0] = np.minimum(since, HOLIDAY_REACH_DAYS) / HOLIDAY_REACH_DAYS
    out[..., 1] = np.minimum(until, HOLIDAY_REACH_DAYS) / HOLIDAY_REACH_DAYS
    return out


@functools.cache
def _holiday_days(spec: str, first_year: int, last_year: int) -> np.ndarray:
    """Sorted days since 1970 of the public holidays of `spec` (`AU`, `AU-VIC`) in [first_year, last_year]."""
    import holidays  # python-holidays: the public holidays of ~200 countries and their subdivisions

    country, _, subdiv = spec.partition("-")
    cal = holidays.country_holidays(country, subdiv=subdiv or None, years=range(first_year, last_year + 1))
    return np.array(sorted(np.datetime64(d, "D").astype(np.int64) for d in cal), dtype=np.int64)


def derived_names(
    targets: Sequence[str], *, lags: Sequence[int], moving_averages: Sequence[int], rsi: int
) -> list[str]:
    """Names of the target-derived columns, in the order `derived_features` returns them."""
    names = []
    for t in targets:
        names += [f"{t}_lag{k}" for k in lags]
        names += [f"{t}_ma{k}" for k in moving_averages]
        if rsi:
            names.append(f"{t}_rsi{rsi}")
    return names


def warmup_rows(*, lags: Sequence[int], moving_averages: Sequence[int], rsi: int) -> int:
    """History rows a series needs before its derived features equal those computed over a long history."""
    return max([0, *lags, *(m - 1 for m in moving_averages), rsi])


def _segment_start_of_row(offsets: np.ndarray) -> np.ndarray:
    """[N] first row of the series each row belongs to."""
    lengths = np.diff(offsets)
    return np.repeat(offsets[:-1], lengths)


def _window_sum(values: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Sum of values[lo[i] .. i] for every row i (inclusive), [N, C]."""
    csum = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])  # [N+1, C]
    return csum[np.arange(1, values.shape[0] + 1)] - csum[lo]


def derived_features(
    targets: np.ndarray, offsets: np.ndarray, *, lags: Sequence[int], moving_averages: Sequence[int], rsi: int
) -> np.ndarray:
    """Lags, trailing moving averages and RSI of each target column, per series, from the past only.

    `targets` [N, T] holds series back to back, series i in rows offsets[i]:offsets[i+1]. Rows too early for
    the full look-back use what the series has so far (a lag repeats the first value, a moving average is
    expanding), so nothing is taken from the future and no row is dropped. RSI is Cutler's (simple averages
    of gains and losses over `rsi` steps), in [0, 100]. Returns float64 [N, T * (len(lags) + len(ma) + (rsi>0))].
    """
    targets = np.asarray(targets, dtype=np.float64)
    n = targets.shape[0]
    if n == 0:
        return np.zeros(
            (0, len(derived_names(["t"] * targets.shape[1], lags=lags, moving_averages=moving_averages, rsi=rsi)))
        )
    row = np.arange(n)
    start = _segment_start_of_row(offsets)  # [N]
    per_target: list[list[np.ndarray]] = [[] for _ in range(targets.shape[1])]
    for k in lags:
        lagged = targets[np.maximum(row - k, start)]  # [N, T]
        for j in range(targets.shape[1]):
            per_target[j].append(lagged[:, j])
    for m in moving_averages:
        lo = np.maximum(row - m + 1, start)
        ma = _window_sum(targets, lo) / (row - lo + 1)[:, None]
        for j in range(targets.shape[1]):
            per_target[j].append(ma[:, j])
    if rsi:
        change = np.where((row > start)[:, None], targets - targets[np.maximum(row - 1, 0)], 0.0)  # [N, T]
        lo = np.maximum(row - rsi + 1, start)
        gain = _window_sum(np.maximum(change, 0.0), lo)
        loss = _window_sum(np.maximum(-change, 0.0), lo)
        total = gain + loss
        value = np.where(total > 0, 100.0 * gain / np.where(total > 0, total, 1.0), 50.0)
        for j in range(targets.shape[1]):
            per_target[j].append(value[:, j])
    cols = [c for cols in per_target for c in cols]
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0))


def level_of(x_features: Sequence[str], *, targets: Sequence[str], derived: Sequence[str]) -> list[int]:
    """Per feature of `x`, the index of the target whose units it is in (the target, its lags and moving
    averages), else -1 (covariates, RSI, calendar): what window normalisation rescales alike."""
    owner = {t: j for j, t in enumerate(targets)}
    for name in derived:
        target, _, kind = name.rpartition("_")
        if target in owner and (kind.startswith("lag") or kind.startswith("ma")):
            owner[name] = owner[target]
    return [owner.get(f, -1) for f in x_features]
