"""Champion / challenger: a new model version is promoted only when it beats the seasonal naive forecast and the
champion on the same test split.

The gate first: a version whose test MASE does not beat the seasonal naive's (by `tracking.baseline_margin`)
is never crowned, not even as the first model: it becomes `challenger`, is tagged `below_baseline` with both
scores, and the champion alias is left alone (`allow_below_baseline` overrides; the tag stays).
Then the rule: a freshly registered version becomes `challenger`; the current `champion` is loaded from the
registry and scored on the challenger's own test windows (the same WindowDataset, re-scaled into the
champion's units when its scalers differ); the challenger takes `champion` only if its score is lower
by the relative margin. The decision and both scores are written as tags on the challenger's version.
The `champion` alias is moved last, in one call, so a failure anywhere before it (loading, scoring,
a crash) leaves the champion where it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_dist.registry import CHALLENGER, CHAMPION, Registry, RegistryError

METRICS = ("mae", "rmse", "mase", "smape")
BELOW_BASELINE = "below_baseline"  # version tag: its test MASE did not beat the seasonal naive's


class PromotionError(RuntimeError):
    """A manual promotion or rollback that cannot be done as asked."""


@dataclass
class Decision:
    """What promotion decided, and on which numbers."""

    version: str
    alias: str
    promoted: bool
    reason: str
    metric: str
    challenger_score: float
    champion_version: str | None = None
    champion_score: float | None = None

    def tags(self, *, margin: float) -> dict[str, str]:
        tags = {
            "promotion": self.reason,
            "promotion.promoted": str(self.promoted).lower(),
            "promotion.metric": f"test_{self.metric}",
            "promotion.margin": f"{margin:g}",
            "promotion.challenger_score": f"{self.challenger_score:.6g}",
            f"test_{self.metric}": f"{self.challenger_score:.6g}",
        }
        if self.champion_version is not None:
            tags["promotion.champion_version"] = self.champion_version
            score = f"{self.champion_score:.6g}" if self.champion_score is not None else ""
            tags["promotion.champion_score"] = score
        return tags


@dataclass
class BaselineGate:
    """The model's and the seasonal naive's test MASE on the same windows, and what the config allows."""

    model_mase: float
    baseline_mase: float
    margin: float = 0.0
    allow_below: bool = False

    @property
    def passed(self) -> bool:
        return beats(self.model_mase, self.baseline_mase, margin=self.margin)

    def describe(self) -> str:
        need = f" by {self.margin:.1%}" if self.margin else ""
        verb = "beats" if self.passed else "does not beat"
        return f"test MASE {self.model_mase:.4g} {verb} the seasonal naive's {self.baseline_mase:.4g}{need}"

    def tags(self) -> dict[str, str]:
        tags = {
            "baseline.model_mase": f"{self.model_mase:.6g}",
            "baseline.snaive_mase": f"{self.baseline_mase:.6g}",
            "baseline.margin": f"{self.margin:g}",
            "baseline.passed": str(self.passed).lower(),
        }
        if not self.passed:
            tags[BELOW_BASELINE] = f"model MASE {self.model_mase:.6g}, seasonal naive MASE {self.baseline_mase:.6g}"
            if self.allow_below:
                tags["baseline.allowed_below"] = "true"
        return tags


def baseline_gate(metrics: dict[str, float], *, margin: float, allow_below: bool) -> BaselineGate:
    """The gate from an evaluation's metrics (`model_mase`, `snaive_mase`; missing ones count as NaN: not passed)."""
    nan = float("nan")
    return BaselineGate(
        float(metrics.get("model_mase", nan)), float(metrics.get("snaive_mase", nan)), margin, allow_below
    )


def beats(challenger: float, champion: float, *, margin: float) -> bool:
    """Lower is better: the challenger must be below the champion by the relative `margin` (0.02 = 2%)."""
    return bool(np.isfinite(challenger)) and challenger < champion * (1 - margin)


def promote_if_better(
    registry: Registry,
    *,
    name: str,
    version: str,
    metric: str,
    margin: float,
    challenger_score: float,
    shard_dir: str | None,
    season: int,
    gate: BaselineGate | None = None,
) -> Decision:
    """Give a freshly registered version its alias (see the module docstring); returns the decision."""
    if metric not in METRICS:
        raise ValueError(f"promotion metric must be one of {METRICS}, got '{metric}'")
    champion = registry.alias_version(name, CHAMPION)
    note = ""
    if gate is not None:
        registry.set_tags(name, version, gate.tags())
        if not gate.passed and not gate.allow_below:
            return _below_baseline(registry, name, version, gate, champion, metric, challenger_score, margin)
        if not gate.passed:
            note = f" (below baseline, allowed by allow_below_baseline: {gate.describe()})"
    if champion is None:
        decision = Decision(version, CHAMPION, True, f"first model: champion{note}", metric, challenger_score)
        _record(registry, name, decision, margin=margin)
        registry.set_alias(name, CHAMPION, version)
        return decision
    if str(champion.version) == str(version):  # a rerun after this version was already promoted
        return Decision(version, CHAMPION, True, "already champion", metric, challenger_score)
    registry.set_alias(name, CHALLENGER, version)
    try:
        champ_score = score_version(registry, name, champion.version, shard_dir=shard_dir, season=season, metric=metric)
    except Exception as exc:  # the champion stays; the reason is on the challenger for a person to read
        decision = Decision(
            version,
            CHALLENGER,
            False,
            f"kept champion v{champion.version}: it could not be scored on this test split ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}){note}",
            metric,
            challenger_score,
            champion_version=str(champion.version),
        )
        _record(registry, name, decision, margin=margin)
        return decision
    promoted = beats(challenger_score, champ_score, margin=margin)
    need = f" by {margin:.1%}" if margin else ""
    where = " on the same test windows" if shard_dir is not None else " (the champion's recorded score)"
    if promoted:
        reason = (
            f"promoted: test {metric} {challenger_score:.4g} beats champion v{champion.version} "
            f"{champ_score:.4g}{need}{where}{note}"
        )
    else:
        reason = (
            f"kept champion v{champion.version}: test {metric} {challenger_score:.4g} does not beat "
            f"{champ_score:.4g}{need}{where}{note}"
        )
    decision = Decision(
        version,
        CHAMPION if promoted else CHALLENGER,
        promoted,
        reason,
        metric,
        challenger_score,
        champion_version=str(champion.version),
        champion_score=champ_score,
    )
    _record(registry, name, decision, margin=margin)
    if promoted:
        registry.set_alias(name, CHAMPION, version)  # the one call that moves the champion
        registry.delete_alias(name, CHALLENGER)
    return decision


def _below_baseline(registry, name, version, gate, champion, metric, challenger_score, margin) -> Decision:
    """Registered, `challenger`, tagged; the champion alias (or its absence) is left as it was."""
    if champion is not None and str(champion.version) == str(version):  # crowned earlier (by an override)
        return Decision(version, CHAMPION, True, "already champion", metric, challenger_score)
    kept = f"champion v{champion.version} kept" if champion is not None else "no champion set"
    reason = (
        f"below baseline, not promoted: {gate.describe()}; {kept} "
        "(pass --allow-below-baseline or tracking.allow_below_baseline=true to crown it anyway)"
    )
    decision = Decision(
        version,
        CHALLENGER,
        False,
        reason,
        metric,
        challenger_score,
        champion_version=str(champion.version) if champion is not None else None,
    )
    _record(registry, name, decision, margin=margin)
    registry.set_alias(name, CHALLENGER, version)
    return decision


def _record(registry: Registry, name: str, decision: Decision, *, margin: float) -> None:
    registry.set_tags(name, decision.version, decision.tags(margin=margin))


def score_version(registry: Registry, name: str, version: str, *, shard_dir: str, season: int, metric: str) -> float:
    """Test `metric` (original units) of a registered version on the test windows of `shard_dir`."""
    from lstm_dist.data.windows import WindowDataset
    from lstm_dist.evaluate import evaluate_model

    python_model = registry.load_python_model(name, version)
    ds = WindowDataset(shard_dir, split="test")
    windows = ds if same_scaling(python_model.manifest, ds.manifest) else RescaledWindows(ds, python_model.manifest)
    # A version refit on all rows trained on these test windows (when the data is the same): score the
    # evaluated model it was refit from, which did not see them.
    net = getattr(python_model, "heldout_net", None) or python_model.net
    evaluation = evaluate_model(net, windows, season=season, baselines=False)
    return float(evaluation.metrics[f"model_{metric}"])


def same_scaling(a, b) -> bool:
    """Whether two manifests turn raw values into identical model inputs (features, series, scaler stats)."""
    if (a.x_features, a.lookback, a.horizon) != (b.x_features, b.lookback, b.horizon):
        return False
    if [s.name for s in a.series] != [s.name for s in b.series]:
        return False
    if _transform_of(a) != _transform_of(b):
        return False
    (la, sa), (lb, sb) = a.loc_scale(), b.loc_scale()
    return la.shape == lb.shape and np.allclose(la, lb) and np.allclose(sa, sb)


def _transform_of(m) -> tuple:
    """(target transform, Box-Cox lambdas by series name): what a re-scaling cannot convert between."""
    return m.data_config.get("target_transform", "none"), {s.name: s.target_lambda for s in m.series}


