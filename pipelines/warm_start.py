"""Warm start: fine-tune the registry champion on today's training split as one more candidate.

An `architectures:` entry whose zoo entry has `builder: warm_start` (the shipped one is named
`warm_start`) is trained by the ordinary train stage, but from the model the registry alias in
`train.warm_start` (`champion`) points at instead of from random weights, with fewer epochs and a
lower learning rate (`train.warm_start_epochs_factor`, `train.warm_start_lr_factor`). It writes
models/<name>/ like every candidate and is evaluated, compared and gated like every candidate, so
it only replaces the champion when it wins the same gate as a from-scratch model would.

The champion's own train_info decides the architecture, image size, classes and metadata encoding
(a model is fed as it was trained). The candidate is skipped, with its reason in
models/<name>/skipped.json, when `train.warm_start` is null, when the registry has no such alias
(a first run: the from-scratch candidates make the first champion), when the champion's
classes are not today's labels (its output layer would mean something else), or when its
train_info lacks how it was fed.

DVC knows nothing about the registry: train@warm_start reruns when its file deps or params change
(a delivery -> new splits), which is exactly a retrain; a promotion alone does not rerun it, and a
`dvc repro` with it on depends on the registry's state, so set `train.warm_start: null` for a
retrain that is a function of the repository alone.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import mlflow
from mlflow import MlflowClient

from pipelines import registry, tracking
from pipelines.config import Paths

BUILDER = "warm_start"          # the zoo `builder` that marks a warm-start candidate
LINEAGE_FILE = "warm_start.json"
INPUT_KEYS = ("metadata_columns", "categorical_values", "metadata_features")


@dataclass(frozen=True)
class Skip:
    """The candidate does not train this time, and why (written to models/<name>/skipped.json)."""

    reason: str


@dataclass(frozen=True)
class Start:
    """What fine-tuning starts from: the champion's model and how it was fed, and the schedule."""

    model: keras.Model
    spec: dict[str, Any]             # the champion's zoo spec (its real builder and options)
    image_size: int
    inputs_info: dict[str, Any]      # metadata encoding, exactly the champion's
    train_params: dict[str, Any]     # `train:` with the fine-tuning epochs and learning rate
    lineage: dict[str, str]          # registered model, alias, version, run id started from


def is_candidate(spec: Mapping[str, Any]) -> bool:
    return spec.get("builder") == BUILDER


def fine_tune_params(tp: Mapping[str, Any]) -> dict[str, Any]:
    """`train:` with epochs and learning rate scaled by the warm-start factors (at least 1 epoch).

    No warm-up: it exists to protect freshly initialised weights, and a champion's are trained
    (a cosine schedule then decays from the scaled rate over the short run).
    """
    epochs = max(1, round(int(tp["epochs"]) * float(tp["warm_start_epochs_factor"])))
    return {**tp, "epochs": epochs, "warmup_epochs": 0,
            "learning_rate": float(tp["learning_rate"]) * float(tp["warm_start_lr_factor"])}


def resolve(arch: str, paths: Paths, params: Mapping[str, Any], classes: list[str]) -> Start | Skip | None:
    """None for an ordinary zoo architecture; else the champion to fine-tune, or why not."""
    if not is_candidate(params["zoo"][arch]):
        return None
    tp, dataset = params["train"], params["dataset"]["name"]
    alias = tp.get("warm_start")
    if not alias:
        return Skip("train.warm_start is off (null)")
    tracking.configure(paths, dataset)
    name = registry.model_name(params)
    version = registry.version_by_alias(MlflowClient(), name, str(alias))
    if version is None:
        return Skip(f"no '{alias}' version of {name} in the registry yet: nothing to warm-start from")
    model, info = registry.load_version(name, version)
    missing = [k for k in ("classes", "spec", "image_size", *INPUT_KEYS) if k not in info]
    if missing:
        return Skip(f"{name} v{version.version} ({alias}) has no {missing} in its train_info: "
                    "cannot feed it as it was trained")
    if list(info["classes"]) != list(classes):
        return Skip(f"{name} v{version.version} ({alias}) was trained on classes {info['classes']}, "
                    f"today's labels are {classes}")
    return Start(model=model, spec=dict(info["spec"]),
                 image_size=int(info["image_size"]), inputs_info={k: info[k] for k in INPUT_KEYS},
                 train_params=fine_tune_params(tp),
                 lineage={"model": name, "alias": str(alias), "version": str(version.version),
                          "run_id": str(version.run_id), "arch": str(info.get("arch", ""))})


def record(start: Start, paths: Paths, arch: str) -> None:
    """Inside the candidate's MLflow run: tag where it started from, keep that beside the model,
    and drop a skipped.json an earlier in-place run left (DVC clears outs itself; callers in
    process do not)."""
    mlflow.set_tags({f"medscan.warm_start.{k}": v for k, v in start.lineage.items()})
    paths.skipped(arch).unlink(missing_ok=True)
    (paths.model_dir(arch) / LINEAGE_FILE).write_text(json.dumps(start.lineage, indent=2) + "\n",
                                                      encoding="utf-8")


def write_skipped(paths: Paths, arch: str, reason: str) -> dict[str, Any]:
    """Replace models/<arch>/ by skipped.json, so no stale model of an earlier run is evaluated."""
    out = paths.model_dir(arch)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker = {"skipped": reason, "arch": arch}
    paths.skipped(arch).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker
