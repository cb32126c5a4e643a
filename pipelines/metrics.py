"""Clinician-grade classification metrics, as JSON-safe dicts (plain floats/ints/lists, NaN -> None).

Why not just accuracy: medical data sets are imbalanced (HAM10000 is ~67% naevi), so a model that
always says "naevus" looks good on accuracy. Balanced accuracy, MCC, per-class sensitivity and
specificity, calibration and a majority-class baseline make that failure visible. Everything here is
plain numpy/scikit-learn so evaluate, compare and tests share one definition of each number.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pipelines.features import UNKNOWN
from pipelines.jsonsafe import json_safe

# Metrics where smaller is better (ranking in compare and the ensemble's member choice).
LOWER_IS_BETTER: frozenset[str] = frozenset({"ece"})
SUBGROUP_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro_ovr")
SUBGROUP_COLUMNS: tuple[str, ...] = ("sex", "age_band", "localization")
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (-math.inf, 30.0, "<30"),
    (30.0, 45.0, "30-44"),
    (45.0, 60.0, "45-59"),
    (60.0, 75.0, "60-74"),
    (75.0, math.inf, "75+"),
)


def _labels_1d(y_true: np.ndarray) -> np.ndarray:
    """Accept integer labels or one-hot rows; return int labels."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D labels or 2-D one-hot, got shape {np.shape(y_true)}")
    return y.astype(np.int64)


