"""Ensemble stage: the mean of the best architectures' probabilities, as one more candidate.

Runs after every evaluate@<arch>: ranks the trained `architectures` by the VALIDATION value of
`promote.metric` (metrics/<arch>.json; skipped candidates and those without a validation value
take no part), takes the top `ensemble.members` whose classes and metadata encoding match the
best one's, and writes derived/models/ensemble/ as train writes models/<arch>/ (model.keras, an
empty history.json, train_info.json, train_fingerprint.json = the union of the members') plus an
MLflow child run under the same pipeline parent (evaluate logs the model, as for every candidate:
the calibrated pyfunc that promote registers). evaluate, compare and the promotion gate then treat
it like any trained architecture (pipelines/ensemble.py).

Members are chosen on validation, so the ensemble's validation score is slightly optimistic: do not
read a validation win of the ensemble as proof. The gate decides on the fair test comparison
(test images no member trained or early-stopped on), which no choice made here has seen.

With `ensemble.enabled: false` or fewer than 2 eligible members it writes skipped.json with the
reason instead; evaluate then writes a `skipped` metrics file, which compare lists and never ranks.
"""
from __future__ import annotations

import json
import math
import logging
import shutil
import time
from collections.abc import Mapping
from typing import Any

import mlflow

from pipelines import tracking
from pipelines.candidate import save_candidate
from pipelines.cli import run_stage
from pipelines.config import ARTIFACT_DIR, DERIVED, ENSEMBLE, Paths
from pipelines.ensemble import SHARED_KEYS, build_ensemble, differences, union_fingerprint
from pipelines.errors import ConfigError
from pipelines.fingerprint import read_fingerprint, write_fingerprint
from pipelines.inference import load_bundle
from pipelines.manifest import read_splits
from pipelines.metrics import LOWER_IS_BETTER

SELECTION_SPLIT = "val"

log = logging.getLogger(__name__)


def _value(doc: Mapping[str, Any] | None, metric: str) -> float | None:
    value = (doc or {}).get(metric)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def rank_by_validation(metrics_by_arch: Mapping[str, Mapping[str, Any] | None], metric: str
                       ) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """([(arch, val value)] best first, {arch: why it is not eligible}); ties go to the name."""
    ranked, excluded = [], {}
    for arch, doc in metrics_by_arch.items():
        if doc is None:
            excluded[arch] = "no metrics file"
        elif "skipped" in doc:
            excluded[arch] = f"skipped: {doc['skipped']}"
        elif (value := _value(doc.get(SELECTION_SPLIT), metric)) is None:
            excluded[arch] = f"no validation {metric}"
        else:
            ranked.append((arch, value))
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return sorted(ranked, key=lambda av: (sign * av[1], av[0])), excluded


