"""Temperature scaling and the abstention threshold, both fitted on the validation split.

Temperature: p_T = softmax(log p / T), T > 0 minimising the negative log-likelihood of the
validation labels (scipy, bounded on log T). It never changes the argmax, only the confidence.

Abstention rule (params.yaml `evaluate.abstain_target_precision`): the model answers when its top
calibrated probability is >= the threshold, else abstains ("uncertain: refer"). The threshold is
the LOWEST top-probability on validation at which the accepted predictions (all validation cases
at or above it) still reach the target precision, i.e. the largest validation coverage meeting
the target. When no threshold reaches it, the threshold lies above every validation confidence
(abstain on everything seen) and `reachable` is false.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled by `temperature` (1: unchanged)."""
    probs = np.asarray(probs, np.float64)
    if temperature == 1.0:
        return probs
    return softmax(np.log(np.clip(probs, EPS, 1.0)) / temperature, axis=1)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """T minimising the NLL of labels `y` (class indices) under apply_temperature(probs, T)."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0))
    y = np.asarray(y, np.int64)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    best = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(best.x))


def abstain_threshold(probs: np.ndarray, y: np.ndarray, target: float) -> tuple[float, bool]:
    """(threshold, reachable) by the rule in the module docstring."""
    conf = np.asarray(probs).max(axis=1)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(y)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    precision = np.cumsum(correct) / np.arange(1, len(conf) + 1)
    ends = np.r_[conf[1:] != conf[:-1], True]          # last case of each run of equal confidence
    ok = np.flatnonzero(ends & (precision >= target))
    if len(ok) == 0:
        return float(np.nextafter(conf[0], np.inf)) if len(conf) else 1.0, False
    return float(conf[ok[-1]]), True


def coverage(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Share of cases answered and the accuracy of those answered (None when none is)."""
    conf = np.asarray(probs).max(axis=1)
    accepted = conf >= threshold
    n = int(accepted.sum())
    acc = float((np.asarray(probs).argmax(axis=1)[accepted] == np.asarray(y)[accepted]).mean()) if n else None
    return {"coverage": float(accepted.mean()) if len(conf) else None, "accepted_accuracy": acc,
            "accepted": n, "n": int(len(conf))}


RULE = ("abstain when the top calibrated probability is below the threshold: the lowest validation "
        "confidence whose accepted cases reach the target precision (largest validation coverage)")


def calibration_report(val_probs: np.ndarray | None, y_val: np.ndarray | None, test_probs: np.ndarray,
                       y_test: np.ndarray, target: float | None, bins: int = 10) -> dict[str, Any]:
    """Fit T and the threshold on validation, report both splits (coverage, accepted accuracy, ECE).

    No validation cases: T = 1 and no abstention (nothing to fit on), said in `note`. No target
    (params without `evaluate.abstain_target_precision`): calibrated, never abstains.
    """
    from pipelines.metrics import calibration as ece_of

    report: dict[str, Any] = {"target_precision": target, "rule": RULE, "note": None}
    if val_probs is None or len(val_probs) == 0:
        temperature, threshold, reachable = 1.0, 0.0, None
        report["note"] = "no validation cases: uncalibrated, never abstains"
    else:
        temperature = fit_temperature(val_probs, y_val)
        cal_val = apply_temperature(val_probs, temperature)
        threshold, reachable = (0.0, None) if target is None else abstain_threshold(cal_val, y_val, target)
        val = coverage(cal_val, y_val, threshold)
        report.update(val_coverage=val["coverage"], val_accepted_accuracy=val["accepted_accuracy"],
                      val_ece_before=ece_of(y_val, val_probs, bins)[0],
                      val_ece_after=ece_of(y_val, cal_val, bins)[0])
        if reachable is False:
            report["note"] = f"no threshold reaches precision {target} on validation: abstains on all"
    cal_test = apply_temperature(test_probs, temperature)
    test = coverage(cal_test, y_test, threshold)
    report.update(temperature=temperature, threshold=threshold, reachable=reachable,
                  test_coverage=test["coverage"], test_accepted_accuracy=test["accepted_accuracy"],
                  test_accepted=test["accepted"], test_n=test["n"])
    if len(test_probs):
        report.update(test_ece_before=ece_of(y_test, test_probs, bins)[0],
                      test_ece_after=ece_of(y_test, cal_test, bins)[0])
    return report
