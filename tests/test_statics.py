"""Static covariates (data.static_cols): read and checked at ingest, kept in the manifest, fed to the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from lstm_dist.config import ConfigError, DataConfig, ModelConfig, from_dict
from lstm_dist.data import statics
from lstm_dist.data.errors import DataError
from lstm_dist.data.ingest import ingest
from lstm_dist.data.windows import WindowDataset
from lstm_dist.models import build_model
from lstm_dist.serving import ForecastModel, history_from_shards
from lstm_dist.train.checkpoints import model_args_for

L, H = 12, 4


def _raw(num_steps: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for name, state, purpose, area in (
        ("a", "NSW", "Holiday", 10),
        ("b", "VIC", "Business", 3),
        ("c", "NSW", "Visit", 7),
    ):
        t = np.arange(num_steps)
        ts = np.datetime64("2024-01-01T00:00:00") + t.astype("timedelta64[h]")
        value = 10 + np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.1, num_steps)
        rows.append(
            pd.DataFrame(
                {"timestamp": ts, "series_id": name, "target": value, "State": state, "Purpose": purpose, "area": area}
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_read_encode_decode() -> None:
    raw = _raw(5)
    rows = statics.read_static(
        pa.Table.from_pandas(raw), series_col="series_id", static_cols=["State", "area"], source="x.csv"
    )
    assert rows == {"a": ("NSW", 10), "b": ("VIC", 3), "c": ("NSW", 7)}
    enc = statics.fit_encoding(rows, static_cols=["State", "area"])
    assert statics.feature_names(enc) == ["State=NSW", "State=VIC", "area"]
    vec = statics.encode(rows["b"], enc)
    assert vec[:2] == [0.0, 1.0] and vec[2] < 0  # area 3 is below the mean of 10, 3, 7
    assert statics.decode(vec, enc) == pytest.approx(("VIC", 3.0))
    assert statics.encode(("QLD", 7), enc)[:2] == [0.0, 0.0]  # a level not seen at ingest


def test_a_value_varying_within_a_series_names_column_and_series() -> None:
    raw = _raw(5)
    raw.loc[raw.index[7], "Purpose"] = "Other"  # a row of series 'b'
    with pytest.raises(DataError, match=r"x.csv: static column 'Purpose' .* varies within series 'b'"):
        statics.read_static(pa.Table.from_pandas(raw), series_col="series_id", static_cols=["Purpose"], source="x.csv")
    with pytest.raises(DataError, match=r"static column\(s\) \['Region'\] .* not found"):
        statics.read_static(pa.Table.from_pandas(raw), series_col="series_id", static_cols=["Region"], source="x.csv")
    with pytest.raises(ConfigError, match="already have another role"):
        from_dict({"data": {"sample": {}, "covariate_cols": ["State"], "static_cols": ["State"]}})


def test_the_model_uses_the_static_vector() -> None:
    table = [[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]]
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(hidden_size=8), num_features=2, num_targets=1, horizon=H, num_series=2, static=table
    )
    x = torch.randn(2, L, 2).cumsum(1)
    series = torch.tensor([0, 1])
    by_index = model.predict(x, series=series)
    torch.testing.assert_close(model.predict(x, static=torch.tensor(table)), by_index)
    swapped = model.predict(x, static=torch.tensor(table[::-1]))
    assert not torch.allclose(swapped, by_index)


@pytest.mark.usefixtures("ray_local")
def test_ingest_stores_statics_and_the_pyfunc_reads_them_from_history(tmp_path) -> None:
    raw = _raw()
    raw.to_parquet(tmp_path / "raw.parquet")
    cols = ["State", "Purpose", "area"]
    cfg = DataConfig(path=str(tmp_path / "raw.parquet"), lookback=L, horizon=H, static_cols=cols)
    manifest, _ = ingest(cfg, out_dir=str(tmp_path / "shards"))
    assert manifest.static_features == [
        "State=NSW",
        "State=VIC",
        "Purpose=Business",
        "Purpose=Holiday",
        "Purpose=Visit",
        "area",
    ]
    assert manifest.series[1].static[:5] == [0.0, 1.0, 1.0, 0.0, 0.0]  # b: VIC, Business
    args = model_args_for(WindowDataset(str(tmp_path / "shards"), split="train"))
    assert np.asarray(args["static"]).shape == (3, 6)
    torch.manual_seed(0)
    pyfunc = ForecastModel()
    pyfunc.net = build_model(ModelConfig(hidden_size=8), **args).eval()
    pyfunc.manifest = manifest
    history = history_from_shards(tmp_path / "shards", num_series=3)
    assert set(cols) <= set(history.columns)  # the input example carries the static columns
    base = pyfunc.forecast(history)
    # The same series with the static values of another: another forecast, so they are fed.
    moved = pyfunc.forecast(history.assign(State="VIC", Purpose="Business", area=3))
    a_base, a_moved = base[base.series_id == "a"].target, moved[moved.series_id == "a"].target
    assert not np.allclose(a_base, a_moved)
    with pytest.raises(DataError, match=r"static column\(s\) \['area'\]"):
        pyfunc.forecast(history.drop(columns=["area"]))