def write_skipped(paths: Paths, reason: str) -> dict[str, Any]:
    """Replace the candidate's folder by skipped.json, so no stale ensemble is evaluated."""
    marker = {"skipped": reason, "arch": ENSEMBLE}
    paths.skipped(ENSEMBLE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker


def execution_parent(experiment: str, best: Mapping[str, Any], dataset: str, paths: Paths) -> str:
    """The parent run the best member trained under (one parent per pipeline execution); a parent
    that is gone from the store gets a new one keyed by the splits."""
    parent = best.get("parent_run_id")
    if parent:
        try:
            return mlflow.MlflowClient().get_run(parent).info.run_id
        except mlflow.exceptions.MlflowException:
            pass
    key = f"{dataset}-{tracking.file_digest(paths.splits)}"
    return tracking.parent_run_id(experiment, key, run_name=f"{dataset} ensemble")


def run(paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    """Build and record the ensemble candidate; returns its train_info or the skipped marker."""
    ensemble_params = params.get("ensemble") or {}
    metric, dataset = params["promote"]["metric"], params["dataset"]["name"]
    out = paths.model_dir(ENSEMBLE)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if not ensemble_params.get("enabled", True):
        return write_skipped(paths, "ensemble.enabled is false")
    wanted = int(ensemble_params.get("members", 2))
    if wanted < 2:
        raise ConfigError(f"ensemble.members must be at least 2, got {wanted}")
    archs = [a for a in params.get("architectures") or [] if a not in DERIVED]
    docs = {a: json.loads(f.read_text(encoding="utf-8")) if (f := paths.eval_report(a)).exists() else None
            for a in archs}
    ranked, excluded = rank_by_validation(docs, metric)

    chosen: dict[str, Any] = {}
    infos: dict[str, dict[str, Any]] = {}
    for arch, _ in ranked:
        if len(chosen) == wanted:
            break
        model, info = load_bundle(paths.model_dir(arch))
        differs = differences(info, next(iter(infos.values()), info))
        if differs:
            excluded[arch] = f"differs from {next(iter(infos))!r} in {differs}"
            continue
        chosen[arch], infos[arch] = model, info
    if len(chosen) < 2:
        detail = "; ".join(f"{a}: {why}" for a, why in excluded.items()) or "none trained"
        return write_skipped(paths, f"{len(chosen)} eligible member(s), an ensemble needs 2 ({detail})")

    started = time.perf_counter()
    first = next(iter(infos.values()))
    sizes = {a: int(i["image_size"]) for a, i in infos.items()}
    model = build_ensemble(chosen, sizes, len(first.get("metadata_features") or []))
    values = dict(ranked)
    spec = {"builder": ENSEMBLE, "members": list(chosen), "member_specs": {a: i["spec"] for a, i in infos.items()}}

    experiment = tracking.configure(paths, dataset)
    parent = execution_parent(experiment, infos[next(iter(chosen))], dataset, paths)
    with mlflow.start_run(experiment_id=experiment, run_name=ENSEMBLE, parent_run_id=parent) as run:
        mlflow.set_tags({"medscan.arch": ENSEMBLE, "medscan.builder": ENSEMBLE, "medscan.dataset": dataset})
        tracking.log_split_datasets(read_splits(paths), dataset, paths.splits)  # the rows its members saw
        mlflow.log_params({"arch": ENSEMBLE, "dataset": dataset, "ensemble.members": ",".join(chosen),
                           "ensemble.selected_on": f"{SELECTION_SPLIT} {metric}",
                           **{f"ensemble.member.{a}.run_id": i["run_id"] for a, i in infos.items()},
                           "num_classes": len(first["classes"]), "params_count": model.count_params()})
        mlflow.log_metrics({f"member_val_{metric}.{a}": values[a] for a in chosen})
        train_info = {
            "arch": ENSEMBLE, "builder": ENSEMBLE, "spec": spec, "dataset": dataset,
            "classes": first["classes"], "image_size": max(sizes.values()),
            **{k: first.get(k) for k in SHARED_KEYS if k != "classes"},
            "run_id": run.info.run_id, "parent_run_id": parent,
            # Cost of the candidate: its members' training; assembling itself trains nothing.
            "train_seconds": round(sum(float(i.get("train_seconds") or 0.0) for i in infos.values()), 2),
            "epochs_run": 0, "best_epoch": None, "class_weights": {},
            "split_sizes": first.get("split_sizes"), "sampling": first.get("sampling"),
            "tta": str((params.get("evaluate") or {}).get("tta", "none")),
            "members": list(chosen), "member_run_ids": {a: i["run_id"] for a, i in infos.items()},
            "member_image_sizes": sizes,
            "selection": {"split": SELECTION_SPLIT, "metric": metric,
                          "values": {a: values[a] for a in chosen}, "excluded": excluded},
            "assemble_seconds": round(time.perf_counter() - started, 2),
        }
        save_candidate(paths, ENSEMBLE, model, {}, train_info)  # empty history: nothing was trained here
        # The gate must exclude every image ANY member trained or early-stopped on.
        union = union_fingerprint([read_fingerprint(paths.train_fingerprint(a)) for a in chosen])
        mlflow.log_artifact(str(write_fingerprint(paths.train_fingerprint(ENSEMBLE), union)),
                            artifact_path=ARTIFACT_DIR)
    return train_info


def main() -> None:
    result = run_stage("ensemble", run)
    if "skipped" in result:
        log.info("ensemble: skipped (%s)", result["skipped"])
        return
    picks = ", ".join(f"{a} {v:.3f}" for a, v in result["selection"]["values"].items())
    log.info("ensemble: mean of %s (validation %s, slightly optimistic for the ensemble; the gate decides "
             "on test); run %s", picks, result["selection"]["metric"], result["run_id"])


if __name__ == "__main__":
    main()
