"""Training fingerprint: the sha256 (and group ids) of every image a model trained or early-stopped on.

Why: the promotion gate compares champion and challenger on test images neither has seen. Splits
can change between retrains, so "today's test split" alone does not guarantee that; each version
carries its own fingerprint (models/<arch>/train_fingerprint.json, logged to its MLflow run as
`medscan/train_fingerprint.json`) and the gate excludes any test image either fingerprint names.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.manifest import TRAIN, VAL

FORMAT = 1
ARTIFACT_DIR = "medscan"
ARTIFACT_NAME = "train_fingerprint.json"
ARTIFACT = f"{ARTIFACT_DIR}/{ARTIFACT_NAME}"
SEEN_SPLITS: tuple[str, ...] = (TRAIN, VAL)  # trained on, and early-stopped on


def training_fingerprint(frames: Mapping[str, pd.DataFrame],
                         splits: Sequence[str] = SEEN_SPLITS) -> dict[str, Any]:
    """Sorted, unique sha256 and group ids of the given splits' rows, with counts and a digest."""
    seen = pd.concat([frames[s] for s in splits], ignore_index=True)
    shas = sorted(set(seen["sha256"].astype(str)))
    groups = sorted(set(seen["group_id"].astype(str))) if "group_id" in seen else []
    return {
        "format": FORMAT,
        "splits": list(splits),
        "counts": {**{s: int(len(frames[s])) for s in splits}, "unique_images": len(shas),
                   "groups": len(groups)},
        "digest": hashlib.sha256("\n".join(shas).encode("ascii")).hexdigest(),
        "sha256": shas,
        "group_ids": groups,
    }


def write_fingerprint(path: Path, fingerprint: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=1) + "\n", encoding="utf-8")
    return path


def check_fingerprint(doc: Any, source: str) -> dict[str, Any]:
    """A malformed fingerprint is an error, never an empty set (that would exclude nothing)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("sha256"), list):
        raise ValueError(f"{source}: not a training fingerprint (no `sha256` list)")
    return dict(doc)


def read_fingerprint(path: Path) -> dict[str, Any]:
    return check_fingerprint(json.loads(Path(path).read_text(encoding="utf-8")), str(path))


def seen_mask(frame: pd.DataFrame, fingerprint: Mapping[str, Any] | None) -> np.ndarray:
    """Rows of `frame` whose image (sha256) or group (lesion/patient) the fingerprint covers.

    The group test catches a second image of a lesion the model trained on, which has another sha.
    """
    if not fingerprint:
        return np.zeros(len(frame), dtype=bool)
    mask = frame["sha256"].astype(str).isin(set(fingerprint.get("sha256") or ())).to_numpy()
    groups = fingerprint.get("group_ids") or ()
    if groups and "group_id" in frame:
        mask = mask | frame["group_id"].astype(str).isin(set(groups)).to_numpy()
    return mask
