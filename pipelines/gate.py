"""The promotion gate's logic, pure: which test images are fair, the numbers, and the decision.

promote (the stage) loads models and the registry; everything that decides is here, so tests can
build a challenger that wins on the metric but loses melanoma sensitivity without any model.
Rules, in order: the challenger's own test score must reach the floor; with a comparable champion,
both are scored on the same test images neither trained or early-stopped on, the challenger must
beat the champion by more than `min_delta`, optionally with the lower bound of the paired group
bootstrap 95% interval above `min_delta`, and it must not lower the sensitivity of any guarded
class by more than `max_sensitivity_drop`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.bootstrap import paired_difference
from pipelines.errors import ConfigError
from pipelines.fingerprint import seen_mask
from pipelines.metrics import classification_metrics

# Champion states: what the challenger is compared with.
NO_CHAMPION, COMPARED, UNSCORABLE, OTHER_LABELS = "none", "compared", "unscorable", "other_labels"
ALREADY_CHAMPION = "is_candidate"  # promote re-run on the run that is already the champion


@dataclass(frozen=True)
class Policy:
    """The gate's knobs (params `promote:`), resolved for one data set."""

    metric: str
    floor: float
    min_delta: float = 0.0
    require_ci_above_delta: bool = False
    guard_classes: tuple[str, ...] = ()
    max_sensitivity_drop: float = 0.0
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    confidence: float = 0.95


def policy_from_params(promote: Mapping[str, Any], dataset: str, classes: Sequence[str]) -> Policy:
    """Read params `promote:`; a guarded class the label set lacks is a configuration error."""
    guards = tuple((promote.get("guard_classes") or {}).get(dataset) or ())
    unknown = [c for c in guards if c not in classes]
    if unknown:
        raise ConfigError(f"promote.guard_classes.{dataset} names {unknown}, not in the label set "
                         f"{list(classes)}")
    return Policy(
        metric=str(promote["metric"]), floor=float(promote["floor"]),
        min_delta=float(promote.get("min_delta", 0.0)),
        require_ci_above_delta=bool(promote.get("require_ci_above_delta", False)),
        guard_classes=guards, max_sensitivity_drop=float(promote.get("max_sensitivity_drop", 0.0)),
        bootstrap_resamples=int(promote.get("bootstrap_resamples", 1000)),
        bootstrap_seed=int(promote.get("bootstrap_seed", 0)),
        confidence=float(promote.get("confidence", 0.95)),
    )


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger scored on the same fair test images."""

    n_test: int
    n_compared: int
    excluded: Mapping[str, int]          # model -> test images its fingerprint covers
    challenger_score: float | None = None
    champion_score: float | None = None
    delta_ci95: tuple[float, float] | None = None
    bootstrap: Mapping[str, Any] = field(default_factory=dict)
    sensitivity: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # guarded classes

    @property
    def n_excluded(self) -> int:
        return self.n_test - self.n_compared

    @property
    def delta(self) -> float | None:
        if self.challenger_score is None or self.champion_score is None:
            return None
        return self.challenger_score - self.champion_score

    def as_dict(self) -> dict[str, Any]:
        return {"n_test": self.n_test, "n_compared": self.n_compared, "n_excluded": self.n_excluded,
                "excluded_by": dict(self.excluded), "challenger_score": self.challenger_score,
                "champion_score": self.champion_score, "delta": self.delta,
                "delta_ci95": None if self.delta_ci95 is None else list(self.delta_ci95),
                "bootstrap": dict(self.bootstrap),
                "sensitivity": {k: dict(v) for k, v in self.sensitivity.items()}}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    blessed: bool
    reason: str
    champion_state: str
    checks: tuple[Check, ...]

    def guard_outcome(self) -> str:
        guard = [c for c in self.checks if c.name.startswith("sensitivity:")]
        if not guard:
            return "not_applied"
        return "passed" if all(c.passed for c in guard) else "refused"


def fair_test_images(test: pd.DataFrame, fingerprints: Mapping[str, Mapping[str, Any] | None]
                     ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Test rows that no model's fingerprint covers, and how many each fingerprint excluded."""
    masks = {model: seen_mask(test, fp) for model, fp in fingerprints.items()}
    seen = np.zeros(len(test), dtype=bool)
    for mask in masks.values():
        seen |= mask
    return test[~seen], {model: int(mask.sum()) for model, mask in masks.items()}


