"""Retrain's "new data?" decision, without Ray: content fingerprints against the registry's lineage tags.

The full retrain (challenger, same hold-out, promotion) runs as scheduled Ray jobs in test_jobs.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lstm_dist.pipelines import retrain
from lstm_dist.pipelines.retrain import Champion, already_decided, describe_changes
from lstm_dist.pipelines.train import FILES_TAG, FINGERPRINT_TAG


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


class FakeClient:
    def __init__(self, challenger_tags: dict[str, str] | None) -> None:
        self.challenger_tags = challenger_tags

    def get_model_version_by_alias(self, name: str, alias: str):
        from mlflow.exceptions import MlflowException

        if self.challenger_tags is None:
            raise MlflowException("no alias")
        return SimpleNamespace(version="4", tags=self.challenger_tags)


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
    monkeypatch: pytest.MonkeyPatch, champ: str, challenger, expected
) -> None:
    monkeypatch.setattr(retrain, "_client", lambda cfg: FakeClient(challenger))
    assert already_decided(None, "same", champion(champ)) == expected
    assert already_decided(None, "same", None) is None  # no champion: always train the first one
