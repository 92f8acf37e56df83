"""Calendar frequencies: pandas offset aliases on the grid of the data, from ingest to forecast timestamps.

Most tests run without Ray (the frequency module, cleaning and the read step are plain functions); the
round trip per alias runs the real ingest on the session's local Ray and a freshly built (untrained) network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_dist.config import DataConfig, ModelConfig
from lstm_dist.data import frequency as F
from lstm_dist.data.errors import DataError
from lstm_dist.data.ingest import choose_frequency, clean_block, read_unit
from lstm_dist.data.readers import Notes

ALIASES = ["15min", "30min", "h", "D", "B", "W-SUN", "W-WED", "MS", "ME", "QS", "QE", "QS-FEB", "YS", "YE"]
CANONICAL = {"QS": "QS-JAN", "QE": "QE-DEC", "YS": "YS-JAN", "YE": "YE-DEC"}

# Start dates that stress calendar arithmetic: month ends, Feb 29 of leap years, the DST changes of Europe/Berlin.
SPECIAL_STARTS = [
    "2020-01-31",
    "2020-02-29",
    "2024-02-29",
    "2021-03-28",
    "2021-10-31",
    "2019-12-31",
    "2023-04-30",
    "1960-01-01",
]


def _unix(idx: pd.DatetimeIndex) -> np.ndarray:
    return F.Frequency.from_local(idx if idx.tz is not None else idx.tz_localize("UTC"))


def _grid(alias: str, start: str | pd.Timestamp, n: int, tz: str = "UTC") -> pd.DatetimeIndex:
    """`n` grid timestamps of `alias` from the first one at or after `start`, in `tz`, by pandas itself."""
    off = F.parse(alias, tz=tz).offset
    first = pd.Timestamp(start).tz_localize(tz) if pd.Timestamp(start).tz is None else pd.Timestamp(start)
    return pd.date_range(off.rollforward(first) if hasattr(off, "rollforward") else first, periods=n, freq=off)


def test_parse_gives_the_canonical_alias_and_rejects_bad_ones() -> None:
    assert F.parse("1h").alias == "h" and F.parse("W").alias == "W-SUN" and F.parse("M").alias == "ME"
    assert F.parse("h").fixed and F.parse("D").fixed and not F.parse("D", tz="Europe/Berlin").fixed
    assert not F.parse("MS").fixed and F.parse("MS").seconds > 27 * 86_400
    for bad, match in [("often", "not a pandas offset alias"), ("500ms", "whole number of seconds")]:
        with pytest.raises(DataError, match=rf"data\.freq = '{bad}' .*{match}"):
            F.parse(bad)
    with pytest.raises(DataError, match=r"data\.timezone = 'Mars/Olympus' is not a known timezone"):
        F.parse("h", tz="Mars/Olympus")


@pytest.mark.parametrize(
    ("alias", "seasons"),
    [
        ("YS", [1]),
        ("YE", [1]),
        ("QS", [4]),
        ("QE-NOV", [4]),
        ("MS", [12]),
        ("ME", [12]),
        ("W-SUN", [52]),
        ("B", [5]),
        ("D", [7]),
        ("h", [24]),
        ("30min", [48]),
        ("15min", [96]),
        ("10min", [144]),
        ("2h", [12]),
    ],
)
def test_default_season_lengths(alias: str, seasons: list[int]) -> None:
    assert F.default_season_lengths(alias) == seasons


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alias=st.sampled_from(ALIASES),
    start=st.one_of(
        st.sampled_from(SPECIAL_STARTS).map(pd.Timestamp),
        st.datetimes(min_value=pd.Timestamp("1950-01-01"), max_value=pd.Timestamp("2060-01-01")).map(
            lambda d: pd.Timestamp(d).floor("D")
        ),
    ),
    tz=st.sampled_from(["UTC", "Europe/Berlin"]),
    n=st.integers(3, 40),
    k=st.integers(1, 30),
)
def test_grid_arithmetic_matches_pandas(alias: str, start: pd.Timestamp, tz: str, n: int, k: int) -> None:
    """positions / at / shift / next_steps agree with pandas.date_range on the grid, in local time."""
    freq = F.parse(alias, tz=tz)
    full = _grid(alias, start, n + k, tz)
    ts = _unix(full)
    hist, fut = ts[:n], ts[n:]
    pos, on = freq.positions(hist, np.full(n, hist[0]))
    assert on.all() and (pos == np.arange(n)).all()
    assert (freq.at(np.arange(n), np.full(n, hist[0])) == hist).all()
    assert (freq.next_steps(hist[-1:], k)[0] == fut).all()
    assert (freq.shift(ts[-1:], -(n + k - 1)) == ts[:1]).all()
    assert int(freq.steps_between(hist[0], ts[-1])[0]) == n + k - 1


def test_hourly_berlin_across_both_dst_changes() -> None:
    """Hourly local data is hourly in UTC: spring has a 23-hour day, autumn a 25-hour one."""
    freq = F.parse("h", tz="Europe/Berlin")
    for day in ["2021-03-28", "2021-10-31"]:
        local = pd.date_range(f"{day} 00:00", periods=30, freq="h", tz="Europe/Berlin")
        ts = _unix(local)
        assert (np.diff(ts) == 3600).all()
        assert (freq.next_steps(ts[:1], 29)[0] == ts[1:]).all()
    daily = F.parse("D", tz="Europe/Berlin")
    midnights = _unix(pd.date_range("2021-03-26", periods=6, freq="D", tz="Europe/Berlin"))
    assert sorted(set(np.diff(midnights))) == [82_800, 86_400]  # a 23-hour day: not a fixed step
    assert (daily.next_steps(midnights[:1], 5)[0] == midnights[1:]).all()


# ---------------------------------------------------------------- cleaning on the calendar grid


def _monthly(drop: list[int] | None = None, n: int = 24) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    ts = _unix(pd.date_range("2019-01-01", periods=n, freq="MS"))
    values = np.arange(n, dtype=np.float64)[:, None]
    keep = np.setdiff1d(np.arange(n), drop or [])
    return ["a"], np.zeros(len(keep), dtype=np.int64), ts[keep], values[keep]


def _cfg(path: str = "unused.csv", **kw) -> DataConfig:
    return DataConfig(path=path, covariate_cols=[], **kw)


@pytest.mark.parametrize(("gaps", "filled"), [("ffill", 4.0), ("interpolate", 5.0), ("zero", 0.0)])
def test_a_missing_month_is_a_gap_filled_by_the_gaps_policy(gaps: str, filled: float) -> None:
    names, codes, ts, values = _monthly(drop=[5])
    block = clean_block(names, codes, ts, values, cfg=_cfg(freq="MS", gaps=gaps), freq=F.parse("MS"), notes=Notes())
    assert (block.ts == _unix(pd.date_range("2019-01-01", periods=24, freq="MS"))).all()
    assert block.values[5, 0] == filled


def test_a_missing_month_with_gaps_error_names_it() -> None:
    names, codes, ts, values = _monthly(drop=[5, 6])
    with pytest.raises(
        DataError, match=r"1 gap\(s\) in its MS grid, .*2 missing step\(s\) between 2019-05-01T00:00:00 and 2019-08-01"
    ):
        clean_block(names, codes, ts, values, cfg=_cfg(freq="MS"), freq=F.parse("MS"), notes=Notes())


def test_business_days_with_holidays_missing_are_gaps() -> None:
    days = pd.bdate_range("2024-12-16", periods=15)
    holidays = [days.get_loc(pd.Timestamp("2024-12-25")), days.get_loc(pd.Timestamp("2024-12-26"))]
    keep = np.setdiff1d(np.arange(15), holidays)
    ts, values = _unix(days)[keep], np.arange(15, dtype=np.float64)[keep, None]
    block = clean_block(
        ["a"], np.zeros(len(keep), dtype=np.int64), ts, values, cfg=_cfg(gaps="ffill"), freq=F.parse("B"), notes=Notes()
    )
    assert (block.ts == _unix(days)).all() and block.values[holidays, 0].tolist() == [6.0, 6.0]


def test_off_grid_timestamp_names_both_and_the_aliases_that_fit() -> None:
    names, codes, ts, values = _monthly()
    ts = ts.copy()
    ts[3] += 14 * 86_400  # 2019-04-15
    with pytest.raises(
        DataError,
        match=r"timestamps 2019-03-01T00:00:00 and 2019-04-15T00:00:00 .*data\.freq = MS; data\.freq values that fit these two: B, D,",
    ):
        clean_block(names, codes, ts, values, cfg=_cfg(freq="MS"), freq=F.parse("MS"), notes=Notes())


def test_yearly_data_was_refused_with_a_fixed_step_and_works_with_ys() -> None:
    ts = _unix(pd.date_range("1960-01-01", periods=30, freq="YS"))
    values = np.arange(30, dtype=np.float64)[:, None]
    codes = np.zeros(30, dtype=np.int64)
    with pytest.raises(DataError, match=r"1960-01-01T00:00:00 and 1961-01-01T00:00:00 are 31622400 s apart.*YS-JAN"):
        clean_block(["a"], codes, ts, values, cfg=_cfg(), freq=F.from_seconds(31_536_000), notes=Notes())
    block = clean_block(["a"], codes, ts, values, cfg=_cfg(freq="YS"), freq=F.parse("YS"), notes=Notes())
    assert (block.ts == ts).all()


# ---------------------------------------------------------------- inference of the frequency (read step, no Ray)


def _write(frame: pd.DataFrame, path: Path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _long(alias: str, *, num_series: int = 3, n: int = 30, start: str = "2015-01-01", tz: str = "UTC") -> pd.DataFrame:
    rows = []
    for s in range(num_series):
        idx = _grid(alias, start, n, tz)
        wave = np.sin(np.arange(n) * 2 * np.pi / 7) + s
        rows.append(pd.DataFrame({"timestamp": idx.tz_convert("UTC"), "series_id": f"s{s}", "target": wave}))
    return pd.concat(rows, ignore_index=True)


def _infer(path: str, cfg: DataConfig) -> F.Frequency:
    _, info = read_unit(path, None, cfg=cfg, num_buckets=1)
    return choose_frequency(cfg, [info], source=path)


@pytest.mark.parametrize("alias", ALIASES)
def test_frequency_is_inferred_per_alias(alias: str, tmp_path: Path) -> None:
    path = _write(_long(alias), tmp_path / "in.csv")
    assert _infer(path, _cfg()).alias == CANONICAL.get(alias, alias)


def test_uninferable_frequency_names_the_file_and_two_timestamps(tmp_path: Path) -> None:
    stamps = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-04", "2020-01-07", "2020-01-09", "2020-01-10"])
    stamps = stamps + pd.to_timedelta([0, 0, 0, 5, 0, 0], unit="h")  # one row at 05:00: no grid holds them all
    frame = pd.DataFrame({"timestamp": stamps, "series_id": "a", "target": 1.0})
    path = _write(frame, tmp_path / "odd.csv")
    with pytest.raises(DataError, match=r"odd\.csv': series 'a' has timestamps \S+ and \S+ .*set data\.freq"):
        _infer(path, _cfg())


# ---------------------------------------------------------------- round trip on the local Ray


def _tiny_forecaster(shards: Path):
    from lstm_dist.data.manifest import Manifest
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.models import build_model
    from lstm_dist.serving import ForecastModel
    from lstm_dist.train.checkpoints import model_args_for

    torch.manual_seed(0)
    model = ForecastModel()
    model.net = build_model(
        ModelConfig(hidden_size=4), **model_args_for(WindowDataset(str(shards), split="train"))
    ).eval()
    model.manifest = Manifest.load(shards)
    return model


@pytest.mark.parametrize("alias", ALIASES)
def test_round_trip_ingest_windows_forecast(alias: str, ray_local, tmp_path: Path) -> None:
    """Each alias: inferred at ingest, windows' t0 on the grid, the pyfunc forecasts the next grid steps."""
    from lstm_dist.data.ingest import ingest
    from lstm_dist.data.windows import WindowDataset

    frame = _long(alias, n=40, start="2020-02-29")
    path = _write(frame, tmp_path / "in.csv")
    cfg = _cfg(path=path, lookback=8, horizon=3, val_size=6, test_size=6, calendar_features=["month", "weekday"])
    manifest, report = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert manifest.freq_alias == CANONICAL.get(alias, alias) and report.freq_inferred
    truth = _unix(pd.DatetimeIndex(frame["timestamp"][frame["series_id"] == "s0"]))

    ds = WindowDataset(str(tmp_path / "shards"), split="test")
    batch = ds.batch(np.arange(len(ds)))
    assert np.isin(batch["t0"], truth).all()
    assert (batch["t0"][1:] > batch["t0"][:-1])[batch["series"][1:] == batch["series"][:-1]].all()

    model = _tiny_forecaster(tmp_path / "shards")
    history = frame.assign(timestamp=frame["timestamp"].dt.tz_localize(None))
    pred = model.forecast(history)
    want = _grid(alias, pd.Timestamp(truth[-1], unit="s").tz_localize("UTC"), 4).tz_convert("UTC")[1:]
    got = pred[pred["series_id"] == "s0"]["timestamp"].to_numpy()
    assert (got == want.tz_localize(None).to_numpy()).all(), (alias, got, want)