def compare_models(y: np.ndarray, groups: Sequence[Any], challenger: np.ndarray, champion: np.ndarray,
                   classes: Sequence[str], policy: Policy, *, n_test: int,
                   excluded: Mapping[str, int]) -> Comparison:
    """Scores, paired bootstrap interval of the difference and guarded sensitivities on one image set."""
    if len(y) == 0:
        return Comparison(n_test=n_test, n_compared=0, excluded=excluded)
    ours = classification_metrics(y, challenger, classes)
    theirs = classification_metrics(y, champion, classes)
    diff = paired_difference(y, challenger, champion, groups, policy.metric,
                             n_resamples=policy.bootstrap_resamples, seed=policy.bootstrap_seed,
                             confidence=policy.confidence)
    ci = None if diff["low"] is None else (float(diff["low"]), float(diff["high"]))
    sensitivity = {}
    for name in policy.guard_classes:
        support = int(ours["per_class"][name]["support"])
        new = ours["per_class"][name]["sensitivity"] if support else None
        old = theirs["per_class"][name]["sensitivity"] if support else None
        sensitivity[name] = {"support": support, "champion": old, "challenger": new,
                             "drop": None if support == 0 else old - new}
    bootstrap = {k: diff[k] for k in ("unit", "n_groups", "n_resamples", "seed", "confidence",
                                      "method", "mean", "n_defined")}
    return Comparison(n_test=n_test, n_compared=int(len(y)), excluded=excluded,
                      challenger_score=ours[policy.metric], champion_score=theirs[policy.metric],
                      delta_ci95=ci, bootstrap=bootstrap, sensitivity=sensitivity)


def decide(policy: Policy, candidate_score: float, champion_state: str,
           comparison: Comparison | None = None, champion_note: str = "") -> Decision:
    """Bless or refuse. `candidate_score`: the challenger's metric on its whole test split."""
    m = policy.metric
    if champion_state == ALREADY_CHAMPION:
        return Decision(True, f"the candidate is already the champion ({champion_note}): nothing to decide",
                        champion_state, ())
    checks = [Check("floor", candidate_score >= policy.floor,
                    f"{m} {candidate_score:.4f} {'>=' if candidate_score >= policy.floor else 'is below'}"
                    f" the floor {policy.floor:.4f}")]
    if champion_state == COMPARED:
        if comparison is None:
            raise ValueError("a compared champion needs a Comparison")
        checks.extend(_comparison_checks(policy, comparison))
    elif champion_state not in (NO_CHAMPION, UNSCORABLE, OTHER_LABELS):
        raise ValueError(f"unknown champion state {champion_state!r}")
    blessed = all(c.passed for c in checks)
    prefix = {
        NO_CHAMPION: "first champion: floor only",
        UNSCORABLE: f"champion unscorable ({champion_note}): floor only",
        OTHER_LABELS: f"champion not comparable ({champion_note}): floor only",
        COMPARED: f"compared with the champion on {comparison.n_compared if comparison else 0} test images",
    }[champion_state]
    failed = [c.detail for c in checks if not c.passed]
    body = "; ".join(failed) if failed else "; ".join(c.detail for c in checks)
    return Decision(blessed, f"{prefix}: {'refused: ' if failed else ''}{body}", champion_state,
                    tuple(checks))


def _comparison_checks(policy: Policy, comp: Comparison) -> list[Check]:
    m = policy.metric
    if comp.n_compared == 0 or comp.delta is None:
        return [Check("compared_images", False,
                      f"no test image is left that neither model trained on ({comp.n_test} test images, "
                      f"excluded {dict(comp.excluded)}): the champion cannot be fairly compared")]
    beats = comp.delta > policy.min_delta
    checks = [Check("min_delta", beats,
                    f"{m} {comp.challenger_score:.4f} {'beats' if beats else 'does not beat'} the "
                    f"champion's {comp.champion_score:.4f} by more than {policy.min_delta} "
                    f"(delta {comp.delta:+.4f})")]
    ci = comp.delta_ci95
    ci_text = "undefined" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
    if policy.require_ci_above_delta:
        ok = ci is not None and ci[0] > policy.min_delta
        checks.append(Check("ci_above_delta", ok,
                            f"95% paired bootstrap interval of the {m} difference {ci_text} "
                            f"{'lies above' if ok else 'does not lie above'} min_delta {policy.min_delta}"))
    for name in policy.guard_classes:
        s = comp.sensitivity.get(name) or {}
        if not s.get("support"):
            checks.append(Check(f"sensitivity:{name}", False,
                                f"sensitivity of {name} cannot be checked: no {name} case among the "
                                f"{comp.n_compared} compared test images"))
            continue
        drop = float(s["drop"])
        ok = drop <= policy.max_sensitivity_drop + 1e-12
        checks.append(Check(
            f"sensitivity:{name}", ok,
            f"sensitivity of {name} {'' if ok else 'drops '}from {s['champion']:.4f} (champion) to "
            f"{s['challenger']:.4f} (challenger), n {s['support']}: "
            f"{'within' if ok else 'more than'} max_sensitivity_drop {policy.max_sensitivity_drop}"))
    return checks
