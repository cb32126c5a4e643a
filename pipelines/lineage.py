"""Code lineage of a registered version: which commit, what differed from it, who published it.

A pipeline run rewrites dvc.lock (and DVC's .gitignores) before promote registers the model, so
"HEAD plus a dirty flag" marked every version `+dirty`. Instead the version carries the clean
commit and the exact tracked files that differed from it when it was registered; the orchestrator
later adds the commit it made of those files and its run id (`tag_published_version`).
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LISTED = 50    # an MLflow tag holds a few KB: list this many changed files, then a count
COMMIT_TAG, CHANGED_TAG = "medscan.git_commit", "medscan.git_changed_files"
PUBLISH_COMMIT_TAG, RUN_ID_TAG = "medscan.publish_commit", "medscan.orchestrator_run_id"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def git_state(root: Path) -> dict[str, Any]:
    """HEAD's commit and the tracked files that differ from it; commit 'unknown' outside git."""
    try:
        head = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=no", "-z")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "changed": []}
    # -z entries: "XY path\0" (a rename adds "orig\0" after it, which is not a changed path).
    entries, changed, skip = status.split("\0"), [], False
    for entry in entries:
        if skip or not entry:
            skip = False
            continue
        changed.append(entry[3:])
        skip = entry[0] in "RC"
    return {"commit": head, "changed": sorted(changed)}


def lineage_tags(root: Path) -> dict[str, str]:
    """`medscan.git_commit` (always a clean commit id) and `medscan.git_changed_files` (JSON list;
    beyond MAX_LISTED files, the first ones and a count)."""
    state = git_state(root)
    changed: list[str] = state["changed"]
    listed = changed[:MAX_LISTED] + ([f"... {len(changed) - MAX_LISTED} more"] if len(changed) > MAX_LISTED else [])
    return {COMMIT_TAG: state["commit"], CHANGED_TAG: json.dumps(listed)}


def tag_published_version(root: Path, commit: str | None, run_id: str | None) -> dict[str, Any]:
    """Add the publish commit and the orchestrator run id to the version promote registered.

    Reads the model and version from reports/promotion.json; an unregistered run (an experiment)
    or no commit leaves the registry alone. Returns what was tagged, for the task's XCom.
    """
    from pipelines.config import Paths, load_params

    paths = Paths(Path(root))
    if not paths.promotion.is_file():
        return {"tagged": None, "why": f"{paths.promotion} missing"}
    outcome = json.loads(paths.promotion.read_text(encoding="utf-8"))
    version = outcome.get("candidate_version")
    if version is None or not outcome.get("registered", True):
        return {"tagged": None, "why": "no version was registered by this run"}
    tags = {k: v for k, v in ((PUBLISH_COMMIT_TAG, commit), (RUN_ID_TAG, run_id)) if v}
    if not tags:
        return {"tagged": None, "why": "no commit and no run id to record"}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines import tracking

    tracking.configure(paths, load_params(paths.root)["dataset"]["name"])
    client = MlflowClient()
    try:
        for key, value in tags.items():
            client.set_model_version_tag(outcome["model_name"], str(version), key, value)
    except MlflowException as exc:   # the commit is made and pushed: report, do not fail publish
        log.warning("could not tag %s v%s: %s", outcome["model_name"], version, exc.message)
        return {"tagged": None, "why": f"MLflow: {exc.message.splitlines()[0] if exc.message else exc}"}
    log.info("tagged %s v%s with %s", outcome["model_name"], version, tags)
    return {"tagged": f"{outcome['model_name']}/{version}", **tags}