# ---------------------------------------------------------------- data.timezone


def test_calendar_features_are_local_time_across_dst() -> None:
    from lstm_dist.data.features import calendar_features

    eight = pd.DatetimeIndex(["2021-01-15 08:00", "2021-07-15 08:00", "2021-10-31 08:00"]).tz_localize("Europe/Berlin")
    local = calendar_features(_unix(eight), ["hour", "weekday", "month"], tz="Europe/Berlin")
    assert np.allclose(local[:, :2], local[0, :2])  # hour 8 in winter and in summer
    want_hour = 2 * np.pi * 8 / 24
    assert np.allclose(local[0, :2], [np.sin(want_hour), np.cos(want_hour)], atol=1e-6)
    utc = calendar_features(_unix(eight), ["hour"])
    assert not np.allclose(utc[0], utc[1])  # in UTC the summer 08:00 is hour 6, the winter one hour 7
    near_midnight = _unix(pd.DatetimeIndex(["2021-07-04 23:30"]).tz_localize("UTC"))  # a Sunday in UTC
    monday = calendar_features(near_midnight, ["weekday"], tz="Europe/Berlin")[0]  # 01:30 Monday in Berlin
    assert np.allclose(monday, [0.0, 1.0], atol=1e-6)


def test_naive_timestamps_are_local_time_and_offsets_are_converted(tmp_path: Path) -> None:
    """Naive hourly wall-clock times across both changes (the autumn 02:00 twice) become strictly hourly UTC."""
    spring = pd.date_range("2021-03-27 20:00", periods=12, freq="h", tz="Europe/Berlin")
    autumn = pd.date_range("2021-10-30 20:00", periods=12, freq="h", tz="Europe/Berlin")
    frames = []
    for sid in ["a", "b"]:  # two series: the repeated hour is told apart per series
        for idx in (spring, autumn):
            naive = idx.tz_localize(None).strftime("%Y-%m-%d %H:%M:%S")
            frames.append(pd.DataFrame({"timestamp": naive, "series_id": sid, "target": 1.0}))
    path = _write(pd.concat(frames), tmp_path / "local.csv")
    cfg = _cfg(path=path, timezone="Europe/Berlin")
    parts, _ = read_unit(path, None, cfg=cfg, num_buckets=1)
    names, codes, ts, _ = parts[0]
    for s in range(2):
        mine = np.sort(ts[codes == s])
        assert (mine == np.sort(np.concatenate([_unix(spring), _unix(autumn)]))).all()
    offsets = pd.DataFrame({"timestamp": spring.strftime("%Y-%m-%d %H:%M:%S%z"), "series_id": "a", "target": 1.0})
    parts, _ = read_unit(_write(offsets, tmp_path / "aware.csv"), None, cfg=cfg, num_buckets=1)
    assert (np.sort(parts[0][2]) == _unix(spring)).all()


