"""Each plot writes a real PNG (and its DVC-renderable CSV) and copes with the awkward cases."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from pipelines.metrics import classification_metrics
from pipelines.plots import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_reliability,
    plot_roc_curves,
    short_label,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DERMNET = [
    "Acne and Rosacea Photos",
    "Melanoma Skin Cancer Nevi and Moles",
    "Poison Ivy Photos and other Contact Dermatitis",
    "Light Diseases and Disorders of Pigmentation",
]


def _assert_png(path: Path) -> np.ndarray:
    assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something was drawn
    return image


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _data(n: int = 60, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_short_label_wraps_and_truncates() -> None:
    assert short_label("nevus") == "nevus"
    wrapped = short_label("Poison Ivy Photos and other Contact Dermatitis", width=18, max_lines=2)
    lines = wrapped.split("\n")
    assert len(lines) == 2 and all(len(line) <= 18 for line in lines)
    assert wrapped.endswith("…")
    assert short_label("basal_cell_carcinoma", width=40) == "basal cell carcinoma"


def test_confusion_matrix_png_and_dvc_csv(tmp_path: Path) -> None:
    y, p = _data()
    cm = classification_metrics(y, p, DERMNET)["confusion_matrix"]
    out = plot_confusion_matrix(cm, DERMNET, tmp_path / "plots" / "confusion_matrix.png")
    assert out == tmp_path / "plots" / "confusion_matrix.png"
    _assert_png(out)
    rows = _read_csv(out.with_suffix(".csv"))
    assert len(rows) == len(y)  # one actual/predicted record per test sample
    pred = p.argmax(axis=1)
    first = (DERMNET[y[0]], DERMNET[pred[0]])
    assert sum((r["actual"], r["predicted"]) == first for r in rows) == int(
        ((y == y[0]) & (pred == pred[0])).sum()
    )


def test_confusion_matrix_counts_and_empty_rows(tmp_path: Path) -> None:
    cm = [[3, 1, 0], [0, 0, 0], [2, 0, 5]]  # class 1 absent from the test split
    out = plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png", normalize=False)
    _assert_png(out)
    with pytest.raises(ValueError, match="2x2"):
        plot_confusion_matrix(cm, ["a", "b"], tmp_path / "bad.png")


def test_roc_curves(tmp_path: Path) -> None:
    y, p = _data()
    out = plot_roc_curves(y, p, DERMNET, tmp_path / "roc.png")
    _assert_png(out)
    rows = _read_csv(tmp_path / "roc.csv")
    assert {r["class"] for r in rows} == set(DERMNET) | {"macro"}
    macro = [r for r in rows if r["class"] == "macro"]
    assert float(macro[0]["tpr"]) == 0.0 and float(macro[-1]["tpr"]) == 1.0


def test_roc_skips_absent_class_and_survives_single_class(tmp_path: Path) -> None:
    y, p = _data()
    keep = y != 3
    plot_roc_curves(y[keep], p[keep], DERMNET, tmp_path / "roc.png")
    assert DERMNET[3] not in {r["class"] for r in _read_csv(tmp_path / "roc.csv")}
    _assert_png(plot_roc_curves(np.zeros(5, int), p[:5], DERMNET, tmp_path / "one.png"))
    assert _read_csv(tmp_path / "one.csv") == []


def test_reliability(tmp_path: Path) -> None:
    y, p = _data(200)
    m = classification_metrics(y, p, DERMNET, calibration_bins=10)
    out = plot_reliability(m["reliability"], tmp_path / "reliability.png")
    _assert_png(out)
    rows = _read_csv(tmp_path / "reliability.csv")
    assert len(rows) == 10
    assert sum(int(r["count"]) for r in rows) == 200
    empty = [r for r in rows if int(r["count"]) == 0]
    assert all(r["accuracy"] == "" for r in empty)  # empty bins stay empty, not 0


def test_learning_curves_with_lr(tmp_path: Path) -> None:
    history = {
        "loss": [1.2, 0.9, 0.7, 0.6],
        "accuracy": [0.4, 0.55, 0.65, 0.7],
        "val_loss": [1.3, 1.0, 0.95, 0.97],
        "val_accuracy": [0.35, 0.5, 0.55, 0.54],
        "learning_rate": [1e-3, 1e-3, 2e-4, 2e-4],
    }
    out = plot_learning_curves(history, tmp_path / "learning_curves.png")
    _assert_png(out)
    rows = _read_csv(tmp_path / "learning_curves.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[2]["learning_rate"]) == pytest.approx(2e-4)
    assert float(rows[1]["val_loss"]) == pytest.approx(1.0)


def test_learning_curves_partial_and_empty_history(tmp_path: Path) -> None:
    _assert_png(plot_learning_curves({"loss": [1.0, 0.8]}, tmp_path / "partial.png"))
    out = plot_learning_curves({}, tmp_path / "empty.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert _read_csv(tmp_path / "empty.csv") == []
