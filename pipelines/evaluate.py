"""Evaluate stage: score one trained architecture on the validation and the held-out test split.

Writes reports/evaluate/<arch>.json (the full report; the comparison report's input): `val` (what
compare selects on), `test` (reported only, never used to choose) and their baselines, each metric
with a 95% group-bootstrap interval (`ci95`); metrics/<arch>.json, its headline numbers (DVC
metrics, pipelines/dvc_metrics.py); plots/<arch>/ (confusion matrix, ROC, reliability, learning
curves, Grad-CAM, all on test) with the data of each DVC plot in plots/dvc/<kind>/<arch>.csv; and
logs them to the architecture's MLflow run. Every architecture is scored on the same rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipelines import dvc_metrics, tracking
from pipelines.bootstrap import metric_intervals
from pipelines.config import Paths, load_params, project_root
from pipelines.gradcam import gradcam, save_gradcam_grid
from pipelines.inference import label_indices, load_bundle, metadata_for, predict_frame
from pipelines.manifest import read_splits
from pipelines.metrics import (age_band, classification_metrics, flatten_for_logging,
                               majority_baseline, subgroup_metrics)
from pipelines.plots import (plot_confusion_matrix, plot_learning_curves, plot_reliability,
                             plot_roc_curves)
from pipelines.profiling import profile_model


def resolve_top_k(setting: Any, num_classes: int) -> int:
    """`auto` means 2 for up to 7 classes and 5 for larger label sets (23 DermNet classes)."""
    if setting == "auto":
        return 5 if num_classes >= 20 else 2
    return int(setting)


def gradcam_sample(frame: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """A fixed, reproducible sample: the first `per_class` test images of each class by image_id."""
    ordered = frame.sort_values("image_id")
    return ordered.groupby("label", sort=True).head(per_class)


def render_gradcam(model, info: Mapping[str, Any], sample: pd.DataFrame, root: Path,
                   probs: np.ndarray, path: Path) -> None:
    from pipelines.data import decode_image

    size = int(info["image_size"])
    images = np.stack([decode_image(str(root / p), size).numpy() for p in sample["path"]])
    inputs: dict[str, np.ndarray] = {"image": images.astype(np.float32)}
    meta = metadata_for(sample, info)
    if meta is not None:
        inputs["metadata"] = meta
    heatmaps = gradcam(model, inputs)
    classes = info["classes"]
    titles = [f"true {t}\npred {classes[int(np.argmax(p))]} {np.max(p):.2f}"
              for t, p in zip(sample["label"], probs)]
    save_gradcam_grid(images, heatmaps, titles, path)


def score_split(model, info: Mapping[str, Any], frame: pd.DataFrame, root: Path,
                train_labels: np.ndarray, ep: Mapping[str, Any]) -> tuple[np.ndarray, dict, dict]:
    """(probabilities, metrics with `ci95`, majority baseline) of one split."""
    classes = info["classes"]
    probs = predict_frame(model, info, frame, root)
    y_true = label_indices(frame, classes)
    top_k = resolve_top_k(ep.get("top_k", "auto"), len(classes))
    bins = int(ep.get("calibration_bins", 10))
    results = classification_metrics(y_true, probs, classes, top_k=top_k, calibration_bins=bins)
    results["ci95"] = metric_intervals(
        y_true, probs, frame["group_id"].astype(str).tolist(), classes,
        n_resamples=int(ep.get("bootstrap_resamples", 500)), seed=int(ep.get("bootstrap_seed", 0)),
        confidence=float(ep.get("confidence", 0.95)), top_k=top_k, calibration_bins=bins)
    baseline = majority_baseline(train_labels, y_true, len(classes), classes)
    return probs, results, baseline


def evaluate(arch: str, paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    ep = params["evaluate"]
    model, info = load_bundle(paths.model_dir(arch))
    classes = info["classes"]
    # Profile first: Grad-CAM's sub-model adds graph nodes that make the model unsaveable.
    profile = profile_model(model, metadata_dim=len(info.get("metadata_features", [])))
    frames = read_splits(paths)
    test = frames["test"]
    train_labels = label_indices(frames["train"], classes)
    val_results = val_baseline = None  # an empty val split: compare says so and never ranks on test
    if len(frames["val"]):
        _, val_results, val_baseline = score_split(model, info, frames["val"], paths.root, train_labels, ep)
    probs, results, baseline = score_split(model, info, test, paths.root, train_labels, ep)
    y_true = label_indices(test, classes)
    top_k = int(results["top_k"])
    groups = test.copy()
    if "age" in groups:
        groups["age_band"] = age_band(groups["age"])
    subgroups = subgroup_metrics(groups, y_true, probs, classes, top_k=top_k)

    plots = paths.plots_dir(arch)
    plots.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(np.asarray(results["confusion_matrix"]), classes, plots / "confusion_matrix.png",
                          data=paths.plot_data("confusion", arch))
    plot_roc_curves(y_true, probs, classes, plots / "roc.png", data=paths.plot_data("roc", arch))
    plot_reliability(results["reliability"], plots / "reliability.png",
                     data=paths.plot_data("calibration", arch))
    history = json.loads((paths.model_dir(arch) / "history.json").read_text(encoding="utf-8"))
    plot_learning_curves(history, plots / "learning_curves.png",
                         data=paths.plot_data("learning_curves", arch))
    sample = gradcam_sample(test, int(ep.get("gradcam_per_class", 2)))
    render_gradcam(model, info, sample, paths.root, probs[test.index.get_indexer(sample.index)],
                   plots / "gradcam.png")

    report = {
        "arch": arch, "dataset": info["dataset"], "builder": info["builder"],
        "selection_split": "val", "val": val_results, "val_baseline": val_baseline,
        "test": results, "baseline": baseline, "subgroups": subgroups, "profile": profile,
        "training": {k: info[k] for k in ("train_seconds", "epochs_run", "best_epoch", "image_size",
                                           "run_id", "split_sizes")},
        "bootstrap": results["ci95"]["bootstrap"],
    }
    out = paths.eval_report(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    dvc_metrics.write(paths.metrics_file(arch), dvc_metrics.evaluation(report))

    tracking.configure(paths, info["dataset"])
    with mlflow.start_run(run_id=info["run_id"]):
        intervals = {f"test_{k}_ci95_{end}": float(v[i]) for k, v in results["ci95"].items()
                     if isinstance(v, list) for i, end in enumerate(("low", "high"))}
        mlflow.log_metrics({**flatten_for_logging(results), **intervals,
                            **flatten_for_logging(val_results or {}, prefix="val_"),
                            **flatten_for_logging(baseline, prefix="baseline_"),
                            **{f"profile_{k}": float(v) for k, v in profile.items() if isinstance(v, (int, float))}})
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        mlflow.log_artifact(str(out), artifact_path="medscan")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate one trained architecture on val and test.")
    parser.add_argument("--arch", required=True)
    args = parser.parse_args(argv)
    root = project_root()
    report = evaluate(args.arch, Paths(root), load_params(root))
    t, v = report["test"], report["val"] or {}
    print(f"{args.arch}: val balanced accuracy {v.get('balanced_accuracy')} (selects); test (reports): "
          f"accuracy {t['accuracy']:.3f}, balanced accuracy {t['balanced_accuracy']:.3f}, "
          f"macro F1 {t['f1_macro']:.3f}, macro ROC-AUC {t['roc_auc_macro_ovr']} "
          f"(majority baseline accuracy {report['baseline']['accuracy']:.3f})", file=sys.stderr)


if __name__ == "__main__":
    main()
