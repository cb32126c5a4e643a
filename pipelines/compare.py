"""The `compare` stage: one report that puts every trained architecture side by side.

Reads reports/evaluate/<arch>.json and plots/<arch>/*.png (written by evaluate) and writes
reports/compare/compare.md, compare.html (self-contained: images inlined as base64) and
compare.json (rows, ranking by the VALIDATION value of params `promote.metric`, best arch) that
`promote` consumes. Why validation: picking the best of N noisy test scores and reporting it as
unbiased is a leak; the test split only reports (with 95% group-bootstrap intervals) and the gate
uses it once. Why both cost and quality columns: a clinic choosing a model trades balanced accuracy
against latency and size, and every model must be read against the majority-class baseline.
A metrics file `{"skipped": reason, "arch": ...}` (a candidate that could not run, e.g. a warm
start with no champion yet) is listed as skipped and takes no part in the ranking.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.cli import run_stage
from pipelines.config import (COMPARE_HTML, COMPARE_JSON, COMPARE_MD, PLOT_NAMES, Paths, candidates, plot_file,
                              project_root)
from pipelines.errors import ConfigError, DataError
from pipelines.jsonsafe import json_safe
from pipelines.metrics import LOWER_IS_BETTER
from pipelines.report import Block, Images, Table, render_html, render_md
from pipelines.report import slug as _slug

IMG_DIRNAME = "img"
BASELINE = "majority_baseline"
RANK_SPLIT = "val"  # the split that chooses; the test split only reports
BASELINE_KEY = {"val": "val_baseline", "test": "baseline"}
# Test metrics shown with their 95% bootstrap interval in the selection table.
HEADLINE: tuple[str, ...] = ("balanced_accuracy", "accuracy", "f1_macro", "roc_auc_macro_ovr")

# (key in the test metrics, column label); "top_k_accuracy" stands for top_{k}_accuracy.
METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced acc."),
    ("precision_macro", "Precision (macro)"),
    ("precision_weighted", "Precision (weighted)"),
    ("recall_macro", "Recall (macro)"),
    ("recall_weighted", "Recall (weighted)"),
    ("f1_macro", "F1 (macro)"),
    ("f1_weighted", "F1 (weighted)"),
    ("mcc", "MCC"),
    ("roc_auc_macro_ovr", "ROC-AUC (macro OvR)"),
    ("top_k_accuracy", "Top-k acc."),
    ("ece", "ECE (lower is better)"),
)
PROFILE_KEYS: tuple[str, ...] = (
    "params", "flops", "size_mb", "latency_ms_p50", "latency_ms_p95", "throughput_ips",
)
TRAINING_KEYS: tuple[str, ...] = ("train_seconds", "epochs_run", "best_epoch", "image_size", "run_id")
PLOT_TITLES: dict[str, str] = {
    "learning_curves": "Learning curves",
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curves",
    "reliability": "Reliability",
    "gradcam": "Grad-CAM",
}
# (file name, title) in config.PLOT_NAMES order: what evaluate draws, under the names it draws them.
PLOTS: tuple[tuple[str, str], ...] = tuple((plot_file(n), PLOT_TITLES[n]) for n in PLOT_NAMES)
# Many-panel plots: shown at full page width in the HTML, where a grid cell made their text unreadable.
WIDE_PLOTS: frozenset[str] = frozenset({"Learning curves", "ROC curves", "Grad-CAM"})
# The `calibration` block evaluate writes (temperature scaling + abstention), as report columns.
CALIBRATION_FIELDS: tuple[tuple[str, str], ...] = (
    ("temperature", "Temperature"),
    ("threshold", "Abstain below"),
    ("target_precision", "Target precision"),
    ("val_coverage", "Val coverage"),
    ("val_accepted_accuracy", "Val accepted acc."),
    ("test_coverage", "Test coverage"),
    ("test_accepted_accuracy", "Test accepted acc."),
    ("test_ece_before", "Test ECE before"),
    ("test_ece_after", "Test ECE after"),
)
SUBGROUP_FIELDS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced acc."),
    ("f1_macro", "F1 (macro)"),
    ("roc_auc_macro_ovr", "ROC-AUC"),
)
_TOP_K = re.compile(r"^top_(\d+)_accuracy$")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- rows and ranking
def _top_k(test: Mapping[str, Any]) -> int | None:
    if isinstance(test.get("top_k"), int):
        return int(test["top_k"])
    for key in test:
        match = _TOP_K.match(key)
        if match:
            return int(match.group(1))
    return None


def _metric_values(test: Mapping[str, Any]) -> dict[str, Any]:
    k = _top_k(test)
    values = {key: test.get(key) for key, _ in METRICS if key != "top_k_accuracy"}
    values["top_k_accuracy"] = test.get(f"top_{k}_accuracy") if k else None
    values["top_k"] = k
    values["n_test"] = test.get("n")
    return values


def _intervals(split: Mapping[str, Any]) -> dict[str, Any]:
    """{metric key: [low, high]} of a split's ci95 (top-k under the generic key)."""
    ci = split.get("ci95") or {}
    k = _top_k(split)
    out = {key: ci.get(key) for key, _ in METRICS if key != "top_k_accuracy"}
    out["top_k_accuracy"] = ci.get(f"top_{k}_accuracy") if k else None
    return out


