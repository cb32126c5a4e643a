"""Group bootstrap intervals for every classification metric, vectorised over resamples.

Why by group: images of one lesion or one patient are correlated, so resampling images would
understate the uncertainty; we resample groups (lesion_id, slide, ...) with replacement and give
each image the count of its group. Why vectorised: a resample is a weight vector, so every metric
is a weighted confusion matrix, weighted mean or weighted rank statistic, computed for all
resamples with a few matrix products instead of R scikit-learn calls. The point estimates stay
scikit-learn's (pipelines.metrics); tests check these formulas against scikit-learn on repeated rows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.jsonsafe import json_safe

CONFIDENCE = 0.95
PER_CLASS_STATS: tuple[str, ...] = ("sensitivity", "specificity", "precision", "f1")


def group_weights(groups: Sequence[Any] | np.ndarray | pd.Series, n_resamples: int,
                  seed: int) -> np.ndarray:
    """(R, n) weights: image i's weight in resample r is how often its group was drawn."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    codes, uniques = pd.factorize(pd.Series(list(groups)).astype(str))
    n_groups = len(uniques)
    if n_groups == 0:
        raise ValueError("no groups to resample")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    flat = (draws + np.arange(n_resamples)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n_groups).reshape(n_resamples, n_groups)
    return counts[:, codes].astype(np.float64)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    return np.divide(num, den, out=out, where=den > 0)