def _check_inputs(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    y = _labels_1d(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    n_classes = len(class_names)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"y_prob must have shape (n, {n_classes}), got {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} rows but y_prob has {p.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes - 1}]")
    return y, p, n_classes


def roc_auc_macro_ovr(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC-AUC over the classes present in y_true.

    scikit-learn refuses when a class is absent from y_true (small test splits of rare classes); the
    mean over present classes equals sklearn's value when all are present. None if < 2 present.
    """
    y = _labels_1d(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    present = np.unique(y)
    if present.size < 2:
        return None
    aucs = [roc_auc_score((y == c).astype(int), p[:, c]) for c in present]
    return float(np.mean(aucs))


def top_k_accuracy(y_true: np.ndarray, y_prob: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k highest scores (same tie rule as sklearn)."""
    y = _labels_1d(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    k = max(1, min(int(k), p.shape[1]))
    ranked = np.argsort(p, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((ranked == y[:, None]).any(axis=1).mean())


def calibration(
    y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10
) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error over equal-width bins of top-1 confidence, and the bins.

    Bin b holds confidences in (b/B, (b+1)/B]; a confidence of exactly 0 falls in the first bin.
    ECE = sum_b |accuracy_b - confidence_b| * count_b / n.
    """
    if n_bins < 1:
        raise ValueError("calibration_bins must be >= 1")
    y = _labels_1d(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    bins: list[dict[str, Any]] = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        mean_conf: float | None = None
        acc: float | None = None
        if count:
            mean_conf = float(conf[mask].mean())
            acc = float(correct[mask].mean())
            ece += abs(acc - mean_conf) * count / y.shape[0]
        bins.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "confidence": mean_conf,
                "accuracy": acc,
                "count": count,
            }
        )
    return float(ece), bins


def classification_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    top_k: int = 2,
    calibration_bins: int = 10,
) -> dict[str, Any]:
    """All test-split metrics for one model: scalar scores, per-class table, confusion, reliability.

    y_true: int labels (n,) or one-hot (n, C); y_prob: (n, C) scores, column i = class_names[i].
    Classes absent from y_true never crash anything: their per-class scores are 0 (zero_division=0).
    """
    y, p, n_classes = _check_inputs(y_true, y_prob, class_names)
    labels = list(range(n_classes))
    y_pred = p.argmax(axis=1)
    k = max(1, min(int(top_k), n_classes))

    with warnings.catch_warnings():
        # sklearn warns about classes seen only in y_pred and about undefined MCC; both are handled.
        warnings.simplefilter("ignore")
        out: dict[str, Any] = {
            "accuracy": accuracy_score(y, y_pred),
            "balanced_accuracy": balanced_accuracy_score(y, y_pred),
        }
        for avg in ("macro", "weighted"):
            prec, rec, f1, _ = precision_recall_fscore_support(
                y, y_pred, labels=labels, average=avg, zero_division=0
            )
            out[f"precision_{avg}"] = prec
            out[f"recall_{avg}"] = rec
            out[f"f1_{avg}"] = f1
        out["mcc"] = matthews_corrcoef(y, y_pred)
        out["roc_auc_macro_ovr"] = roc_auc_macro_ovr(y, p)
        out["top_k"] = k
        out[f"top_{k}_accuracy"] = top_k_accuracy(y, p, k)
        ece, bins = calibration(y, p, calibration_bins)
        out["ece"] = ece
        out["n"] = int(y.shape[0])

        cm = confusion_matrix(y, y_pred, labels=labels)
        prec_c, rec_c, f1_c, support = precision_recall_fscore_support(
            y, y_pred, labels=labels, average=None, zero_division=0
        )
    total = cm.sum()
    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        fp = cm[:, i].sum() - tp
        fn = cm[i, :].sum() - tp
        tn = total - tp - fp - fn
        per_class[str(name)] = {
            "sensitivity": rec_c[i],
            "specificity": tn / (tn + fp) if (tn + fp) else 0.0,
            "precision": prec_c[i],
            "f1": f1_c[i],
            "support": int(support[i]),
        }
    out["per_class"] = per_class
    out["classes"] = [str(c) for c in class_names]
    out["confusion_matrix"] = cm.tolist()
    out["reliability"] = bins
    return json_safe(out)


def majority_baseline(
    y_train: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    class_names: Sequence[str],
    *,
    top_k: int = 2,
    calibration_bins: int = 10,
) -> dict[str, Any]:
    """Metrics of always predicting the training majority class with probability 1.

    The floor any model must clear: on imbalanced data its accuracy is high, its balanced accuracy is
    1/C and its MCC is 0, which is exactly why the report shows it next to the models.
    """
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    train = _labels_1d(y_train)
    if train.size == 0:
        raise ValueError("y_train is empty: no majority class")
    majority = int(np.bincount(train, minlength=num_classes).argmax())
    test = _labels_1d(y_test)
    prob = np.zeros((test.shape[0], num_classes), dtype=np.float64)
    prob[:, majority] = 1.0
    out = classification_metrics(
        test, prob, class_names, top_k=top_k, calibration_bins=calibration_bins
    )
    out["majority_class"] = str(class_names[majority])
    out["majority_index"] = majority
    return out


def age_band(age: pd.Series) -> pd.Series:
    """Clinically conventional age bands; missing or non-numeric ages become "unknown"."""
    values = pd.to_numeric(age, errors="coerce")
    out = pd.Series(UNKNOWN, index=age.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(values >= lo) & (values < hi)] = name
    return out


def _group_values(column: pd.Series) -> pd.Series:
    """Group keys as strings; missing values (None/NaN/empty) are grouped as "unknown"."""
    keys = column.astype(object).where(column.notna(), UNKNOWN).map(str)
    return keys.replace("", UNKNOWN)


_BAND_ORDER = {name: i for i, (_, _, name) in enumerate(AGE_BANDS)}


def _group_order(value: str) -> tuple[int, int, str]:
    """Age bands in age order, other values alphabetically, "unknown" last."""
    return (value == UNKNOWN, _BAND_ORDER.get(value, len(_BAND_ORDER)), value)


def subgroup_metrics(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    *,
    columns: Sequence[str] = SUBGROUP_COLUMNS,
    min_size: int = 10,
    top_k: int = 2,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Compact metrics per value of each metadata column (row i of frame is sample i).

    Why: a model can be good on average and poor for older patients or acral sites. "age_band" is
    derived from an "age" column when the frame has no age_band. Columns absent from the frame are
    skipped; groups under min_size report n only (their scores would be noise).
    """
    y, p, _ = _check_inputs(y_true, y_prob, class_names)
    if len(frame) != y.shape[0]:
        raise ValueError(f"frame has {len(frame)} rows but there are {y.shape[0]} predictions")
    frame = frame.reset_index(drop=True)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for col in columns:
        if col in frame.columns:
            keys = _group_values(frame[col])
        elif col == "age_band" and "age" in frame.columns:
            keys = age_band(frame["age"])
        else:
            continue
        groups: dict[str, dict[str, Any]] = {}
        for value in sorted(keys.unique(), key=_group_order):
            mask = (keys == value).to_numpy()
            n = int(mask.sum())
            if n < min_size:
                groups[value] = {"n": n}
                continue
            m = classification_metrics(y[mask], p[mask], class_names, top_k=top_k)
            groups[value] = {"n": n, **{k: m[k] for k in SUBGROUP_KEYS}}
        out[col] = groups
    return json_safe(out)


_NOT_METRICS = frozenset({"top_k", "majority_index"})  # settings/ids, not scores
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def mlflow_key(text: str) -> str:
    """MLflow-safe metric key fragment: letters, digits, _ . - only, no runs of underscores."""
    key = _UNSAFE.sub("_", str(text)).strip("_")
    return re.sub(r"_+", "_", key) or "class"


def flatten_for_logging(metrics: Mapping[str, Any], prefix: str = "test_") -> dict[str, float]:
    """Scalar metrics plus per-class sensitivity/specificity as flat float keys for mlflow.log_metrics.

    None (undefined, e.g. AUC with one class present) is left out rather than logged as NaN. Class
    names that collide after sanitising get a numeric suffix so no value is silently overwritten.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key in _NOT_METRICS or isinstance(value, (bool, Mapping, list, tuple)) or value is None:
            continue
        if isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
            flat[f"{prefix}{key}"] = float(value)
    seen: set[str] = set()
    for name, row in (metrics.get("per_class") or {}).items():
        base = mlflow_key(name)
        safe, i = base, 2
        while safe in seen:
            safe, i = f"{base}_{i}", i + 1
        seen.add(safe)
        for stat in ("sensitivity", "specificity"):
            value = row.get(stat)
            if value is not None and math.isfinite(float(value)):
                flat[f"{prefix}{stat}_{safe}"] = float(value)
    return flat
