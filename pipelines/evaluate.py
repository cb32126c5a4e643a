"""Evaluate stage: score one trained architecture on the validation and the held-out test split.

Writes reports/evaluate/<arch>.json (the full report; the comparison report's input): `val` (what
compare selects on), `test` (reported only, never used to choose) and their baselines, each metric
with a 95% group-bootstrap interval (`ci95`); reports/evaluate/<arch>.test.parquet, the test
probabilities (promote's challenger scores, so the gate does not score the same images twice);
metrics/<arch>.json, its headline numbers (DVC metrics, pipelines/dvc_metrics.py); plots/<arch>/
(confusion matrix, ROC, reliability, learning curves, Grad-CAM, all on test) with the data of each
DVC plot in plots/dvc/<kind>/<arch>.csv; and logs them to the architecture's MLflow run. Every
architecture is scored on the same rows.

Calibration (pipelines/calibration.py): a temperature and an abstention threshold are fitted on
val (`evaluate.abstain_target_precision`), reported on test in `calibration`, written into the
model's contract and logged with it as the MLflow pyfunc "model" (pipelines/pyfunc.py): that
calibrated pyfunc is what promote registers.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipelines import dvc_metrics, tracking
from pipelines.bootstrap import metric_intervals
from pipelines.calibration import calibration_report
from pipelines.cli import run_arch_stage
from pipelines.config import ARTIFACT_DIR, CONTRACT_FILE, Paths
from pipelines.contract import ModelContract, as_contract, for_model_dir
from pipelines.contract import save as save_contract
from pipelines.gradcam import gradcam, save_gradcam_grid
from pipelines.inference import label_indices, load_bundle, predict_frame, save_probabilities
from pipelines.model_inputs import model_inputs
from pipelines.manifest import read_splits
from pipelines.metrics import (age_band, classification_metrics, flatten_for_logging,
                               majority_baseline, subgroup_metrics)
from pipelines.plots import (PLOT_COLUMNS, plot_confusion_matrix, plot_learning_curves, plot_reliability,
                             plot_roc_curves, write_empty_plot_data)
from pipelines.profiling import profile_model

log = logging.getLogger(__name__)


def resolve_top_k(setting: Any, num_classes: int) -> int:
    """`auto` means 2 for up to 7 classes and 5 for larger label sets (23 DermNet classes)."""
    if setting == "auto":
        return 5 if num_classes >= 20 else 2
    return int(setting)


def gradcam_sample(frame: pd.DataFrame, per_class: int) -> pd.DataFrame:
    """A fixed, reproducible sample: the first `per_class` test images of each class by image_id."""
    ordered = frame.sort_values("image_id")
    return ordered.groupby("label", sort=True).head(per_class)


def render_gradcam(model, contract: ModelContract, sample: pd.DataFrame, root: Path,
                   probs: np.ndarray, path: Path) -> None:
    """Heat maps for stored test images, fed through the serving input path (model_inputs)."""
    records = sample.drop(columns=["path"]).to_dict("records")
    inputs = model_inputs(contract, [(root / p).read_bytes() for p in sample["path"]], records)
    heatmaps = gradcam(model, inputs)
    images = inputs["image"]
    classes = contract.classes
    titles = [f"true {t}\npred {classes[int(np.argmax(p))]} {np.max(p):.2f}"
              for t, p in zip(sample["label"], probs)]
    save_gradcam_grid(images, heatmaps, titles, path)


def score_split(model, info: ModelContract | Mapping[str, Any], frame: pd.DataFrame, root: Path,
                train_labels: np.ndarray, eval_params: Mapping[str, Any]) -> tuple[np.ndarray, dict, dict]:
    """(probabilities, metrics with `ci95`, majority baseline) of one split."""
    classes = list(as_contract(info).classes)
    probs = predict_frame(model, info, frame, root)
    y_true = label_indices(frame, classes)
    top_k = resolve_top_k(eval_params.get("top_k", "auto"), len(classes))
    bins = int(eval_params.get("calibration_bins", 10))
    results = classification_metrics(y_true, probs, classes, top_k=top_k, calibration_bins=bins)
    results["ci95"] = metric_intervals(
        y_true, probs, frame["group_id"].astype(str).tolist(), classes,
        n_resamples=int(eval_params.get("bootstrap_resamples", 500)),
        seed=int(eval_params.get("bootstrap_seed", 0)),
        confidence=float(eval_params.get("confidence", 0.95)), top_k=top_k, calibration_bins=bins)
    baseline = majority_baseline(train_labels, y_true, len(classes), classes)
    return probs, results, baseline


def write_skipped(paths: Paths, arch: str) -> dict[str, Any]:
    """The report says why there is nothing to score (compare lists it as skipped); the other
    declared DVC outputs exist and are empty."""
    marker = json.loads(paths.skipped(arch).read_text(encoding="utf-8"))
    report = {"skipped": marker["skipped"], "arch": arch}
    for path in (paths.eval_report(arch), paths.metrics_file(arch)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    save_probabilities(paths.test_probabilities(arch), pd.DataFrame({"path": []}), np.empty((0, 0)), [])
    paths.plots_dir(arch).mkdir(parents=True, exist_ok=True)
    for kind in PLOT_COLUMNS:
        write_empty_plot_data(paths.plot_data(kind, arch), kind)
    return report


class Progress:
    """One log line per step with the seconds so far: scoring and bootstrapping take a while."""

    def __init__(self, arch: str) -> None:
        self.arch, self.started = arch, time.perf_counter()

    def __call__(self, step: str) -> None:
        log.info("evaluate %s [%5.1f s] %s", self.arch, time.perf_counter() - self.started, step)


def run(arch: str, paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    """Score `arch` on val and test; writes its report, metrics, plots and MLflow entries; returns
    the report. Reads params `evaluate`."""
    eval_params = params["evaluate"]
    if paths.skipped(arch).exists():  # a candidate that did not train (warm start, no champion)
        return write_skipped(paths, arch)
    progress = Progress(arch)
    progress("loading the model")
    model, info = load_bundle(paths.model_dir(arch))
    contract = for_model_dir(paths.model_dir(arch), info, params)
    classes = info["classes"]
    # Profile first: Grad-CAM's sub-model adds graph nodes that make the model unsaveable.
    progress("profiling size and latency")
    profile = profile_model(model, metadata_dim=len(info.get("metadata_features", [])))
    frames = read_splits(paths)
    resamples = int(eval_params.get("bootstrap_resamples", 500))
    test = frames["test"]
    train_labels = label_indices(frames["train"], classes)
    val_results = val_baseline = val_probs = None  # an empty val split: compare says so, never ranks on test
    if len(frames["val"]):
        progress(f"scoring val: {len(frames['val'])} images, {resamples} bootstrap resamples")
        val_probs, val_results, val_baseline = score_split(model, contract, frames["val"], paths.root,
                                                           train_labels, eval_params)
    progress(f"scoring test: {len(test)} images, {resamples} bootstrap resamples")
    probs, results, baseline = score_split(model, contract, test, paths.root, train_labels, eval_params)
    save_probabilities(paths.test_probabilities(arch), test, probs, classes)
    y_true = label_indices(test, classes)
    target = eval_params.get("abstain_target_precision")
    calib = calibration_report(val_probs, label_indices(frames["val"], classes), probs, y_true,
                               None if target is None else float(target),
                               int(eval_params.get("calibration_bins", 10)))
    contract = contract.calibrated(calib["temperature"], calib["threshold"], calib["target_precision"])
    top_k = int(results["top_k"])
    groups = test.copy()
    if "age" in groups:
        groups["age_band"] = age_band(groups["age"])
    subgroups = subgroup_metrics(groups, y_true, probs, classes, top_k=top_k)

    progress("plots")
    plots = paths.plots_dir(arch)
    plots.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(np.asarray(results["confusion_matrix"]), classes, paths.plot(arch, "confusion_matrix"),
                          data=paths.plot_data("confusion", arch))
    plot_roc_curves(y_true, probs, classes, paths.plot(arch, "roc"), data=paths.plot_data("roc", arch))
    plot_reliability(results["reliability"], paths.plot(arch, "reliability"),
                     data=paths.plot_data("calibration", arch))
    history = json.loads(paths.history(arch).read_text(encoding="utf-8"))
    plot_learning_curves(history, paths.plot(arch, "learning_curves"),
                         data=paths.plot_data("learning_curves", arch))
    sample = gradcam_sample(test, int(eval_params.get("gradcam_per_class", 2)))
    progress(f"Grad-CAM on {len(sample)} test images")
    render_gradcam(model, contract, sample, paths.root, probs[test.index.get_indexer(sample.index)],
                   paths.plot(arch, "gradcam"))

    report = {
        "arch": arch, "dataset": info["dataset"], "builder": info["builder"],
        "selection_split": "val", "val": val_results, "val_baseline": val_baseline,
        "test": results, "baseline": baseline, "subgroups": subgroups, "profile": profile,
        "calibration": calib,
        "training": {k: info[k] for k in ("train_seconds", "epochs_run", "best_epoch", "image_size",
                                           "run_id", "split_sizes")},
        "bootstrap": results["ci95"]["bootstrap"],
    }
    out = paths.eval_report(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    dvc_metrics.write(paths.metrics_file(arch), dvc_metrics.evaluation(report))

    progress("logging metrics and plots to MLflow")
    tracking.configure(paths, info["dataset"])
    with mlflow.start_run(run_id=info["run_id"]):
        intervals = {f"test_{k}_ci95_{end}": float(v[i]) for k, v in results["ci95"].items()
                     if isinstance(v, list) for i, end in enumerate(("low", "high"))}
        mlflow.log_metrics({**flatten_for_logging(results), **intervals,
                            **flatten_for_logging(val_results or {}, prefix="val_"),
                            **flatten_for_logging(baseline, prefix="baseline_"),
                            **{f"profile_{k}": float(v) for k, v in profile.items() if isinstance(v, (int, float))},
                            **{f"calibration_{k}": float(v) for k, v in calib.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        mlflow.log_artifact(str(out), artifact_path=ARTIFACT_DIR)
        with tempfile.TemporaryDirectory() as tmp:   # the calibrated contract, and the pyfunc promote registers
            mlflow.log_artifact(str(save_contract(contract, Path(tmp) / CONTRACT_FILE)), artifact_path=ARTIFACT_DIR)
            from pipelines.pyfunc import log_pyfunc

            log_pyfunc(paths.model_file(arch), contract, Path(tmp))
    progress("done")
    return report


def main(argv: list[str] | None = None) -> None:
    if done := run_arch_stage("evaluate", "Evaluate one trained architecture on val and test.", run, argv):
        arch, report = done
        t, v = report["test"], report["val"] or {}
        log.info("%s: val balanced accuracy %s (selects); test (reports): accuracy %s, balanced accuracy "
                 "%s, macro F1 %s, macro ROC-AUC %s (majority baseline accuracy %s)", arch,
                 _fmt(v.get("balanced_accuracy")), _fmt(t["accuracy"]), _fmt(t["balanced_accuracy"]),
                 _fmt(t["f1_macro"]), _fmt(t["roc_auc_macro_ovr"]), _fmt(report["baseline"]["accuracy"]))


def _fmt(value: Any) -> str:
    """Three decimals, or `n/a` for a metric that is undefined (no val split, one class only)."""
    return "n/a" if value is None else f"{float(value):.3f}"


if __name__ == "__main__":
    main()
