"""The vectorised group bootstrap agrees with scikit-learn and resamples groups, not images."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.bootstrap import (group_weights, metric_intervals, paired_difference,
                                 percentile_interval, weighted_metrics)
from pipelines.metrics import classification_metrics

CLASSES = ["akiec", "bcc", "mel", "nv"]


def _data(n: int = 90, seed: int = 0, skill: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += skill
    logits = np.round(logits, 1)  # ties in the scores: the AUC must count them half, like sklearn
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = np.array([f"g{i // 3}" for i in range(n)])  # three images per lesion
    return y, p, groups


def _scalars(doc):
    return {k: v for k, v in doc.items() if not isinstance(v, (dict, list)) and k not in ("n", "top_k")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_metrics_equal_sklearn_on_repeated_rows(seed):
    y, p, groups = _data(seed=seed)
    weights = group_weights(groups, 4, seed)
    values = weighted_metrics(y, p, weights, top_k=2, calibration_bins=10)
    for r in range(weights.shape[0]):
        rows = np.repeat(np.arange(len(y)), weights[r].astype(int))
        expected = classification_metrics(y[rows], p[rows], CLASSES, top_k=2, calibration_bins=10)
        for key, value in _scalars(expected).items():
            got = values[key][r]
            assert (value is None and np.isnan(got)) or got == pytest.approx(value, abs=1e-12), key
        for i, name in enumerate(CLASSES):
            for stat in ("sensitivity", "specificity", "precision", "f1"):
                assert values["per_class"][stat][r, i] == pytest.approx(expected["per_class"][name][stat])


def test_unit_weights_give_the_point_estimates():
    y, p, _ = _data(n=50, seed=5)
    values = weighted_metrics(y, p, np.ones((1, len(y))))
    expected = classification_metrics(y, p, CLASSES)
    for key, value in _scalars(expected).items():
        assert values[key][0] == pytest.approx(value, abs=1e-12), key


def test_groups_are_resampled_whole():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    w = group_weights(groups, 200, seed=3)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # three groups drawn per resample
    assert np.array_equal(w, group_weights(groups, 200, seed=3))  # seeded
    assert not np.array_equal(w, group_weights(groups, 200, seed=4))


def test_intervals_bracket_the_estimate_and_widen_with_correlated_groups():
    y, p, _ = _data(n=300, seed=1)
    point = classification_metrics(y, p, CLASSES)
    per_image = metric_intervals(y, p, np.arange(300), CLASSES, n_resamples=400, seed=0)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "mcc", "roc_auc_macro_ovr", "ece",
                "top_2_accuracy"):
        lo, hi = per_image[key]
        assert lo <= point[key] <= hi, key
    assert per_image["per_class"]["mel"]["sensitivity"][0] <= point["per_class"]["mel"]["sensitivity"]
    assert per_image["bootstrap"] == {"unit": "group_id", "n_groups": 300, "n_resamples": 400,
                                      "seed": 0, "confidence": 0.95, "method": "percentile"}
    # the same 100 cases each photographed 3 times: the honest interval is about sqrt(3) wider
    rows = np.repeat(np.arange(100), 3)
    lesions = np.repeat(np.arange(100), 3)
    by_lesion = metric_intervals(y[rows], p[rows], lesions, CLASSES, n_resamples=400, seed=0)
    by_image = metric_intervals(y[rows], p[rows], np.arange(300), CLASSES, n_resamples=400, seed=0)
    width = lambda doc: doc["accuracy"][1] - doc["accuracy"][0]  # noqa: E731
    assert width(by_lesion) > 1.4 * width(by_image)


def test_paired_difference_is_paired():
    y, p, groups = _data(n=120, seed=2)
    same = paired_difference(y, p, p, groups, "balanced_accuracy", n_resamples=300, seed=0)
    assert same["low"] == same["high"] == 0.0  # identical models: every paired difference is 0
    rng = np.random.default_rng(9)
    noisy = np.clip(p + rng.normal(scale=0.3, size=p.shape), 1e-6, None)
    noisy /= noisy.sum(axis=1, keepdims=True)
    diff = paired_difference(y, p, noisy, groups, "balanced_accuracy", n_resamples=300, seed=0)
    point = (classification_metrics(y, p, CLASSES)["balanced_accuracy"]
             - classification_metrics(y, noisy, CLASSES)["balanced_accuracy"])
    assert diff["low"] <= point <= diff["high"] and diff["n_defined"] == 300
    with pytest.raises(ValueError, match="balanced_acc"):
        paired_difference(y, p, p, groups, "balanced_acc", n_resamples=10, seed=0)


def test_undefined_values_are_left_out():
    assert percentile_interval(np.array([np.nan, np.nan])) is None
    assert percentile_interval(np.array([np.nan, 1.0, 1.0])) == [1.0, 1.0]
