"""Metrics must agree with scikit-learn, survive absent classes and be strict-JSON serialisable."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from pipelines.metrics import (
    age_band,
    calibration,
    classification_metrics,
    flatten_for_logging,
    majority_baseline,
    mlflow_key,
    subgroup_metrics,
)

CLASSES = ["melanoma", "nevus", "basal cell carcinoma"]


def _fixed() -> tuple[np.ndarray, np.ndarray]:
    """Twelve samples, three classes, every class present, a few mistakes and low confidences."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 3))
    logits[np.arange(12), y] += 1.2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_scalars_match_sklearn() -> None:
    y, p = _fixed()
    pred = p.argmax(axis=1)
    assert (pred != y).any() and (pred == y).any()  # a fixture that exercises both paths
    m = classification_metrics(y, p, CLASSES, top_k=2)
    labels = [0, 1, 2]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for avg in ("macro", "weighted"):
        kw = {"labels": labels, "average": avg, "zero_division": 0}
        assert m[f"precision_{avg}"] == pytest.approx(skm.precision_score(y, pred, **kw))
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(y, pred, **kw))
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(y, pred, **kw))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["roc_auc_macro_ovr"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    assert m["top_k"] == 2
    assert m["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=2, labels=labels))
    assert m["n"] == 12
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert m["classes"] == CLASSES


def test_per_class_sensitivity_specificity() -> None:
    y, p = _fixed()
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, CLASSES)
    recall = skm.recall_score(y, pred, labels=[0, 1, 2], average=None, zero_division=0)
    precision = skm.precision_score(y, pred, labels=[0, 1, 2], average=None, zero_division=0)
    for i, name in enumerate(CLASSES):
        row = m["per_class"][name]
        negatives = y != i
        assert row["sensitivity"] == pytest.approx(recall[i])
        assert row["specificity"] == pytest.approx(float((pred[negatives] != i).mean()))
        assert row["precision"] == pytest.approx(precision[i])
        assert row["support"] == int((y == i).sum())


def test_ece_and_reliability_by_hand() -> None:
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right) with 10 bins:
    # bin 8 (0.8, 0.9]: conf .9 acc .5 -> .4 * 2/4; bin 5 (0.5, 0.6]: conf .6 acc 1 -> .4 * 2/4.
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    ece, bins = calibration(y, p, 10)
    assert ece == pytest.approx(0.4)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert bins[8]["confidence"] == pytest.approx(0.9) and bins[8]["accuracy"] == pytest.approx(0.5)
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    m = classification_metrics(y, p, ["a", "b"], calibration_bins=10)
    assert m["ece"] == pytest.approx(0.4)
    assert len(m["reliability"]) == 10


def test_perfectly_calibrated_one_hot_has_zero_ece() -> None:
    y = np.array([0, 1, 2, 1])
    m = classification_metrics(y, np.eye(3)[y], CLASSES)
    assert m["ece"] == pytest.approx(0.0)
    assert m["accuracy"] == 1.0 and m["mcc"] == pytest.approx(1.0)


def test_absent_class_does_not_crash_and_auc_uses_present_classes() -> None:
    y, p = _fixed()
    keep = y != 2
    y2, p2 = y[keep], p[keep]
    m = classification_metrics(y2, p2, CLASSES)
    assert m["per_class"]["basal cell carcinoma"]["support"] == 0
    assert m["per_class"]["basal cell carcinoma"]["sensitivity"] == 0.0
    expected = np.mean([skm.roc_auc_score(y2 == c, p2[:, c]) for c in (0, 1)])
    assert m["roc_auc_macro_ovr"] == pytest.approx(expected)
    assert np.array(m["confusion_matrix"]).shape == (3, 3)
    json.dumps(m, allow_nan=False)


def test_single_class_present_gives_none_auc_and_strict_json() -> None:
    y = np.zeros(5, dtype=int)
    p = np.tile([0.7, 0.2, 0.1], (5, 1))
    m = classification_metrics(y, p, CLASSES)
    assert m["roc_auc_macro_ovr"] is None
    assert m["accuracy"] == 1.0
    json.dumps(m, allow_nan=False)


def test_top_k_is_clipped_to_number_of_classes() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(y, p, ["a", "b"], top_k=5)
    assert m["top_k"] == 2 and m["top_2_accuracy"] == 1.0
    assert "top_5_accuracy" not in m


def test_one_hot_labels_are_accepted() -> None:
    y, p = _fixed()
    assert classification_metrics(np.eye(3)[y], p, CLASSES) == classification_metrics(y, p, CLASSES)