def test_a_skipped_wall_clock_time_names_data_timezone(tmp_path: Path) -> None:
    frame = pd.DataFrame({"timestamp": ["2021-03-28 01:00:00", "2021-03-28 02:30:00"], "series_id": "a", "target": 1.0})
    path = _write(frame, tmp_path / "in.csv")
    with pytest.raises(DataError, match=r"2021-03-28T02:30:00 .*does not exist in data\.timezone = Europe/Berlin"):
        read_unit(path, None, cfg=_cfg(path=path, timezone="Europe/Berlin"), num_buckets=1)


@pytest.mark.parametrize(("alias", "start"), [("h", "2021-03-26 00:00"), ("D", "2021-09-20")])
def test_local_round_trip_across_dst(alias: str, start: str, ray_local, tmp_path: Path) -> None:
    """Naive Berlin data in, forecast timestamps in Berlin time out, on the local grid across the DST change."""
    from lstm_dist.data.ingest import ingest

    n = 60
    idx = pd.date_range(start, periods=n + 3, freq=alias, tz="Europe/Berlin")
    frame = pd.DataFrame({"timestamp": idx[:n].tz_localize(None), "series_id": "a", "target": np.sin(np.arange(n))})
    path = _write(frame, tmp_path / "in.csv")
    cfg = _cfg(path=path, timezone="Europe/Berlin", lookback=8, horizon=3, val_size=6, test_size=6)
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert manifest.freq_alias == alias
    pred = _tiny_forecaster(tmp_path / "shards").forecast(frame)
    assert list(pred["timestamp"]) == list(idx[n:])


