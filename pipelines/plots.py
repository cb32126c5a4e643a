"""Evaluation figures (PNG) plus the CSV of each one that `dvc plots` can render and diff.

The CSV goes beside the PNG unless `data=` names its path (evaluate: plots/dvc/<kind>/<arch>.csv).

Figures are built with matplotlib's object API on the Agg canvas (no pyplot global state, no
display needed), and long class names (DermNet: "Melanoma Skin Cancer Nevi and Moles") are wrapped
and truncated so axes stay readable.
"""
from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

DPI = 110
LR_KEYS: tuple[str, ...] = ("learning_rate", "lr")


def short_label(name: str, width: int = 18, max_lines: int = 2) -> str:
    """Wrap a class name to at most max_lines lines of ~width chars, ending in an ellipsis if cut."""
    text = " ".join(str(name).replace("_", " ").split())
    lines = textwrap.wrap(text, width=width, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, width - 1)].rstrip() + "…"
    return "\n".join(lines)


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas (no pyplot state: safe in worker threads and under DVC);
    every plot here and the Grad-CAM grid start from one."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Write the PNG at the project's DPI, trimmed, creating the folder."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out


# The columns of each DVC plot's data file (dvc.yaml `plots:` names their x and y).
PLOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "confusion": ("actual", "predicted"),
    "roc": ("class", "fpr", "tpr"),
    "calibration": ("confidence", "accuracy", "count", "lower", "upper"),
    "learning_curves": ("epoch",),   # followed by every series the history holds
}


def write_empty_plot_data(path: Path, kind: str) -> Path:
    """A header-only data file: a skipped candidate still has the outputs DVC declares."""
    return _write_csv(path, PLOT_COLUMNS[kind], [])


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: Path | str,
    normalize: bool = True,
    data: Path | None = None,
) -> Path:
    """Confusion matrix heatmap (rows = true class); normalised rows read as per-class sensitivity.

    Also writes <stem>.csv with one `actual,predicted` row per test sample: the input DVC's
    `confusion` / `confusion_normalized` templates expect.
    """
    counts = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix must be {k}x{k}, got {counts.shape}")
    row_sums = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0) if normalize \
        else counts.astype(np.float64)

    side = max(4.5, 0.55 * k + 3.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(1.0, shown.max()))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    labels = [short_label(c) for c in class_names]
    ax.set_xticks(range(k), labels=labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=labels, fontsize=8)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title("Confusion matrix" + (" (row-normalised: diagonal = sensitivity)" if normalize else ""))
    if k <= 25:
        threshold = (1.0 if normalize else max(1.0, shown.max())) / 2
        size = 8 if k <= 10 else 6
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}\n({counts[i, j]})" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if shown[i, j] > threshold else "black")
    out = save_figure(fig, path)
    rows = [
        (class_names[i], class_names[j])
        for i in range(k) for j in range(k) for _ in range(int(counts[i, j]))
    ]
    _write_csv(data or out.with_suffix(".csv"), PLOT_COLUMNS["confusion"], rows)
    return out