def _auc_ovr(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC-AUC over the classes present in each resample (NaN if < 2)."""
    aucs, present = [], []
    for c in range(p.shape[1]):
        order = np.argsort(p[:, c], kind="mergesort")
        s = p[order, c]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tied scores count half
        pos = y[order] == c
        w = weights[:, order]
        wp = np.add.reduceat(w * pos, starts, axis=1)
        wn = np.add.reduceat(w * ~pos, starts, axis=1)
        below = np.cumsum(wn, axis=1) - wn
        n_pos, n_neg = wp.sum(axis=1), wn.sum(axis=1)
        num = (wp * (below + 0.5 * wn)).sum(axis=1)
        aucs.append(_div(num, n_pos * n_neg))
        present.append(n_pos > 0)
    auc, has = np.stack(aucs, axis=1), np.stack(present, axis=1)
    k = has.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(k >= 2, (auc * has).sum(axis=1) / k, np.nan)


def weighted_metrics(y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray, *,
                     top_k: int = 2, calibration_bins: int = 10) -> dict[str, Any]:
    """Every scalar of metrics.classification_metrics (and per-class stats) for each weight row.

    Returns {key: (R,) array}, plus "per_class": [stat] -> (R, C) arrays. Same definitions as
    scikit-learn with sample_weight: macro averages over all classes, balanced accuracy over the
    classes present, MCC 0 when undefined, zero_division=0.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_prob, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n, n_classes = p.shape
    if y.shape != (n,) or w.shape[1] != n:
        raise ValueError(f"shapes disagree: y {y.shape}, probs {p.shape}, weights {w.shape}")
    pred = p.argmax(axis=1)
    cell = np.zeros((n, n_classes * n_classes))
    cell[np.arange(n), y * n_classes + pred] = 1.0
    cm = (w @ cell).reshape(-1, n_classes, n_classes)
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true_sum, pred_sum = cm.sum(axis=2), cm.sum(axis=1)
    fp, fn = pred_sum - tp, true_sum - tp
    tn = total[:, None] - tp - fp - fn
    recall, precision = _div(tp, true_sum), _div(tp, pred_sum)
    f1 = _div(2 * tp, true_sum + pred_sum)
    present = true_sum > 0
    support = true_sum.sum(axis=1)

    correct = np.trace(cm, axis1=1, axis2=2)
    cov_tp = correct * total - (true_sum * pred_sum).sum(axis=1)
    cov_pp = total**2 - (pred_sum**2).sum(axis=1)
    cov_tt = total**2 - (true_sum**2).sum(axis=1)
    denom = cov_pp * cov_tt
    mcc = _div(cov_tp, np.sqrt(np.where(denom > 0, denom, 0.0)))

    k = max(1, min(int(top_k), n_classes))
    ranked = np.argsort(p, axis=1, kind="mergesort")[:, ::-1][:, :k]
    hits = (ranked == y[:, None]).any(axis=1).astype(np.float64)

    conf = p.max(axis=1)
    bins = np.clip(np.ceil(conf * calibration_bins).astype(np.int64) - 1, 0, calibration_bins - 1)
    onehot_bin = np.zeros((n, calibration_bins))
    onehot_bin[np.arange(n), bins] = 1.0
    acc_mass = w @ (onehot_bin * (pred == y)[:, None])
    conf_mass = w @ (onehot_bin * conf[:, None])

    out: dict[str, Any] = {
        "accuracy": _div(correct, total),
        "balanced_accuracy": _div((recall * present).sum(axis=1), present.sum(axis=1)),
        "precision_macro": precision.mean(axis=1),
        "precision_weighted": _div((precision * true_sum).sum(axis=1), support),
        "recall_macro": recall.mean(axis=1),
        "recall_weighted": _div((recall * true_sum).sum(axis=1), support),
        "f1_macro": f1.mean(axis=1),
        "f1_weighted": _div((f1 * true_sum).sum(axis=1), support),
        "mcc": mcc,
        "roc_auc_macro_ovr": _auc_ovr(y, p, w),
        f"top_{k}_accuracy": _div(w @ hits, total),
        "ece": _div(np.abs(acc_mass - conf_mass).sum(axis=1), total),
        "per_class": {"sensitivity": recall, "specificity": _div(tn, tn + fp),
                      "precision": precision, "f1": f1, "support": true_sum},
    }
    return out


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """Percentile interval of the defined (non-NaN) resample values; None if none is defined."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(v, [tail, 100 - tail])
    return [float(lo), float(hi)]


def metric_intervals(y_true: np.ndarray, y_prob: np.ndarray, groups: Sequence[Any],
                     class_names: Sequence[str], *, n_resamples: int, seed: int,
                     confidence: float = CONFIDENCE, top_k: int = 2,
                     calibration_bins: int = 10) -> dict[str, Any]:
    """95% (or `confidence`) group-bootstrap interval of every metric: {key: [low, high]}.

    Also "per_class" -> {class: {stat: [low, high]}} and "bootstrap" (how it was drawn).
    """
    w = group_weights(groups, n_resamples, seed)
    values = weighted_metrics(y_true, y_prob, w, top_k=top_k, calibration_bins=calibration_bins)
    per_class = values.pop("per_class")
    out: dict[str, Any] = {key: percentile_interval(v, confidence) for key, v in values.items()}
    out["per_class"] = {
        str(name): {stat: percentile_interval(per_class[stat][:, i], confidence)
                    for stat in PER_CLASS_STATS}
        for i, name in enumerate(class_names)
    }
    out["bootstrap"] = describe(groups, n_resamples, seed, confidence)
    return json_safe(out)


def describe(groups: Sequence[Any], n_resamples: int, seed: int, confidence: float) -> dict[str, Any]:
    """How an interval was drawn, for the report (the unit is the group, not the image)."""
    return {"unit": "group_id", "n_groups": int(pd.Series(list(groups)).astype(str).nunique()),
            "n_resamples": int(n_resamples), "seed": int(seed), "confidence": float(confidence),
            "method": "percentile"}


def paired_difference(y_true: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray,
                      groups: Sequence[Any], metric: str, *, n_resamples: int, seed: int,
                      confidence: float = CONFIDENCE, top_k: int = 2,
                      calibration_bins: int = 10) -> dict[str, Any]:
    """Interval of metric(a) - metric(b), both scored on the same group resamples (paired)."""
    w = group_weights(groups, n_resamples, seed)
    kwargs: Mapping[str, Any] = {"top_k": top_k, "calibration_bins": calibration_bins}
    a, b = weighted_metrics(y_true, prob_a, w, **kwargs), weighted_metrics(y_true, prob_b, w, **kwargs)
    if metric not in a or metric == "per_class":
        raise ValueError(f"{metric!r} has no bootstrap; known: {sorted(k for k in a if k != 'per_class')}")
    diff = a[metric] - b[metric]
    interval = percentile_interval(diff, confidence)
    defined = diff[np.isfinite(diff)]
    return json_safe({
        "metric": metric, "low": None if interval is None else interval[0],
        "high": None if interval is None else interval[1],
        "mean": float(defined.mean()) if defined.size else None,
        "n_defined": int(defined.size), **describe(groups, n_resamples, seed, confidence),
    })