# ---------------------------------------------------------------- season lengths


@pytest.mark.parametrize(
    ("seasonality", "alias", "want"),
    [(None, "MS", [12]), (None, "h", [24]), (7, "h", [7]), ([48, 336], "30min", [48, 336]), (None, "YS", [1])],
)
def test_season_lengths_resolve_config_or_frequency(seasonality, alias: str, want: list[int]) -> None:
    assert F.season_lengths(seasonality, alias) == want


def test_bad_seasonality_and_timezone_are_config_errors() -> None:
    with pytest.raises(ValueError, match=r"data\.seasonality must be a positive step count"):
        _cfg(seasonality=[])
    with pytest.raises(ValueError, match=r"data\.timezone = 'Mars/Olympus' is not an IANA timezone"):
        _cfg(timezone="Mars/Olympus")


@pytest.mark.parametrize(("seasonality", "want"), [(None, [12]), ([3, 6], [3, 6])])
def test_manifest_records_season_lengths(seasonality, want: list[int], ray_local, tmp_path: Path) -> None:
    from lstm_dist.data.ingest import ingest

    path = _write(_long("MS", n=40), tmp_path / "in.csv")
    cfg = _cfg(path=path, lookback=12, horizon=3, val_size=6, test_size=6, seasonality=seasonality)
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert manifest.season_lengths == want and manifest.season_length == want[0]
    old = manifest.model_copy(update={"season_lengths": []})  # a manifest written before the field existed
    assert old.season_length == want[0]


