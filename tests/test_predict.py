"""Batch prediction helpers without Ray: series groups, the file's metadata, model URIs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lstm_dist.predict import read_metadata, split_series, write_parquet
from lstm_dist.registry import Registry, RegistryError


def history(num_series: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series_id": [f"s{i:02d}" for i in range(num_series) for _ in range(3)],
            "timestamp": pd.date_range("2024-01-01", periods=3, freq="h").tolist() * num_series,
            "target": range(3 * num_series),
        }
    )


@pytest.mark.parametrize(("num_series", "parts"), [(5, 2), (5, 8), (1, 4), (7, 7)])
def test_series_groups_are_whole_disjoint_complete_and_never_empty(num_series: int, parts: int) -> None:
    frame = history(num_series).sample(frac=1, random_state=0)  # rows of a series need not be adjacent
    groups = split_series(frame, series_col="series_id", num_parts=parts)
    assert 1 <= len(groups) <= min(parts, num_series) and all(len(g) for g in groups)
    names = [set(g["series_id"]) for g in groups]
    assert sum(len(n) for n in names) == num_series and set().union(*names) == set(frame["series_id"])
    assert sum(len(g) for g in groups) == len(frame)  # every row, once: series are never split


def test_the_forecast_file_carries_the_model_version(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "forecast.parquet"
    write_parquet(history(2), str(out), metadata={"model_uri": "models:/m@champion", "model_version": "7"})
    assert read_metadata(str(out)) == {"model_uri": "models:/m@champion", "model_version": "7"}
    pd.testing.assert_frame_equal(pd.read_parquet(out), history(2))
    assert [p.name for p in out.parent.iterdir()] == ["forecast.parquet"]  # no temp file left


def test_model_uris_must_name_a_registered_model(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RegistryError, match="models:/<name>@<alias>"):
        Registry(uri).resolve("runs:/abc/model")
    with pytest.raises(RegistryError, match="not found in the registry"):
        Registry(uri).resolve("models:/nothing@champion")