def _model_row(arch: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level metric keys are the test values (what readers display); `val` chose the rank."""
    profile = doc.get("profile") or {}
    training = doc.get("training") or {}
    test = doc.get("test") or {}
    return {
        "arch": arch,
        "kind": "model",
        "builder": doc.get("builder"),
        **{key: profile.get(key) for key in PROFILE_KEYS},
        **{key: training.get(key) for key in TRAINING_KEYS},
        **_metric_values(test),
        "ci95": _intervals(test),
        "val": _metric_values(doc.get("val") or {}),
        "calibration": doc.get("calibration"),
    }


def _baseline_row(baseline: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "arch": BASELINE,
        "kind": "baseline",
        "builder": None,
        "majority_class": baseline.get("majority_class"),
        **{key: None for key in (*PROFILE_KEYS, *TRAINING_KEYS)},
        **_metric_values(baseline),
    }


def _rank_value(doc: Mapping[str, Any] | None, metric: str) -> float | None:
    value = (doc or {}).get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def rank_architectures(
    metrics_by_arch: Mapping[str, Mapping[str, Any]], rank_metric: str, split: str = RANK_SPLIT
) -> list[dict[str, Any]]:
    """Order archs by the `split` (validation) value of rank_metric: best first (ascending for ECE).

    Missing/undefined values rank last (an arch without validation metrics is never chosen on
    test instead); ties go to fewer parameters, then lower p50 latency (the cheaper model to
    deploy), then the name. Each entry says whether it beats the majority baseline on that split
    and carries the test value, which is reported but never ranks.
    """
    lower = rank_metric in LOWER_IS_BETTER
    entries = []
    for arch, doc in metrics_by_arch.items():
        value = _rank_value(doc.get(split), rank_metric)
        base = _rank_value(doc.get(BASELINE_KEY[split]), rank_metric)
        beats = None if value is None or base is None else (value < base if lower else value > base)
        profile = doc.get("profile") or {}
        entries.append((arch, value, base, beats, profile.get("params"), profile.get("latency_ms_p50"),
                        _rank_value(doc.get("test"), rank_metric)))

    def order(entry: tuple[Any, ...]) -> tuple[Any, ...]:
        arch, value, _, _, params, latency, _ = entry
        missing = value is None
        score = 0.0 if missing else (value if lower else -value)
        return (missing, score, params is None, params or 0, latency is None, latency or 0.0, arch)

    return [
        {"rank": i + 1, "arch": arch, "split": split, "value": value, "baseline_value": base,
         "beats_baseline": beats, "test_value": test}
        for i, (arch, value, base, beats, _, _, test) in enumerate(sorted(entries, key=order))
    ]


# ----------------------------------------------------------------------------- formatting
def _fmt_metric(value: Any) -> str:
    return "—" if value is None else f"{float(value):.3f}"


def _fmt_int(value: Any) -> str:
    return "—" if value is None else f"{int(value):,}"


def _fmt_flops(value: Any) -> str:
    if value is None:
        return "—"
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f}"


def _fmt_float(digits: int) -> Any:
    return lambda value: "—" if value is None else f"{float(value):.{digits}f}"


def _fmt_duration(value: Any) -> str:
    if value is None:
        return "—"
    s = float(value)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round((s % 3600) / 60)):02d} min"


def _fmt_epochs(row: Mapping[str, Any]) -> str:
    if row.get("epochs_run") is None:
        return "—"
    best = row.get("best_epoch")
    return f"{row['epochs_run']}" + (f" (best {best})" if best is not None else "")


# ----------------------------------------------------------------------------- tables
def _summary_table(
    rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None,
    ranking: Sequence[Mapping[str, Any]], rank_metric: str,
) -> Table:
    k = next((r["top_k"] for r in rows if r.get("top_k")), None)
    metric_labels = [
        (key, f"Top-{k} acc." if key == "top_k_accuracy" and k else label) for key, label in METRICS
    ]
    metric_labels = [(key, label + (" ★" if key == rank_metric else "")) for key, label in metric_labels]
    headers = [
        "Rank", "Architecture", "Builder", "Params", "FLOPs", "Size (MB)",
        "Latency p50 (ms, batch 1)", "Latency p95 (ms, batch 1)", "Throughput (img/s, batch 32)",
        "Train time", "Epochs", *[label for _, label in metric_labels],
    ]
    rank_of = {r["arch"]: r["rank"] for r in ranking}
    ordered = sorted(rows, key=lambda r: rank_of.get(r["arch"], len(rank_of) + 1))
    table_rows: list[list[str]] = []
    for row in ordered:
        table_rows.append([
            str(rank_of.get(row["arch"], "—")), row["arch"], row.get("builder") or "—",
            _fmt_int(row.get("params")), _fmt_flops(row.get("flops")), _fmt_float(2)(row.get("size_mb")),
            _fmt_float(2)(row.get("latency_ms_p50")), _fmt_float(2)(row.get("latency_ms_p95")),
            _fmt_float(1)(row.get("throughput_ips")), _fmt_duration(row.get("train_seconds")),
            _fmt_epochs(row), *[_fmt_metric(row.get(key)) for key, _ in metric_labels],
        ])
    baseline_rows: set[int] = set()
    if baseline is not None:
        label = f"majority baseline ({baseline.get('majority_class') or '?'})"
        baseline_rows.add(len(table_rows))
        table_rows.append(
            ["—", label, "always predicts the training majority class", *["—"] * 8,
             *[_fmt_metric(baseline.get(key)) for key, _ in metric_labels]]
        )
    bold: set[tuple[int, int]] = set()
    first_metric_col = len(headers) - len(metric_labels)
    for j, (key, _) in enumerate(metric_labels):
        values = [(i, float(r[key])) for i, r in enumerate(ordered) if r.get(key) is not None]
        if values:
            pick = min if key in LOWER_IS_BETTER else max
            best = pick(v for _, v in values)
            bold.update((i, first_metric_col + j) for i, v in values if v == best)
    # The page reads quality first (accuracy, balanced accuracy, ...), then what a model costs.
    groups = [("", [0, 1]), ("Test-split metrics", list(range(first_metric_col, len(headers)))),
              ("Model, cost and training", list(range(2, first_metric_col)))]
    return Table(headers, table_rows, bold, groups=groups, baseline_rows=baseline_rows)


def _fmt_ci(interval: Any) -> str:
    if not isinstance(interval, (list, tuple)) or len(interval) != 2 or None in interval:
        return "—"
    return f"[{float(interval[0]):.3f}, {float(interval[1]):.3f}]"


def _per_class_table(per_class: Mapping[str, Mapping[str, Any]],
                     ci: Mapping[str, Mapping[str, Any]] | None = None) -> Table:
    ci = ci or {}
    rows = [
        [name, _fmt_int(stats.get("support")), _fmt_metric(stats.get("sensitivity")),
         _fmt_ci((ci.get(name) or {}).get("sensitivity")),
         _fmt_metric(stats.get("specificity")), _fmt_metric(stats.get("precision")),
         _fmt_metric(stats.get("f1"))]
        for name, stats in per_class.items()
    ]
    return Table(["Class", "Support", "Sensitivity", "Sensitivity 95% CI", "Specificity", "Precision",
                  "F1"], rows)


def _selection_table(
    metrics_by_arch: Mapping[str, Mapping[str, Any]], ranking: Sequence[Mapping[str, Any]],
    rank_metric: str,
) -> Table:
    """Validation (chooses) next to test (reports, with 95% group-bootstrap intervals)."""
    headline = [rank_metric, *[k for k in HEADLINE if k != rank_metric]]
    headers = ["Rank", "Architecture", f"Val {rank_metric} (selects) ★",
               *[f"Test {key} [95% CI]" for key in headline]]
    rows: list[list[str]] = []
    for entry in ranking:
        test = metrics_by_arch[entry["arch"]].get("test") or {}
        ci = test.get("ci95") or {}
        rows.append([str(entry["rank"]), entry["arch"], _fmt_metric(entry["value"]),
                     *[f"{_fmt_metric(test.get(key))} {_fmt_ci(ci.get(key))}" for key in headline]])
    baseline_doc = next((d for d in metrics_by_arch.values() if d.get("baseline")), None)
    baseline_rows: set[int] = set()
    if baseline_doc is not None:
        val_base = (baseline_doc.get(BASELINE_KEY[RANK_SPLIT]) or {}).get(rank_metric)
        baseline_rows.add(len(rows))
        rows.append(["—", f"majority baseline ({baseline_doc['baseline'].get('majority_class') or '?'})",
                     _fmt_metric(val_base),
                     *[_fmt_metric(baseline_doc["baseline"].get(key)) for key in headline]])
    bold = {(0, 2)} if ranking and ranking[0]["value"] is not None else set()
    return Table(headers, rows, bold, baseline_rows=baseline_rows)


def _calibration_table(metrics_by_arch: Mapping[str, Mapping[str, Any]], archs: Sequence[str]) -> Table | None:
    """Temperature, abstention threshold, coverage and accepted accuracy of each calibrated arch."""
    calibrated = [(a, metrics_by_arch[a]["calibration"]) for a in archs
                  if isinstance(metrics_by_arch[a].get("calibration"), Mapping)]
    if not calibrated:
        return None
    rows = [[arch, *[_fmt_metric(c.get(key)) for key, _ in CALIBRATION_FIELDS], str(c.get("note") or "")]
            for arch, c in calibrated]
    return Table(["Architecture", *[label for _, label in CALIBRATION_FIELDS], "Note"], rows)


def _sensitivity_overview(
    metrics_by_arch: Mapping[str, Mapping[str, Any]], archs: Sequence[str]
) -> Table | None:
    classes: list[str] = []
    for arch in archs:
        for name in ((metrics_by_arch[arch].get("test") or {}).get("per_class") or {}):
            if name not in classes:
                classes.append(name)
    if not classes:
        return None
    rows = []
    for name in classes:
        cells = [name]
        for arch in archs:
            stats = ((metrics_by_arch[arch].get("test") or {}).get("per_class") or {}).get(name)
            cells.append("—" if stats is None else
                         f"{_fmt_metric(stats.get('sensitivity'))} / {_fmt_metric(stats.get('specificity'))}")
        rows.append(cells)
    return Table(["Class", *[f"{a} (sens. / spec.)" for a in archs]], rows)


def _subgroup_tables(subgroups: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[tuple[str, Table]]:
    tables = []
    for column, groups in subgroups.items():
        rows = [
            [str(value), _fmt_int(stats.get("n")),
             *[_fmt_metric(stats.get(key)) if key in stats else "n too small" for key, _ in SUBGROUP_FIELDS]]
            for value, stats in groups.items()
        ]
        tables.append((column, Table(["Group", "n", *[label for _, label in SUBGROUP_FIELDS]], rows)))
    return tables


# ----------------------------------------------------------------------------- report
def _split_sizes_from(metrics_by_arch: Mapping[str, Mapping[str, Any]]) -> dict[str, int] | None:
    for doc in metrics_by_arch.values():
        sizes = (doc.get("training") or {}).get("split_sizes")
        if isinstance(sizes, Mapping) and sizes:
            return {str(k): int(v) for k, v in sizes.items() if v is not None}
    return None


def _copy_plots(plots_root: Path, out_dir: Path, archs: Sequence[str]) -> dict[str, Images]:
    """Copy each arch's PNGs into out_dir/img/<arch>/ so the Markdown report is self-contained too."""
    img_root = out_dir / IMG_DIRNAME
    if img_root.exists():
        shutil.rmtree(img_root)  # stale images of archs no longer compared must not linger
    images: dict[str, Images] = {}
    for arch in archs:
        items: list[tuple[str, str, Path | None]] = []
        for filename, title in PLOTS:
            src = plots_root / arch / filename
            rel = f"{IMG_DIRNAME}/{_slug(arch)}/{filename}"
            if src.is_file():
                dst = out_dir / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                items.append((title, rel, dst))
            else:
                items.append((title, rel, None))
        images[arch] = Images(items, wide=WIDE_PLOTS)
    return images


@dataclass
class Report:
    """The computed comparison: the compare.json content and the blocks both pages render."""

    title: str
    blocks: list[Block]
    result: dict[str, Any]


def build_report(metrics_by_arch: dict[str, dict], plots_root: Path, out_dir: Path, rank_metric: str, *,
                 split_sizes: Mapping[str, int] | None = None) -> dict:
    """compute_report + write_report (same arguments): compare.md/.html/.json written into out_dir;
    returns the compare.json content."""
    report = compute_report(metrics_by_arch, plots_root, out_dir, rank_metric, split_sizes=split_sizes)
    write_report(report, out_dir)
    return report.result


def write_report(report: Report, out_dir: Path) -> None:
    """Render: compare.md (pipelines.report), compare.html (its Jinja2 template), compare.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / COMPARE_MD).write_text(render_md(report.blocks), encoding="utf-8")
    (out_dir / COMPARE_HTML).write_text(render_html(report.blocks, report.title), encoding="utf-8")
    (out_dir / COMPARE_JSON).write_text(json.dumps(report.result, indent=2, allow_nan=False) + "\n",
                                        encoding="utf-8")


def compute_report(
    metrics_by_arch: dict[str, dict],
    plots_root: Path,
    out_dir: Path,
    rank_metric: str,
    *,
    split_sizes: Mapping[str, int] | None = None,
) -> Report:
    """The comparison (rows, ranking, warnings) and its blocks; writes no page.

    Copies each arch's plots into out_dir/img/ (the Markdown page links them there).

    metrics_by_arch: arch -> the evaluate stage's reports/evaluate/<arch>.json (order kept for display).
    plots_root: folder holding <arch>/<plot>.png. split_sizes: {"train", "val", "test"} counts for
    the header; defaults to `training.split_sizes` in the metrics JSON,
    else only the test n is known.
    `result` keys (compare.json): dataset, split_sizes, test_n, rank_metric, rank_split ("val"),
    report_split ("test"), higher_is_better, rows (one per arch: test metrics, `ci95`, `val`),
    baseline (row), ranking (arch names, best first), ranking_detail (rank, arch, split, value
    (validation), baseline_value, beats_baseline, test_value), best (None if no arch has a
    validation value), per_class, subgroups, plots, skipped (arch -> reason), warnings.
    """
    if not metrics_by_arch:
        raise ConfigError("no architectures to compare")
    skipped = {a: str(d["skipped"]) for a, d in metrics_by_arch.items() if "skipped" in d}
    metrics_by_arch = {a: d for a, d in metrics_by_arch.items() if a not in skipped}
    if not metrics_by_arch:
        raise DataError(f"every candidate was skipped: {skipped}")
    archs = list(metrics_by_arch)
    known: set[str] = set()
    for doc in metrics_by_arch.values():
        for split in (RANK_SPLIT, "test"):
            known.update(k for k, v in (doc.get(split) or {}).items() if not isinstance(v, (dict, list)))
    if rank_metric not in known:
        raise ConfigError(f"rank metric {rank_metric!r} is not a metric; known: {sorted(known)}")
    higher_is_better = rank_metric not in LOWER_IS_BETTER
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = [_model_row(arch, metrics_by_arch[arch]) for arch in archs]
    ranking = rank_architectures(metrics_by_arch, rank_metric)
    rank_of = {r["arch"]: r for r in ranking}
    for row in rows:
        row["rank"] = rank_of[row["arch"]]["rank"]
        row["rank_value"] = rank_of[row["arch"]]["value"]
    best = ranking[0]["arch"] if ranking and ranking[0]["value"] is not None else None
    baseline_doc = next((d["baseline"] for d in metrics_by_arch.values() if d.get("baseline")), None)
    baseline = _baseline_row(baseline_doc) if baseline_doc else None
    datasets = sorted({str(d.get("dataset")) for d in metrics_by_arch.values() if d.get("dataset")})
    dataset = ", ".join(datasets) if datasets else "unknown"
    sizes = dict(split_sizes) if split_sizes else _split_sizes_from(metrics_by_arch)
    test_ns = sorted({r["n_test"] for r in rows if r.get("n_test") is not None})

    warnings: list[str] = []
    if len(datasets) > 1:
        warnings.append(f"The architectures were evaluated on different data sets ({dataset}).")
    if len(test_ns) > 1:
        warnings.append(f"Test-split sizes differ between architectures ({test_ns}): numbers are "
                        "not directly comparable.")
    no_val = [a for a in archs if not metrics_by_arch[a].get(RANK_SPLIT)]
    if no_val:
        warnings.append(f"No validation metrics (re-run evaluate): {', '.join(no_val)}; they rank "
                        "last and are never chosen on test instead.")
    losers = [r["arch"] for r in ranking if r["beats_baseline"] is False]
    if losers:
        warnings.append(f"Not better than the majority baseline on validation `{rank_metric}`: "
                        f"{', '.join(losers)}.")
    images = _copy_plots(Path(plots_root), out_dir, archs)
    missing = [
        f"{a}/{rel.rsplit('/', 1)[-1]}" for a in archs for _, rel, src in images[a].items if src is None
    ]
    if missing:
        warnings.append(f"Plots not produced: {', '.join(missing)}.")

    # --- header
    title = f"Medscan model comparison: {dataset}"
    if sizes:
        split_text = ", ".join(f"{k} {v:,}" for k, v in sizes.items()) + " images"
    else:
        split_text = "train/val sizes not recorded; test " + (
            ", ".join(f"{n:,}" for n in test_ns) if test_ns else "unknown") + " images"
    direction = "higher is better" if higher_is_better else "lower is better"
    blocks: list[Block] = [
        ("h1", title),
        ("p", f"**Data set:** `{dataset}`. **Split sizes:** {split_text}."),
        ("p", f"**Validation chose, test only reports.** Architectures are ranked by the "
              f"**validation** value of `{rank_metric}`; the **held-out test split** "
              f"(n = {', '.join(str(n) for n in test_ns) or '?'}) played no part in training, early "
              "stopping or model selection: its numbers (with 95% group-bootstrap intervals) report "
              "how the chosen model does, and the promotion gate uses them once."),
        ("p", f"**Ranking metric:** validation `{rank_metric}` ({direction}, params `promote.metric`). "
              + (f"**Best: `{best}`** (validation {_fmt_metric(rank_of[best]['value'])}"
                 + (f"; majority baseline {_fmt_metric(rank_of[best]['baseline_value'])}"
                    if rank_of[best]["baseline_value"] is not None else "")
                 + f"; test {_fmt_metric(rank_of[best]['test_value'])})."
                 if best else "**No architecture has a validation value for it.**")),
        ("p", "Diagnostic-support research output, not a validated medical device: per-class "
              "sensitivity and subgroup results below matter more than any single summary number."),
    ]
    for text in warnings:
        blocks.append(("p", f"**Warning:** {text}"))
    if skipped:
        blocks.append(("p", "**Skipped candidates** (no model to compare): "
                            + "; ".join(f"`{a}`: {why}" for a, why in skipped.items()) + "."))

    # --- selection, summary, per class, subgroups, plots
    blocks.append(("h2", "Selection: validation chooses, test reports"))
    blocks.append(("p", "Rank order comes from the validation column only. Test values carry a 95% "
                        "interval from resampling groups (lesions, patients, slides) with replacement."))
    blocks.append(("table", _selection_table(metrics_by_arch, ranking, rank_metric)))
    blocks.append(("h2", "Summary"))
    blocks.append(("p", "Test-split metrics, one row per architecture in validation rank order; the "
                        "majority-class baseline is the floor every model must clear. Best test value "
                        "per metric in bold; ★ = ranking metric (ranked on validation). Latency is "
                        "single-image (batch 1), throughput at batch 32."))
    blocks.append(("table", _summary_table(rows, baseline, ranking, rank_metric)))
    calibration = _calibration_table(metrics_by_arch, [r["arch"] for r in ranking])
    if calibration is not None:
        blocks.append(("h2", "Calibration and abstention"))
        blocks.append(("p", "Temperature scaling and the abstention threshold are fitted on validation; "
                            "coverage is the share of cases the model answers (confidence at or above "
                            "the threshold), accepted accuracy the accuracy on those."))
        blocks.append(("table", calibration))
    overview = _sensitivity_overview(metrics_by_arch, archs)
    if overview is not None:
        blocks.append(("h2", "Sensitivity / specificity by class"))
        blocks.append(("table", overview))
    for arch in [r["arch"] for r in ranking]:
        doc = metrics_by_arch[arch]
        row = rank_of[arch]
        blocks.append(("h2", f"{row['rank']}. {arch}"))
        training = doc.get("training") or {}
        details = [f"builder `{doc.get('builder') or '?'}`"]
        if training.get("image_size") is not None:
            details.append(f"image size {training['image_size']}")
        if training.get("run_id"):
            details.append(f"MLflow run `{training['run_id']}`")
        blocks.append(("p", ", ".join(details) + "."))
        per_class = (doc.get("test") or {}).get("per_class")
        if per_class:
            blocks.append(("h3", f"{arch}: per-class results"))
            blocks.append(("table", _per_class_table(
                per_class, ((doc.get("test") or {}).get("ci95") or {}).get("per_class"))))
        subgroups = doc.get("subgroups") or {}
        if subgroups:
            blocks.append(("h3", f"{arch}: subgroups"))
            blocks.append(("p", "Groups too small for stable estimates report their size only."))
            for column, table in _subgroup_tables(subgroups):
                blocks.append(("p", f"**{column}**"))
                blocks.append(("table", table))
        blocks.append(("h3", f"{arch}: plots"))
        blocks.append(("images", images[arch]))

    result = json_safe({
        "dataset": dataset,
        "split_sizes": sizes,
        "test_n": test_ns[0] if len(test_ns) == 1 else test_ns,
        "rank_metric": rank_metric,
        "rank_split": RANK_SPLIT,
        "report_split": "test",
        "higher_is_better": higher_is_better,
        "rows": rows,
        "baseline": baseline,
        "ranking": [r["arch"] for r in ranking],  # arch names, best first (summary/promote read this)
        "ranking_detail": ranking,
        "best": best,
        "per_class": {a: (metrics_by_arch[a].get("test") or {}).get("per_class") for a in archs},
        "subgroups": {a: metrics_by_arch[a].get("subgroups") or {} for a in archs},
        "plots": {a: {Path(rel).stem: (rel if src else None) for _, rel, src in images[a].items}
                  for a in archs},
        "skipped": skipped,
        "warnings": warnings,
    })
    return Report(title, blocks, result)


def run(paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    """Compare the archs params `architectures` lists and the derived candidates; returns compare.json.
    Reads params `architectures`, the derived candidates' sections and `promote.metric`."""
    archs = candidates(params)
    if not params.get("architectures"):
        raise ConfigError("params.yaml lists no `architectures` to compare")
    metrics_by_arch: dict[str, dict] = {}
    for arch in archs:
        path = paths.eval_report(arch)
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `dvc repro evaluate@{arch}` first")
        metrics_by_arch[arch] = json.loads(path.read_text(encoding="utf-8"))
    # Split sizes come from the evaluation report (training.split_sizes), a declared dependency.
    return build_report(metrics_by_arch, paths.plots_dir(archs[0]).parent, paths.compare_dir,
                        params["promote"]["metric"])


def main() -> None:
    """DVC entry point."""
    result = run_stage("compare", run)
    log.info("compare: %d candidates (%d skipped), ranked by validation %s; best = %s; report in %s",
             len(result["rows"]) + len(result["skipped"]), len(result["skipped"]), result["rank_metric"],
             result["best"], Paths(project_root()).compare_dir / COMPARE_MD)


if __name__ == "__main__":
    main()