def test_shape_errors_are_explicit() -> None:
    y, p = _fixed()
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y, p[:, :2], CLASSES)
    with pytest.raises(ValueError, match="rows"):
        classification_metrics(y[:-1], p, CLASSES)


def test_majority_baseline() -> None:
    y_train = np.array([1, 1, 1, 0, 2])
    y_test = np.array([1, 1, 0, 2, 1, 0])
    b = majority_baseline(y_train, y_test, 3, CLASSES)
    assert b["majority_class"] == "nevus" and b["majority_index"] == 1
    assert b["accuracy"] == pytest.approx(3 / 6)
    assert b["balanced_accuracy"] == pytest.approx(1 / 3)
    assert b["mcc"] == 0.0
    assert b["roc_auc_macro_ovr"] == pytest.approx(0.5)
    assert b["per_class"]["nevus"]["sensitivity"] == 1.0
    assert b["per_class"]["nevus"]["specificity"] == 0.0
    assert b["confusion_matrix"] == [[0, 2, 0], [0, 3, 0], [0, 1, 0]]
    json.dumps(b, allow_nan=False)


def test_age_band_edges_and_unknowns() -> None:
    ages = pd.Series([0, 29.9, 30, 44, 45, 59, 60, 74, 75, 90, None, "n/a"])
    assert age_band(ages).tolist() == [
        "<30", "<30", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74", "75+", "75+",
        "unknown", "unknown",
    ]


def test_subgroup_metrics() -> None:
    rng = np.random.default_rng(1)
    n = 40
    y = rng.integers(0, 3, n)
    p = rng.dirichlet(np.ones(3), n)
    frame = pd.DataFrame(
        {
            "sex": ["male"] * 25 + ["female"] * 12 + [None] * 3,
            "age": [20] * 20 + [50] * 20,
            "other": range(n),
        },
        index=range(100, 100 + n),  # a non-default index must not misalign rows
    )
    out = subgroup_metrics(frame, y, p, CLASSES, min_size=10, top_k=2)
    assert set(out) == {"sex", "age_band"}  # localization absent, age_band derived from age
    assert out["sex"]["unknown"] == {"n": 3}
    male = out["sex"]["male"]
    assert male["n"] == 25
    ref = classification_metrics(y[:25], p[:25], CLASSES)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro_ovr"):
        assert male[key] == ref[key]
    assert out["age_band"]["<30"]["n"] == 20 and out["age_band"]["45-59"]["n"] == 20
    assert list(out["sex"]) == ["female", "male", "unknown"]  # unknown last
    json.dumps(out, allow_nan=False)


def test_age_bands_are_reported_in_age_order() -> None:
    ages = pd.Series([80, 20, None, 50, 35, 65] * 2)
    y = np.zeros(12, dtype=int)
    out = subgroup_metrics(pd.DataFrame({"age": ages}), y, np.eye(3)[y], CLASSES, min_size=1)
    assert list(out["age_band"]) == ["<30", "30-44", "45-59", "60-74", "75+", "unknown"]


def test_subgroup_rejects_misaligned_frame() -> None:
    y, p = _fixed()
    with pytest.raises(ValueError, match="rows"):
        subgroup_metrics(pd.DataFrame({"sex": ["m"] * 3}), y, p, CLASSES)


def test_flatten_for_logging() -> None:
    names = ["Acne and Rosacea Photos", "Melanoma Skin Cancer Nevi and Moles", "Acne/and:Rosacea Photos"]
    y = np.array([0, 1, 2, 0, 1])
    m = classification_metrics(y, np.eye(3)[y], names)
    m["roc_auc_macro_ovr"] = None
    flat = flatten_for_logging(m)
    assert flat["test_accuracy"] == 1.0
    assert flat["test_top_2_accuracy"] == 1.0 and flat["test_n"] == 5.0
    assert "test_roc_auc_macro_ovr" not in flat and "test_top_k" not in flat
    assert flat["test_sensitivity_Acne_and_Rosacea_Photos"] == 1.0
    assert flat["test_specificity_Melanoma_Skin_Cancer_Nevi_and_Moles"] == 1.0
    assert "test_sensitivity_Acne_and_Rosacea_Photos_2" in flat  # collision kept, not overwritten
    assert all(isinstance(v, float) for v in flat.values())
    assert all(set(k) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
               for k in flat)
    assert mlflow_key("  é/ü ") == "class"
    baseline = flatten_for_logging(majority_baseline(y, y, 3, names), prefix="baseline_")
    assert baseline["baseline_accuracy"] == pytest.approx(0.4)
    assert "baseline_majority_index" not in baseline and "baseline_majority_class" not in baseline
