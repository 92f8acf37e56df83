"""Start padding: a series of horizon + 1 points ingests, gives windows, trains and forecasts; padding never
reaches a target, a scaler, a lag or a history; splits cover a short series only where it is long enough."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_data_windows import split_of

from lstm_dist.config import DataConfig, ModelConfig
from lstm_dist.data.commands import inspect_command
from lstm_dist.data.errors import DataError
from lstm_dist.data.features import calendar_features
from lstm_dist.data.frequency import from_seconds
from lstm_dist.data.inference import make_inference_batch
from lstm_dist.data.ingest import FEW_VAL_WINDOWS, PAD_COL, build_shard, ingest
from lstm_dist.data.manifest import Manifest
from lstm_dist.data.shards import ipc_bytes, open_shard, shard_table
from lstm_dist.data.splits import SPLITS, needs_padding, padded_bounds, start_range
from lstm_dist.data.windows import WindowDataset
from lstm_dist.evaluate import evaluate_model
from lstm_dist.models import build_model
from lstm_dist.models.saved import MODEL_FILE, save_model
from lstm_dist.serving import ForecastModel
from lstm_dist.train.checkpoints import model_args_for

L, H = 8, 4
DAY = 86_400
# a: horizon + 1 (train only), b: 2H + 1 (train + test), c: 3H + 1 (all three, still padded),
# d: long enough without padding, e: below horizon + 1 (skipped or an error).
LENGTHS = {"a": H + 1, "b": 2 * H + 1, "c": 3 * H + 1, "d": 40, "e": H - 1}
KW = {"lookback": L, "horizon": H, "val_size": H, "test_size": H}


def frame(lengths: dict[str, int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for k, (name, n) in enumerate(lengths.items()):
        ts = pd.date_range("2001-01-01", periods=n, freq="D") + pd.Timedelta(days=3 * k)  # unaligned starts
        parts.append(pd.DataFrame({"timestamp": ts, "series_id": name, "target": 10 * k + rng.normal(size=n)}))
    return pd.concat(parts, ignore_index=True)


def config(path: Path, **over) -> DataConfig:
    base = {
        "path": str(path),
        "target_cols": ["target"],
        "covariate_cols": [],
        "lags": [1],
        "calendar_features": ["weekday"],
        "short_series": "skip",
        **KW,
    }
    return DataConfig.model_validate({**base, **over})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("short")
    raw = frame(LENGTHS)
    raw.to_csv(tmp / "in.csv", index=False)
    manifest, report = ingest(config(tmp / "in.csv"), out_dir=str(tmp / "shards"))
    return tmp, raw, manifest, report


# ------------------------------------------------------------------ splits (pure)


def test_which_series_pad_and_their_parts():
    assert not needs_padding(40, **KW, start_padding=True)  # long: stored as before
    assert not needs_padding(H, **KW, start_padding=True)  # below horizon + 1: skip/error
    assert not needs_padding(H + 1, **KW, start_padding=False)
    cover = {}
    for n in (H + 1, 2 * H, 2 * H + 1, 3 * H, 3 * H + 1):
        assert needs_padding(n, **KW, start_padding=True)
        vs, ts = padded_bounds(n, horizon=H, val_size=H, test_size=H)
        cover[n] = [
            sp
            for sp in SPLITS
            if (lambda r: r[1] >= r[0])(
                start_range(sp, num_rows=n, val_start=vs, test_start=ts, lookback=L, horizon=H, pad=L - 1)
            )
        ]
        assert vs >= H + 1  # train always keeps one real input row and a horizon
    assert cover == {
        H + 1: ["train"],
        2 * H: ["train"],
        2 * H + 1: ["train", "test"],
        3 * H: ["train", "test"],
        3 * H + 1: ["train", "val", "test"],
    }
    # the first train window of a padded series has exactly one real input row
    lo, _ = start_range("train", num_rows=H + 1, val_start=H + 1, test_start=H + 1, lookback=L, horizon=H, pad=L - 1)
    assert lo == -(L - 1)


def test_build_shard_writes_padding_rows_without_ray(tmp_path):
    stored = np.arange(6, dtype=np.float64).reshape(3, 2) + 1  # [3 rows, target + lag]
    block = {"names": ["a"], "offsets": np.array([0, 3]), "ts": np.array([100, 110, 120]), "stored": stored}
    loc, scale = np.array([[1.0, 1.0, 0.0]]), np.array([[2.0, 2.0, 1.0]])
    data, _, num_rows = build_shard(
        [(0, 0, -2, 3, 0)],
        loc,
        scale,
        stored_cols=["t", "t_lag1", PAD_COL],
        blocks=[block],
        pad_at=2,
        freq=from_seconds(10),
    )
    assert num_rows == 5
    path = tmp_path / "pad_shard.arrow"
    path.write_bytes(data.tobytes())
    shard = open_shard(path)
    np.testing.assert_array_equal(shard.ts, [80, 90, 100, 110, 120])
    np.testing.assert_array_equal(shard.features[:2], [[0, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(shard.features[2:, :2], (stored - 1) / 2)
    np.testing.assert_array_equal(shard.features[2:, 2], 0)


# ------------------------------------------------------------------ ingest (local Ray)


def naive_windows(raw: pd.DataFrame, names: list[str], split: str) -> dict[str, np.ndarray]:
    """Every window of `split`, by a plain loop over a manually left-padded, manually scaled series."""
    xs, ys, series = [], [], []
    for idx, name in enumerate(names):
        g = raw[raw.series_id == name].sort_values("timestamp")
        v = g.target.to_numpy()
        n = len(v)
        stored = np.stack([v, v[np.maximum(np.arange(n) - 1, 0)]], axis=1)  # target, lag 1 (the series so far)
        padded = n < L + H + 2 * H
        test = H if not padded or n >= 2 * H + 1 else 0
        val = H if not padded or n - test >= 2 * H + 1 else 0
        val_start, test_start = n - test - val, n - test
        mean, std = stored[:val_start].mean(axis=0), stored[:val_start].std(axis=0)
        z = (stored - mean) / np.where(std > 0, std, 1)
        pad = L - 1 if padded else 0
        z = np.concatenate([np.zeros((pad, 2)), z])  # padding: 0 in scaled units
        z = np.concatenate([z, (np.arange(n + pad) < pad)[:, None]], axis=1)  # + the mask column
        ts = g.timestamp.to_numpy().astype("datetime64[s]").astype(np.int64)
        ts = np.concatenate([ts[0] - DAY * np.arange(pad, 0, -1), ts])
        for s in range(-pad, n - L - H + 1):
            if split_of(s + L, s + L + H - 1, val_start, test_start) != split:
                continue
            rows = np.arange(s, s + L) + pad
            xs.append(np.concatenate([z[rows], calendar_features(ts[rows], ["weekday"])], axis=1))
            ys.append(z[rows[-1] + 1 : rows[-1] + 1 + H, :1])
            series.append(idx)
    return {"x": np.array(xs).reshape(-1, L, 5), "y": np.array(ys).reshape(-1, H, 1), "series": np.array(series)}


def test_few_validation_windows_are_reported(mixed):
    # A handful of short series leave a few validation windows: early stopping on them is noise, and the
    # report says so, with the key to change.
    report = mixed[3]
    n = report.windows["val"]
    assert 0 < n < FEW_VAL_WINDOWS
    assert [w for w in report.warnings if w.startswith(f"only {n} validation window(s)") and "data.val_size" in w]
    assert f"warning: only {n} validation window(s)" in report.summary()


def test_padded_windows_equal_a_manual_left_pad(mixed):
    tmp, raw, manifest, report = mixed
    names = [s.name for s in manifest.series]
    assert names == ["a", "b", "c", "d"] and report.skipped_series == ["e"]
    assert manifest.stored_cols == ["target", "target_lag1", PAD_COL] and manifest.pad_col == PAD_COL
    assert manifest.derived_cols == ["target_lag1"]
    assert [s.pad for s in manifest.series] == [L - 1, L - 1, L - 1, 0]
    for split in SPLITS:
        ds = WindowDataset(str(tmp / "shards"), split=split)
        got, want = ds.batch(np.arange(len(ds))), naive_windows(raw, names, split)
        np.testing.assert_array_equal(got["series"], want["series"])
        np.testing.assert_allclose(got["x"], want["x"], atol=1e-5)
        np.testing.assert_allclose(got["y"], want["y"], atol=1e-5)
        first_ts = np.array([s.first_timestamp for s in manifest.series])
        assert (got["t0"] > first_ts[got["series"]]).all()  # every target is a real row, after the first


def test_coverage_and_row_counts_leave_padding_out(mixed):
    tmp, raw, manifest, report = mixed
    t = manifest.totals
    assert t.series_per_split == {"train": 4, "val": 2, "test": 3}  # a: train; b: +test; c, d: all
    assert report.series_per_split == t.series_per_split and report.num_padded_series == 3
    kept = raw[raw.series_id != "e"]
    assert t.num_rows == report.num_rows == len(kept)  # real rows only
    assert t.num_pad_rows == 3 * (L - 1) and t.num_stored_rows == len(kept) + 3 * (L - 1)
    assert [s.num_rows for s in manifest.series] == [LENGTHS[n] for n in "abcd"]
    assert "series with windows: train 4, val 2, test 3 (3 start-padded)" in report.summary()
    text = inspect_command(str(tmp / "shards"))
    assert "series with windows: train 4, val 2, test 3 (3 start-padded)" in text
    assert f"{3 * (L - 1)} padding rows stored" in text
    # scalers are fitted on the real train rows only (padding would pull the mean towards 0)
    c = raw[raw.series_id == "c"].target.to_numpy()
    info = manifest.series[2]
    assert info.scaler["target"].loc == pytest.approx(c[: info.val_start].mean())
    assert info.scaler[PAD_COL].loc == 0 and info.scaler[PAD_COL].scale == 1


def test_poisoned_padding_reaches_inputs_but_never_targets(mixed, tmp_path):
    tmp, _, manifest, _ = mixed
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tmp / "shards", poisoned)
    pad_at = manifest.stored_cols.index(PAD_COL)
    manifest = manifest.model_copy(deep=True)  # the module's fixture stays as ingested
    for info in manifest.shards:
        shard = open_shard(poisoned / info.file)
        feats = np.array(shard.features)
        is_pad = feats[:, pad_at] > 0.5
        feats[np.ix_(is_pad, np.arange(pad_at))] = 1e6
        table = shard_table(np.array(shard.series), np.array(shard.ts), feats, stored_cols=manifest.stored_cols)
        del shard
        data = ipc_bytes(table).to_pybytes()
        (poisoned / info.file).write_bytes(data)
        info.sha256 = hashlib.sha256(data).hexdigest()  # a deliberate change: the reader checks shard checksums
    manifest.save(poisoned)
    for split in SPLITS:
        clean = WindowDataset(str(tmp / "shards"), split=split)
        dirty = WindowDataset(str(poisoned), split=split)
        a, b = clean.batch(np.arange(len(clean))), dirty.batch(np.arange(len(dirty)))
        np.testing.assert_array_equal(a["y"], b["y"])  # the loss sees only real rows
        if split == "train":
            assert (b["x"] == 1e6).any() and not (a["x"] == 1e6).any()  # the poison did reach the inputs
        # evaluation histories (and plots) drop padded steps
        real = dirty.manifest.real_steps(b["x"])
        assert not (b["x"][real] == 1e6).any()


def test_short_series_trains_and_forecasts(mixed):
    tmp, raw, manifest, _ = mixed
    ds = WindowDataset(str(tmp / "shards"), split="train")
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate({"hidden_size": 8})
    args = model_args_for(ds)
    net = build_model(cfg, **args)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    only_a = np.flatnonzero(ds.window_series() == 0)
    assert len(only_a) == 1  # the horizon + 1 series has exactly one training window
    b = {k: torch.from_numpy(v) for k, v in ds.batch(np.arange(len(ds))).items()}
    losses = []
    for _ in range(30):
        loss = net.loss(net(b["x"], future=b["future"], series=b["series"]), b["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    ckpt = tmp / "ckpt"
    ckpt.mkdir(exist_ok=True)
    save_model(ckpt / MODEL_FILE, model=net, model_args={"model": cfg.model_dump(), **args})
    model = ForecastModel()
    model.load_artifacts({"model": str(ckpt / MODEL_FILE), "manifest": str(tmp / "shards" / "manifest.json")})
    history = pd.concat([raw[raw.series_id == "a"], raw[raw.series_id == "d"].assign(series_id="new").head(3)])
    with pytest.warns(UserWarning, match="'new' is not in the manifest"):
        out = model.forecast(history)
    assert len(out) == 2 * H and np.isfinite(out["target"]).all()
    # the test split scores padded windows; a seasonal-naive step a season back in the padding falls back to naive
    scores = evaluate_model(net, WindowDataset(str(tmp / "shards"), split="test"), season=L).metrics
    assert all(np.isfinite(v) for v in scores.values()), scores


def test_incremental_reingest_keeps_padded_shards(tmp_path, ray_local):
    # a, b, c (padded) share one shard; d is longer than a shard (cut in pieces); only d changes
    lengths = {"a": H + 1, "b": 2 * H + 1, "c": 3 * H + 1, "d": 500}
    frame(lengths).to_csv(tmp_path / "before.csv", index=False)
    changed = frame(lengths)
    changed.loc[changed.index[-1], "target"] += 1.0
    changed.to_csv(tmp_path / "in.csv", index=False)
    cfg = config(tmp_path / "in.csv", rows_per_shard=16)
    ingest(config(tmp_path / "before.csv", rows_per_shard=16), out_dir=str(tmp_path / "before"))
    _, report = ingest(cfg, out_dir=str(tmp_path / "inc"), previous=str(tmp_path / "before"))
    ingest(cfg, out_dir=str(tmp_path / "full"))
    assert report.num_changed_series == 1 and report.num_reused_shards == 1, report.summary()
    assert Manifest.load(tmp_path / "inc").shards[0].segments[0].row_start == -(L - 1)
    for split in SPLITS:
        inc, full = (
            WindowDataset(str(tmp_path / "inc"), split=split),
            WindowDataset(str(tmp_path / "full"), split=split),
        )
        a, b = inc.batch(np.arange(len(inc))), full.batch(np.arange(len(full)))
        for key in ("x", "y", "series", "t0"):
            np.testing.assert_array_equal(a[key], b[key])


def test_inference_pads_a_short_history_like_the_first_window(mixed):
    tmp, raw, manifest, _ = mixed
    ds = WindowDataset(str(tmp / "shards"), split="train")
    first = int(np.flatnonzero(ds.window_series() == 0)[0])  # a's window: one real input row, row 0
    want = ds.batch(np.array([first]))
    got = make_inference_batch(raw[raw.series_id == "a"].head(1), manifest=manifest)
    np.testing.assert_allclose(got["x"], want["x"], atol=1e-5)
    np.testing.assert_array_equal(got["t0"], want["t0"])
    three = make_inference_batch(raw[raw.series_id == "c"].head(3), manifest=manifest)
    assert three["x"].shape == (1, L, 5)
    np.testing.assert_array_equal(three["x"][0, :, 2], [1] * (L - 3) + [0] * 3)  # the mask


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_below_horizon_plus_one_follows_short_series(tmp_path, ray_local, policy):
    frame({"a": H, "d": 40}).to_csv(tmp_path / "in.csv", index=False)
    cfg = config(tmp_path / "in.csv", short_series=policy)
    if policy == "error":
        with pytest.raises(DataError, match=rf"series 'a' is too short: {H} rows.*horizon \+ 1 = {H + 1} rows"):
            ingest(cfg, out_dir=str(tmp_path / "shards"))
        return
    manifest, report = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert report.skipped_series == ["a"] and [s.name for s in manifest.series] == ["d"]
    # nothing needed padding: stored as without the feature (no mask column)
    assert manifest.pad_col is None and manifest.stored_cols == ["target", "target_lag1"]
    assert manifest.totals.series_per_split == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(DataError, match="trained without start padding"):
        make_inference_batch(frame({"d": 40}).head(3), manifest=manifest)


def test_start_padding_off_keeps_the_old_rule(tmp_path, ray_local):
    frame({"a": H + 1, "d": 40}).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(DataError, match=r"series 'a' is too short.*needs at least \d+ rows.*data\.start_padding=true"):
        ingest(config(tmp_path / "in.csv", short_series="error", start_padding=False), out_dir=str(tmp_path / "s"))
    ingest(config(tmp_path / "in.csv"), out_dir=str(tmp_path / "s"))  # on by default: the series is padded
    manifest = Manifest.load(tmp_path / "s")
    assert manifest.pad_col == PAD_COL and manifest.series[0].pad == L - 1