class RescaledWindows:
    """The test windows of one shard set as another model's inputs: same raw values, that model's scaling.

    Stored columns are un-scaled with the data's stats and re-scaled with the model's (per series, by
    name); calendar features pass through. Needs the same features and horizon, and a lookback no longer
    than the data's (a shorter one sees the last steps of each window)."""

    def __init__(self, ds, manifest) -> None:
        data = ds.manifest
        if data.stored_cols != manifest.stored_cols or data.x_features != manifest.x_features:
            raise ValueError(
                f"the model's features {manifest.x_features} differ from the data's {data.x_features}: "
                "the scores would not be comparable"
            )
        kind, lam = _transform_of(manifest)
        data_kind, data_lam = _transform_of(data)
        if kind != data_kind or any(data_lam.get(n, v) != v for n, v in lam.items()):
            raise ValueError(
                f"the model was trained on data.target_transform={kind}, the test data use {data_kind} "
                "(or other Box-Cox lambdas): the scores would not be comparable"
            )
        if manifest.horizon != data.horizon:
            raise ValueError(f"the model forecasts {manifest.horizon} steps, the test windows have {data.horizon}")
        if manifest.lookback > data.lookback:
            raise ValueError(
                f"the model needs a lookback of {manifest.lookback}, the test windows have {data.lookback}"
            )
        model_index = manifest.series_index()
        missing = [s.name for s in data.series if s.name not in model_index]
        if missing and manifest.scaler_scope != "global":
            raise ValueError(f"the model does not know series {missing[:5]}")
        self.ds, self.manifest = ds, manifest
        self.split, self.horizon, self.lookback = ds.split, ds.horizon, manifest.lookback
        self.num_targets = ds.num_targets
        self.num_series = manifest.num_series
        self._to_model = np.array([model_index.get(s.name, 0) for s in data.series], dtype=np.int64)
        self._num_stored = len(data.stored_cols)

    def __len__(self) -> int:
        return len(self.ds)

    def window_series(self) -> np.ndarray:
        return self._to_model[self.ds.window_series()]

    def batch(self, indices: np.ndarray) -> dict[str, Any]:
        b = dict(self.ds.batch(indices))
        data_loc, data_scale = self.ds.manifest.loc_scale()  # [S, Fs]
        model_loc, model_scale = self.manifest.loc_scale()
        own, theirs = b["series"], self._to_model[b["series"]]

        def rescale(values: np.ndarray, cols: slice) -> np.ndarray:  # [B, *, C] scaled by the data -> by the model
            raw = values * data_scale[own][:, None, cols] + data_loc[own][:, None, cols]
            return ((raw - model_loc[theirs][:, None, cols]) / model_scale[theirs][:, None, cols]).astype(np.float32)

        fs, nt = self._num_stored, self.num_targets
        x = b["x"].copy()
        x[:, :, :fs] = rescale(x[:, :, :fs], slice(0, fs))
        b["x"] = x[:, -self.lookback :]
        b["y"] = rescale(b["y"], slice(0, nt))
        num_fut = len(self.manifest.future_cols)
        if num_fut:
            fut = b["future"].copy()
            fut[:, :, :num_fut] = rescale(fut[:, :, :num_fut], slice(fs - num_fut, fs))
            b["future"] = fut
        b["series"] = theirs
        return b


# ---------------------------------------------------------------------------------------------
# Manual moves (lstm-dist models promote | rollback)


def promote_version(registry: Registry, *, name: str, version: str, reason: str = "promoted by hand") -> str | None:
    """Make `version` the champion; returns the previous champion's version (None if there was none)."""
    try:
        if not str(version).isdigit():
            raise RegistryError(f"'{version}' is not a version number")
        registry.version(name, version)
    except RegistryError:
        raise PromotionError(f"model '{name}' has no version {version}") from None
    previous = _alias_version(registry, name, CHAMPION)
    if previous == str(version):
        return previous
    registry.set_tags(
        name, version, {"promotion": reason, **({"promotion.previous_champion": previous} if previous else {})}
    )
    registry.set_alias(name, CHAMPION, version)
    if _alias_version(registry, name, CHALLENGER) == str(version):
        registry.delete_alias(name, CHALLENGER)
    return previous


def rollback(registry: Registry, *, name: str) -> tuple[str, str]:
    """Give `champion` back to the version it had before the current champion; returns (old, new)."""
    current = _alias_version(registry, name, CHAMPION)
    if current is None:
        raise PromotionError(f"model '{name}' has no champion to roll back")
    tags = registry.version(name, current).tags
    previous = tags.get("promotion.previous_champion") or tags.get("promotion.champion_version")
    if not previous:
        raise PromotionError(
            f"champion v{current} of '{name}' records no previous champion; choose one with "
            f"`lstm-dist models promote {name} VERSION`"
        )
    registry.set_tags(name, previous, {"promotion": f"rolled back to from v{current}"})
    registry.set_alias(name, CHAMPION, previous)
    return current, previous


def _alias_version(registry: Registry, name: str, alias: str) -> str | None:
    found = registry.alias_version(name, alias)
    return str(found.version) if found is not None else None
