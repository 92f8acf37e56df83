"""Retrain's "new data?" decision, without Ray: content fingerprints against the registry's lineage tags.

The full retrain (challenger, same hold-out, promotion) runs as scheduled Ray jobs in test_jobs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lstm_dist.pipelines.retrain import Champion, already_decided, describe_changes
from lstm_dist.pipelines.train import FILES_TAG, FINGERPRINT_TAG

ROOT = Path(__file__).resolve().parent.parent


def champion(fingerprint: str | None, files: dict[str, str] | None = None) -> Champion:
    tags = {} if fingerprint is None else {FINGERPRINT_TAG: fingerprint}
    if files is not None:
        tags[FILES_TAG] = json.dumps(files)
    return Champion(name="m", version="3", tags=tags)


def test_changes_are_named_against_the_champions_files() -> None:
    lineage = {"fingerprint": "new", "files": {"/d/a.csv": "a" * 64, "/d/b.csv": "c" * 64, "/d/new.csv": "e" * 64}}
    before = {"/d/a.csv": "a" * 16, "/d/b.csv": "b" * 16, "/d/gone.csv": "d" * 16}
    text = describe_changes(champion("old", before), lineage)
    assert text.startswith("new data: 1 changed, 1 new, 1 removed file(s)")
    assert "b.csv" in text and "new.csv" in text and "gone.csv" in text and "a.csv" not in text
    assert "no recorded data fingerprint" in describe_changes(champion(None), lineage)


def store_with_challenger(tmp_path, challenger_tags: dict[str, str] | None):
    """A real sqlite registry holding model 'm' v1..v4; v4 is the `challenger` with `challenger_tags`."""
    from lstm_dist.config import load_config
    from lstm_dist.registry import CHALLENGER, Registry

    cfg = load_config(ROOT / "conf" / "debug.yaml", [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    registry = Registry(cfg.tracking_uri())
    registry.client.create_registered_model("m")
    for _ in range(4):
        registry.client.create_model_version("m", source=str(tmp_path))
    if challenger_tags is not None:
        registry.set_tags("m", "4", challenger_tags)
        registry.set_alias("m", CHALLENGER, "4")
    return cfg


@pytest.mark.parametrize(
    ("champ", "challenger", "expected"),
    [
        ("same", None, "champion v3 was trained"),
        ("old", {FINGERPRINT_TAG: "same"}, "challenger v4 was trained and compared with champion v3"),
        ("old", {FINGERPRINT_TAG: "older"}, None),
        ("old", None, None),
    ],
)
def test_no_new_data_means_the_champion_or_its_last_challenger_saw_these_inputs(
    tmp_path, champ: str, challenger, expected
) -> None:
    cfg = store_with_challenger(tmp_path, challenger)
    assert already_decided(cfg, "same", champion(champ)) == expected
    assert already_decided(cfg, "same", None) is None  # no champion: always train the first one