# ---------------------------------------------------------------- public holidays (data.holidays)


def test_holiday_feature_counts_local_days_to_the_regions_holidays() -> None:
    """Days since/until a public holiday, by the local date: Boxing Day 2016 starts at 00:00 in Melbourne, while
    it is still Christmas Day (a Sunday, not a holiday that year) in UTC; Melbourne Cup day is Victoria's only."""
    from lstm_dist.data.features import HOLIDAY_REACH_DAYS as R
    from lstm_dist.data.features import calendar_features

    mel = pd.DatetimeIndex(["2016-12-26 00:30", "2016-12-29 12:00", "2016-11-01 12:00", "2016-09-12 12:00"])
    ts = _unix(mel.tz_localize("Australia/Melbourne"))
    vic = calendar_features(ts, ["holiday"], tz="Australia/Melbourne", holidays="AU-VIC") * R
    assert np.allclose(vic[0], [0, 0])  # Boxing Day
    assert np.allclose(vic[1], [2, 3])  # Dec 29: two days after the 27th (Christmas observed), three before Jan 1
    assert np.allclose(vic[2], [0, 0])  # Melbourne Cup
    assert np.allclose(vic[3], [R, R])  # nothing within a week: both capped
    assert not np.allclose(calendar_features(ts[:1], ["holiday"], holidays="AU-VIC")[0], 0)  # 13:30 UTC on Dec 25
    national = calendar_features(ts[2:3], ["holiday"], tz="Australia/Melbourne", holidays="AU")[0]
    assert not np.allclose(national, 0)