def plot_roc_curves(
    y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], path: Path | str,
    data: Path | None = None,
) -> Path:
    """One-vs-rest ROC per class plus the macro average (mean TPR on a common FPR grid).

    Classes absent from y_true (or making up all of it) have no ROC and are listed as such.
    Also writes <stem>.csv (`class,fpr,tpr`, the macro curve as class "macro").
    """
    y = np.asarray(y_true)
    y = y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)
    p = np.asarray(y_prob, dtype=np.float64)
    if p.shape != (y.shape[0], len(class_names)):
        raise ValueError(f"y_prob must have shape ({y.shape[0]}, {len(class_names)}), got {p.shape}")

    fig = new_figure(8.5, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab20" if len(class_names) > 10 else "tab10"]
    grid = np.linspace(0.0, 1.0, 201)
    tprs: list[np.ndarray] = []
    aucs: list[float] = []
    rows: list[tuple[str, float, float]] = []
    skipped: list[str] = []
    for c, name in enumerate(class_names):
        positives = y == c
        if positives.all() or not positives.any():
            skipped.append(str(name))
            continue
        fpr, tpr, _ = roc_curve(positives.astype(int), p[:, c])
        area = float(auc(fpr, tpr))
        aucs.append(area)
        tprs.append(np.interp(grid, fpr, tpr))
        tprs[-1][0] = 0.0
        rows.extend((str(name), float(a), float(b)) for a, b in zip(fpr, tpr, strict=True))
        ax.plot(fpr, tpr, lw=1.2, color=cmap(c % cmap.N), ls=("-", "--", ":")[(c // cmap.N) % 3],
                label=f"{short_label(name, 28, 1)} (AUC {area:.2f})")
    if tprs:
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[-1] = 1.0
        ax.plot(grid, mean_tpr, color="black", lw=2.4,
                label=f"macro mean (AUC {np.mean(aucs):.2f})")
        rows.extend(("macro", float(a), float(b)) for a, b in zip(grid, mean_tpr, strict=True))
    else:
        ax.text(0.5, 0.5, "ROC undefined: fewer than two classes in the test split",
                ha="center", va="center", transform=ax.transAxes)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    title = "ROC, one-vs-rest"
    if skipped:
        title += f"\n(no positives or no negatives: {short_label(', '.join(skipped), 80, 1)})"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    out = save_figure(fig, path)
    _write_csv(data or out.with_suffix(".csv"), PLOT_COLUMNS["roc"], rows)
    return out


def plot_reliability(reliability_bins: Sequence[Mapping[str, Any]], path: Path | str,
                     data: Path | None = None) -> Path:
    """Reliability diagram (accuracy vs confidence per bin, gap to the diagonal) and bin counts.

    Takes the `reliability` list of classification_metrics; empty bins are drawn as gaps. Also
    writes <stem>.csv (`confidence,accuracy,count,lower,upper`).
    """
    bins = list(reliability_bins)
    if not bins:
        raise ValueError("no reliability bins")
    width = 1.0 / len(bins)
    lowers = [float(b.get("lower", i * width)) for i, b in enumerate(bins)]
    uppers = [float(b.get("upper", (i + 1) * width)) for i, b in enumerate(bins)]
    centres = [(lo + hi) / 2 for lo, hi in zip(lowers, uppers, strict=True)]
    widths = [hi - lo for lo, hi in zip(lowers, uppers, strict=True)]
    counts = [int(b.get("count") or 0) for b in bins]
    filled = [i for i, b in enumerate(bins) if b.get("accuracy") is not None and counts[i] > 0]
    n = sum(counts)
    ece = sum(
        abs(float(bins[i]["accuracy"]) - float(bins[i]["confidence"])) * counts[i] for i in filled
    ) / n if n else float("nan")

    fig = new_figure(6.0, 6.5)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    hist = fig.add_subplot(gs[1], sharex=ax)
    ax.bar([centres[i] for i in filled], [float(bins[i]["accuracy"]) for i in filled],
           width=[widths[i] for i in filled], edgecolor="black", color="#4c72b0", label="accuracy")
    ax.bar([centres[i] for i in filled],
           [float(bins[i]["confidence"]) - float(bins[i]["accuracy"]) for i in filled],
           bottom=[float(bins[i]["accuracy"]) for i in filled], width=[widths[i] for i in filled],
           color="#dd8452", alpha=0.45, edgecolor="#dd8452", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f}, n={n})" if n else "Reliability (no samples)")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelbottom=False)
    hist.bar(centres, counts, width=widths, color="grey", edgecolor="black")
    hist.set_xlabel("Confidence (top-1 probability)")
    hist.set_ylabel("Count")
    out = save_figure(fig, path)
    _write_csv(
        data or out.with_suffix(".csv"),
        PLOT_COLUMNS["calibration"],
        [(b.get("confidence"), b.get("accuracy"), counts[i], lowers[i], uppers[i])
         for i, b in enumerate(bins)],
    )
    return out


def _series(history: Mapping[str, Sequence[float]], key: str) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in history[key]], dtype=np.float64)


def plot_learning_curves(history: Mapping[str, Sequence[float]], path: Path | str,
                         data: Path | None = None) -> Path:
    """Train vs validation curves of each metric in a Keras History dict, plus the learning rate.

    Panels: loss first, then accuracy and any other metric logged for training; a log-scale LR panel
    when `learning_rate`/`lr` is present. Also writes <stem>.csv (epoch + every series).
    """
    keys = [k for k in history if len(history[k]) > 0]
    lr_key = next((k for k in LR_KEYS if k in keys), None)
    bases = [k for k in keys if not k.startswith("val_") and k not in LR_KEYS]
    bases += [k[4:] for k in keys if k.startswith("val_") and k[4:] not in bases]
    order = {"loss": 0, "accuracy": 1}
    bases.sort(key=lambda k: (order.get(k, 2), k))
    panels: list[str] = bases[:5] + ([lr_key] if lr_key else [])

    cols = min(3, max(1, len(panels)))
    rows_n = max(1, math.ceil(len(panels) / cols))
    fig = new_figure(4.6 * cols, 3.4 * rows_n)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no training history recorded", ha="center", va="center")
        ax.set_axis_off()
    for i, name in enumerate(panels):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        if name == lr_key:
            values = _series(history, name)
            ax.plot(np.arange(1, len(values) + 1), values, marker=".", color="purple")
            if np.nanmin(values) > 0:
                ax.set_yscale("log")
            ax.set_title("learning rate")
        else:
            for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
                if key in keys:
                    values = _series(history, key)
                    ax.plot(np.arange(1, len(values) + 1), values, style, marker=".", label=label)
            if f"val_{name}" in keys and name == "loss":
                val = _series(history, "val_loss")
                if np.isfinite(val).any():
                    best = int(np.nanargmin(val))
                    ax.axvline(best + 1, color="grey", ls=":", lw=1, label=f"best epoch {best + 1}")
            ax.set_title(name.replace("_", " "))
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = save_figure(fig, path)
    length = max((len(history[k]) for k in keys), default=0)
    table = [
        [epoch + 1] + [
            (float(history[k][epoch]) if epoch < len(history[k]) and history[k][epoch] is not None
             else None)
            for k in keys
        ]
        for epoch in range(length)
    ]
    _write_csv(data or out.with_suffix(".csv"), [*PLOT_COLUMNS["learning_curves"], *keys], table)
    return out
