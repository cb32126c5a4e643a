"""Promote stage: register the chosen architecture and bless it (or not), like TFX's Evaluator+Pusher.

The challenger is compare's best, chosen on the validation split; the test split only scores it.
The gate (pipelines/gate.py): the challenger's test score must reach an absolute floor; when a
champion exists, both are scored on the same test images (the challenger from the probabilities
evaluate saved, the champion by running it), minus every image either model trained or
early-stopped on (each version's training fingerprint), and the challenger must beat the champion
by more than `promote.min_delta` (optionally with the paired group-bootstrap interval's lower bound
above it) without lowering the sensitivity of a guarded class by more than
`promote.max_sensitivity_drop`. A champion whose artifacts are gone is recorded as unscorable and
the floor decides, so a lost artifact never blocks promotion forever. The candidate is registered
either way, with its lineage and every gate number as tags; only a blessed one gets `champion`.
Inside `dvc exp run` nothing is registered unless `promote.register_experiments` is true: the
verdict is still in reports/promotion.json (its headline in metrics/promote.json).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from pipelines import dvc_metrics, registry, tracking
from pipelines.candidate import read_train_info
from pipelines.cli import run_stage
from pipelines.config import ARTIFACT_DIR, Paths
from pipelines.errors import DataError
from pipelines.fingerprint import ARTIFACT as FINGERPRINT_ARTIFACT
from pipelines.fingerprint import check_fingerprint, read_fingerprint, training_fingerprint
from pipelines.gate import (ALREADY_CHAMPION, COMPARED, NO_CHAMPION, OTHER_LABELS, UNSCORABLE,
                            Comparison, Decision,
                            compare_models, decide, fair_test_images, policy_from_params)
from pipelines.inference import label_indices, load_bundle, predict_frame, saved_probabilities
from pipelines.lineage import lineage_tags
from pipelines.manifest import read_splits

log = logging.getLogger(__name__)

EXPERIMENT_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")   # what `dvc exp run` sets for its stages


def registers(promote_params: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> bool:
    """Inside `dvc exp run` the gate decides and reports but the registry is left alone, unless
    `promote.register_experiments` asks (scripts/real.py does): experiments are for comparing."""
    return not any(env.get(k) for k in EXPERIMENT_ENV) or bool(promote_params.get("register_experiments", False))


def data_hashes(paths: Paths) -> dict[str, str]:
    """DVC's content hashes of the data the model saw (from dvc.lock), else a file digest."""
    hashes: dict[str, str] = {}
    lock = paths.dvc_lock
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        for stage in ("ingest", "split"):
            for out in stages.get(stage, {}).get("outs", []):
                if out["path"] in ("data/images", "data/splits.parquet"):
                    hashes[out["path"]] = out.get("md5", "")
    hashes.setdefault("data/splits.parquet", tracking.file_digest(paths.splits, 32))
    return hashes


def challenger_fingerprint(paths: Paths, arch: str, frames: Mapping[str, pd.DataFrame]
                           ) -> tuple[dict[str, Any], str]:
    """The challenger's fingerprint file; a model trained before fingerprints existed gets today's
    train+val (DVC retrains models/<arch> whenever the split changes, so that is what it saw)."""
    path = paths.train_fingerprint(arch)
    if path.exists():
        return read_fingerprint(path), "recorded"
    return training_fingerprint(frames), "derived from today's train+val split (no fingerprint file)"


@dataclass(frozen=True)
class Champion:
    """The current champion as the gate sees it."""

    version: ModelVersion | None
    state: str  # gate.NO_CHAMPION, ALREADY_CHAMPION, COMPARED, UNSCORABLE or OTHER_LABELS
    note: str
    model: tuple[Any, dict[str, Any]] | None = None   # (keras model, train_info) when COMPARED
    fingerprint: dict[str, Any] | None = None