def test_daytype_is_the_weekday_with_public_holidays_as_sundays() -> None:
    """By the local date: Boxing Day (Monday) and the 27th (Tuesday, Christmas observed) are Sundays in Melbourne,
    the 28th is a Wednesday again; Melbourne Cup day is a Sunday in Victoria only; without holidays, the weekday."""
    from lstm_dist.data.features import calendar_features

    mel = pd.DatetimeIndex(["2016-12-24 12:00", "2016-12-26 00:30", "2016-12-27 23:30", "2016-12-28 00:30",
                            "2016-11-01 12:00", "2016-12-25 12:00"])  # fmt: skip
    ts = _unix(mel.tz_localize("Australia/Melbourne"))
    kinds = calendar_features(ts, ["weekday", "daytype"], tz="Australia/Melbourne", holidays="AU-VIC")
    sunday = calendar_features(ts[5:], ["weekday"], tz="Australia/Melbourne")[0]
    holiday = [False, True, True, False, True, True]  # Dec 25 2016 is a Sunday anyway
    for row, is_holiday in zip(kinds, holiday, strict=True):
        assert np.allclose(row[2:], sunday if is_holiday else row[:2]), row
    assert not np.allclose(kinds[1, :2], sunday) and not np.allclose(kinds[3, 2:], sunday)  # Mon; Wed
    national = calendar_features(ts[4:5], ["daytype"], tz="Australia/Melbourne", holidays="AU")[0]
    assert not np.allclose(national, sunday)  # Melbourne Cup is not a national holiday


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"calendar_features": ["holiday"]}, r"'holiday' and 'daytype' need data\.holidays"),
        ({"calendar_features": ["daytype"]}, r"'holiday' and 'daytype' need data\.holidays"),
        ({"holidays": "AU-VIC"}, r"data\.holidays=AU-VIC is used by .*add one to data\.calendar_features"),
        ({"calendar_features": ["holiday"], "holidays": "XX"}, r"data\.holidays=XX: no holiday calendar for .*'XX'"),
        (
            {"calendar_features": ["holiday"], "holidays": "AU-ZZ"},
            r"data\.holidays=AU-ZZ: AU has no subdivision 'ZZ'.*VIC",
        ),
    ],
)
def test_holidays_config_names_the_key_and_the_fix(kw: dict, match: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        _cfg(**kw)


def test_holiday_feature_reaches_windows_and_forecasts(ray_local, tmp_path: Path) -> None:
    """Ingest records the calendar; training windows and the forecast's future inputs carry the same distances."""
    from lstm_dist.data.features import calendar_features
    from lstm_dist.data.inference import make_inference_batch
    from lstm_dist.data.ingest import ingest
    from lstm_dist.data.windows import WindowDataset

    idx = pd.date_range("2016-10-17", periods=70, freq="D", tz="Australia/Melbourne")
    frame = pd.DataFrame({"timestamp": idx.tz_localize(None), "series_id": "s0", "target": np.arange(70.0)})
    path = _write(frame, tmp_path / "in.csv")
    cfg = _cfg(path=path, lookback=8, horizon=3, val_size=6, test_size=6, timezone="Australia/Melbourne",
               calendar_features=["holiday"], holidays="AU-VIC")  # fmt: skip
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert manifest.holidays == "AU-VIC" and manifest.x_features[-2:] == ["holiday_since", "holiday_until"]

    batch = WindowDataset(str(tmp_path / "shards"), split="train").batch(np.arange(5))
    want = calendar_features(batch["t0"][:, None], ["holiday"], tz="Australia/Melbourne", holidays="AU-VIC")
    assert np.allclose(batch["future"][:, :1, -2:], want) and np.ptp(batch["x"][..., -2:]) > 0

    future = make_inference_batch(frame, manifest=manifest)["future"]  # the history ends on Christmas Day 2016
    assert np.allclose(future[0, :, -2:] * 7, [[0, 0], [0, 0], [1, 4]])  # Boxing Day, the 27th, the 28th
