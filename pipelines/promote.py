"""Promote stage: register the best architecture and bless it (or not), like TFX's Evaluator+Pusher.

The gate: the candidate must reach an absolute floor on `promote.metric`, and, when a champion
exists, beat it by more than `promote.min_delta` with both scored on today's test split (the
champion is re-scored, since new cases change the split). The candidate is registered either way,
with its lineage and the decision as tags; only a blessed candidate gets the `champion` alias.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import yaml
from mlflow import MlflowClient

from pipelines import registry, tracking
from pipelines.config import Paths, load_params, project_root
from pipelines.inference import label_indices, predict_frame
from pipelines.metrics import classification_metrics
from pipelines.manifest import read_splits


@dataclass(frozen=True)
class Decision:
    blessed: bool
    reason: str
    metric: str
    candidate_score: float
    champion_score: float | None
    floor: float
    min_delta: float


def bless(metric: str, candidate: float, champion: float | None, floor: float, min_delta: float) -> Decision:
    """The blessing rule, pure so it can be tested on constructed cases."""
    def decide(ok: bool, why: str) -> Decision:
        return Decision(ok, why, metric, candidate, champion, floor, min_delta)

    if candidate < floor:
        return decide(False, f"{metric} {candidate:.4f} is below the floor {floor:.4f}")
    if champion is None:
        return decide(True, f"first champion: {metric} {candidate:.4f} >= floor {floor:.4f}")
    if candidate - champion > min_delta:
        return decide(True, f"{metric} {candidate:.4f} beats champion {champion:.4f} by more than {min_delta}")
    return decide(False, f"{metric} {candidate:.4f} does not beat champion {champion:.4f} by more than {min_delta}")


def git_commit(root: Path) -> str:
    """HEAD's commit, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def data_hashes(paths: Paths) -> dict[str, str]:
    """DVC's content hashes of the data the model saw (from dvc.lock), else a file digest."""
    hashes: dict[str, str] = {}
    lock = paths.root / "dvc.lock"
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        for stage in ("ingest", "split"):
            for out in stages.get(stage, {}).get("outs", []):
                if out["path"] in ("data/images", "data/splits.parquet"):
                    hashes[out["path"]] = out.get("md5", "")
    hashes.setdefault("data/splits.parquet", tracking.file_digest(paths.splits, 32))
    return hashes


def champion_score(name: str, paths: Paths, metric: str, classes: list[str],
                   client: MlflowClient) -> tuple[str | None, float | None, str]:
    """Re-score the current champion on today's test split: (version, score, note)."""
    current = registry.version_by_alias(client, name, registry.CHAMPION)
    if current is None:
        return None, None, "no champion yet"
    model, info = registry.load_version(name, current)
    if list(info["classes"]) != list(classes):
        return current.version, None, "champion was trained on another label set: not comparable"
    test = read_splits(paths)["test"]
    probs = predict_frame(model, info, test, paths.root)
    scores = classification_metrics(label_indices(test, classes), probs, classes)
    return current.version, float(scores[metric]), "re-scored on the current test split"


def promote(paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    pp, dataset = params["promote"], params["dataset"]["name"]
    metric = pp["metric"]
    compare = json.loads((paths.compare_dir / "compare.json").read_text(encoding="utf-8"))
    best = compare["best"]
    if best is None:
        raise SystemExit(f"no architecture has a test {metric}: nothing to promote (see compare.json)")
    report = json.loads(paths.metrics_file(best).read_text(encoding="utf-8"))
    info = json.loads((paths.model_dir(best) / "train_info.json").read_text(encoding="utf-8"))
    candidate = float(report["test"][metric])

    tracking.configure(paths, dataset)
    client = MlflowClient()
    name = registry.model_name(params)
    before, champ, note = champion_score(name, paths, metric, info["classes"], client)
    decision = bless(metric, candidate, champ, float(pp["floor"]), float(pp["min_delta"]))

    lineage = {
        "medscan.git_commit": git_commit(paths.root),
        **{f"medscan.dvc_md5.{k}": v for k, v in data_hashes(paths).items()},
        "medscan.dataset": dataset, "medscan.arch": best,
        "medscan.split_sizes": json.dumps(info["split_sizes"]),
        "medscan.params": json.dumps({"train": params["train"], "zoo": info["spec"],
                                      "augment": params["augment"], "split": params["split"]}),
        f"medscan.test_{metric}": f"{candidate:.6f}",
        "medscan.blessed": str(decision.blessed).lower(),
        "medscan.blessing_reason": decision.reason,
    }
    version = registry.register(client, name, info["run_id"], lineage)
    if decision.blessed:
        registry.set_champion(client, name, version.version)
    after = registry.version_by_alias(client, name, registry.CHAMPION)
    outcome = {
        **asdict(decision), "blessed": int(decision.blessed), "model_name": name,
        "candidate_arch": best, "candidate_version": int(version.version),
        "champion_before": None if before is None else int(before), "champion_note": note,
        "champion_after": None if after is None else int(after.version),
        "lineage": lineage,
    }
    paths.promotion.parent.mkdir(parents=True, exist_ok=True)
    paths.promotion.write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    with mlflow.start_run(run_id=info["parent_run_id"]):
        mlflow.set_tags({"medscan.blessed": str(decision.blessed).lower(),
                         "medscan.candidate": f"{name}/{version.version}"})
        mlflow.log_artifact(str(paths.promotion), artifact_path="medscan")
        mlflow.log_artifacts(str(paths.compare_dir), artifact_path="compare")
    return outcome


def main() -> None:
    root = project_root()
    out = promote(Paths(root), load_params(root))
    verdict = "BLESSED" if out["blessed"] else "not blessed"
    print(f"{out['model_name']} v{out['candidate_version']} ({out['candidate_arch']}): {verdict}: "
          f"{out['reason']}; champion is v{out['champion_after']}", file=sys.stderr)


if __name__ == "__main__":
    main()
