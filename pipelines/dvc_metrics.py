"""The few headline numbers each stage shows in `dvc metrics show`, `metrics diff` and `exp show`.

DVC prints every value of every declared metrics file as a column, so the full reports (every
expectation, every class, lineage, bootstrap settings) are plain outputs and these small files are
the declared metrics: a dozen rounded values a reader compares across experiments. Pure functions of
the full reports, so the two can never disagree.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DIGITS = 4
# What a reader compares between two runs of one architecture (val selects, test reports).
HEADLINE = ("accuracy", "balanced_accuracy", "f1_macro", "mcc", "roc_auc_macro_ovr", "ece")
# `dvc metrics show` prints one table whose columns are the union of every file's keys: each key
# costs a column on every row. Only the ranking-grade metric carries its 95% interval (test).
WITH_INTERVAL = ("balanced_accuracy",)


def _num(value: Any) -> float | int | None:
    """Rounded number, or None for missing/NaN (DVC prints '-')."""
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and not math.isfinite(value) else (
            value if isinstance(value, int) else round(float(value), DIGITS))
    return None


def split_metrics(results: Mapping[str, Any] | None, intervals: bool = False) -> dict[str, Any]:
    """Headline metrics of one scored split, with the interval bounds of WITH_INTERVAL if asked."""
    if not results:
        return {}
    out: dict[str, Any] = {k: _num(results.get(k)) for k in HEADLINE}
    for key in WITH_INTERVAL if intervals else ():
        bounds = (results.get("ci95") or {}).get(key)
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = _num(bounds[0]), _num(bounds[1])
    return out


def evaluation(report: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/<arch>.json from the full evaluation report: val (selects) and test (reports, with
    the interval of the ranking-grade metric). Baselines and per-class values stay in the report."""
    return {"val": split_metrics(report.get("val")),
            "test": split_metrics(report.get("test"), intervals=True)}


def validation(doc: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/validate.json from validation.json: counts, never the expectation list."""
    keys = ("success", "failed", "rows", "quarantined")
    return {k: _num(doc[k]) for k in keys if k in doc}


def split(report: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/split.json from split_report.json: sizes, leakage, worst stratification gap."""
    return {"sizes": {k: int(v) for k, v in report["sizes"].items()},
            "overlapping_groups": int(report["overlapping_groups"]),
            "max_class_deviation": _num(report["stratification"]["max_abs_deviation_any_class"])}


def promotion(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/promote.json from promotion.json: the verdict and the two scores, no lineage."""
    keys = ("blessed", "candidate_score", "champion_score", "candidate_version", "champion_after")
    return {k: _num(outcome.get(k)) for k in keys}


def write(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