def current_champion(name: str, client: MlflowClient, classes: list[str], candidate_run: str) -> Champion:
    """Load the champion and its fingerprint; missing artifacts make it unscorable, not fatal."""
    current = registry.version_by_alias(client, name, registry.CHAMPION)
    if current is None:
        return Champion(None, NO_CHAMPION, "no champion yet")
    if current.run_id == candidate_run:
        return Champion(current, ALREADY_CHAMPION, f"version {current.version}, run {candidate_run}")
    try:
        model, info = registry.load_version(name, current)
        fingerprint = registry.download_json(name, current, FINGERPRINT_ARTIFACT)
    except registry.ArtifactMissing as exc:
        log.warning("promote: the champion cannot be scored: %s", exc)
        return Champion(current, UNSCORABLE, str(exc))
    if list(info["classes"]) != list(classes):
        return Champion(current, OTHER_LABELS,
                        f"version {current.version} was trained on another label set {info['classes']}")
    if fingerprint is None:
        # Conservative: its training images are unknown, so none can be excluded for it; if it saw
        # some of today's test images its score is inflated, which can only favour keeping it.
        return Champion(current, COMPARED, (
            f"version {current.version} has no training fingerprint ({FINGERPRINT_ARTIFACT}): compared "
            "on every test image the challenger did not see; any overlap favours the champion"),
            (model, info))
    return Champion(current, COMPARED, f"version {current.version} re-scored on the shared test images",
                    (model, info),
                    check_fingerprint(fingerprint, f"{name} v{current.version} {FINGERPRINT_ARTIFACT}"))


def gate_tags(outcome: Mapping[str, Any]) -> dict[str, str]:
    """Every gate number as a version tag `medscan.gate.<key>` (nested values as JSON); the verdict
    itself is in `medscan.blessed` / `medscan.blessing_reason`."""
    return {f"medscan.gate.{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in outcome.items() if key not in ("blessed", "reason")}


def run(paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    """Register compare's best, run the gate, move the champion alias when it is blessed; returns
    (and writes) reports/promotion.json. Reads params `promote` and the data set's name."""
    promote_params, dataset = params["promote"], params["dataset"]["name"]
    metric = promote_params["metric"]
    compare = json.loads(paths.compare_json.read_text(encoding="utf-8"))
    best = compare["best"]
    if best is None:
        raise DataError(f"no architecture has a validation {metric}: nothing to promote (see {paths.compare_json})")
    report = json.loads(paths.eval_report(best).read_text(encoding="utf-8"))
    info = read_train_info(paths.model_dir(best))
    classes = list(info["classes"])
    policy = policy_from_params(promote_params, dataset, classes)
    candidate = float(report["test"][metric])
    candidate_val = (report.get("val") or {}).get(metric)
    candidate_ci = ((report["test"].get("ci95") or {}).get(metric))

    tracking.configure(paths, dataset)
    client = MlflowClient()
    name = registry.model_name(params)
    champ = current_champion(name, client, classes, info["run_id"])
    state, before = champ.state, champ.version
    comparison: Comparison | None = None
    fingerprints = {"challenger": "not needed", "champion": "not needed"}
    if state == COMPARED:
        frames = read_splits(paths)
        ours_fp, fingerprints["challenger"] = challenger_fingerprint(paths, best, frames)
        fingerprints["champion"] = "recorded" if champ.fingerprint is not None else "missing"
        test = frames["test"]
        fair, excluded = fair_test_images(test, {"challenger": ours_fp, "champion": champ.fingerprint})
        if len(fair):
            ours = saved_probabilities(paths.test_probabilities(best), fair, classes)
            if ours is None:  # an evaluate from before the probabilities were saved
                ours = predict_frame(*load_bundle(paths.model_dir(best)), fair, paths.root)
            theirs = predict_frame(*champ.model, fair, paths.root)
        else:
            ours = theirs = None
        comparison = compare_models(label_indices(fair, classes), fair["group_id"].astype(str).tolist(),
                                    ours, theirs, classes, policy, n_test=len(test), excluded=excluded)
    decision: Decision = decide(policy, candidate, state, comparison, champ.note)

    outcome: dict[str, Any] = {
        "blessed": int(decision.blessed), "reason": decision.reason, "metric": metric,
        "selected_on": compare.get("rank_split"),
        "candidate_arch": best, "candidate_score": candidate, "candidate_val_score": candidate_val,
        "candidate_ci95": candidate_ci,
        "champion_score": None if comparison is None else comparison.champion_score,
        "champion_state": state, "champion_unscorable": state == UNSCORABLE,
        "champion_note": champ.note, "floor": policy.floor, "min_delta": policy.min_delta,
        "require_ci_above_delta": policy.require_ci_above_delta,
        "guard": {"classes": list(policy.guard_classes),
                  "max_sensitivity_drop": policy.max_sensitivity_drop,
                  "outcome": decision.guard_outcome()},
        "comparison": None if comparison is None else {**comparison.as_dict(),
                                                       "fingerprints": fingerprints},
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks],
    }
    lineage = {
        **lineage_tags(paths.root),
        **{f"medscan.dvc_md5.{k}": v for k, v in data_hashes(paths).items()},
        "medscan.dataset": dataset, "medscan.arch": best,
        "medscan.split_sizes": json.dumps(info["split_sizes"]),
        "medscan.params": json.dumps({"train": params["train"], "zoo": info["spec"],
                                      "augment": params["augment"], "split": params["split"]}),
        f"medscan.test_{metric}": f"{candidate:.6f}",
        **({f"medscan.val_{metric}": f"{float(candidate_val):.6f}"} if candidate_val is not None else {}),
        "medscan.blessed": str(decision.blessed).lower(),
        "medscan.blessing_reason": decision.reason,
    }
    outcome["champion_before"] = None if before is None else int(before.version)
    register = registers(promote_params)
    if state == ALREADY_CHAMPION:  # keep the tags of the gate that blessed it
        version = champ.version
    elif register:
        version = registry.register(client, name, info["run_id"], {**lineage, **gate_tags(outcome)})
    else:
        version = None
        log.info("promote: inside `dvc exp run` (%s): the registry is left alone "
                 "(-S promote.register_experiments=true registers)", os.environ.get("DVC_EXP_NAME") or "unnamed")
    if decision.blessed and version is not None:
        registry.set_champion(client, name, version.version)
    after = registry.version_by_alias(client, name, registry.CHAMPION)
    outcome.update({"model_name": name, "registered": version is not None,
                    "candidate_version": None if version is None else int(version.version),
                    "champion_after": None if after is None else int(after.version),
                    "experiment": os.environ.get("DVC_EXP_NAME"), "lineage": lineage})
    paths.promotion.parent.mkdir(parents=True, exist_ok=True)
    paths.promotion.write_text(json.dumps(outcome, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    dvc_metrics.write(paths.stage_metrics("promote"), dvc_metrics.promotion(outcome))
    with mlflow.start_run(run_id=info["parent_run_id"]):
        mlflow.set_tags({"medscan.blessed": str(decision.blessed).lower(),
                         "medscan.candidate": f"{name}/{'unregistered' if version is None else version.version}"})
        mlflow.log_artifact(str(paths.promotion), artifact_path=ARTIFACT_DIR)
        mlflow.log_artifacts(str(paths.compare_dir), artifact_path="compare")
    return outcome


def main() -> None:
    out = run_stage("promote", run)
    verdict = "BLESSED" if out["blessed"] else "not blessed"
    version = f"v{out['candidate_version']}" if out["registered"] else "(experiment, not registered)"
    champion = "none" if out["champion_after"] is None else f"v{out['champion_after']}"
    log.info("%s %s (%s): %s: %s; champion is %s", out["model_name"], version, out["candidate_arch"], verdict,
             out["reason"], champion)


if __name__ == "__main__":
    main()
