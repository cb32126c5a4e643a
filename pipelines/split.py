"""Split stage: a stable, group-keyed train/val/test assignment.

A group's split is a pure function of its group id and `split.salt`: sha256(salt, group id) gives a
point in [0, 1) that is compared with the cumulative ratios. Nothing else enters, so adding or
removing cases never moves an existing group (a re-dealt split would put the champion's training
images into today's test split and bias the gate), and a new image of a known lesion or patient joins
its group's split. Re-dealing is a deliberate act: a new salt.

Groups (lesions, patients/slides) never straddle two splits, otherwise near-identical images of one
lesion land in train and test and the test score leaks. A test split given by the distribution
(DermNet's test folder, `split_hint == "test"`) is respected: those groups are test, and the other
groups share train/val at the renormalised ratios.

Hashing stratifies only in expectation, so the report states per class how far each split's share is
from its target; a class that ends up with no training group fails the stage with a clear message
(the cure is more cases of that class, or another salt).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipelines import dvc_metrics
from pipelines.config import Paths
from pipelines.checks import validate_splits
from pipelines.cli import run_stage
from pipelines.errors import ConfigError, DataError
from pipelines.manifest import SPLITS, TEST, TRAIN, VAL, read_manifest, write_manifest

log = logging.getLogger(__name__)

GIVEN_TEST = TEST  # the split_hint value that pins a group to the test split


def group_points(group_ids: Iterable[str], salt: str) -> np.ndarray:
    """A uniform point in [0, 1) per group id: the top 53 bits of sha256(salt NUL group id)."""
    return np.array([(int.from_bytes(hashlib.sha256(f"{salt}\0{g}".encode()).digest()[:8], "big") >> 11)
                     / float(1 << 53) for g in group_ids], dtype=np.float64)


def _given_test(frame: pd.DataFrame) -> pd.Series:
    """Rows whose group the distribution put in its test split (one test-hinted image pins the group)."""
    hint = frame["split_hint"].fillna("") if "split_hint" in frame else pd.Series("", index=frame.index)
    test_groups = frame.loc[hint.astype(str) == GIVEN_TEST, "group_id"].unique()
    return frame["group_id"].isin(test_groups)


def dealt_targets(ratios: Mapping[str, Any], given_test: bool) -> dict[str, float]:
    """The ratios the hash deals by: all three, or train/val renormalised when test is given."""
    names = (TRAIN, VAL) if given_test else SPLITS
    values = {s: float(ratios[s]) for s in names}
    if any(v < 0 for v in values.values()) or sum(values.values()) <= 0:
        raise ConfigError(f"split ratios must be >= 0 with a positive sum, got {values}")
    total = sum(values.values())
    return {s: v / total for s, v in values.items()}


def assign_splits(frame: pd.DataFrame, ratios: Mapping[str, Any], salt: str) -> pd.Series:
    """Return the split of every manifest row (index-aligned): a function of its group id and salt."""
    given = _given_test(frame)
    targets = dealt_targets(ratios, bool(given.any()))
    groups = pd.Index(frame.loc[~given, "group_id"].astype(str).unique())
    points = group_points(groups, str(salt))
    edges = np.cumsum(list(targets.values()))[:-1]  # the last split takes everything above the edges
    names = np.array(list(targets))[np.searchsorted(edges, points, side="right")]
    split = pd.Series(GIVEN_TEST, index=frame.index, dtype=object)
    split[~given] = frame.loc[~given, "group_id"].astype(str).map(dict(zip(groups, names)))
    return split


def _shares(labels: pd.Series, split: pd.Series, targets: Mapping[str, float]) -> dict[str, Any]:
    """Each split's share of these rows, its signed distance from the target, and the worst distance."""
    n = len(labels)
    share = {s: float((split == s).sum()) / n if n else 0.0 for s in targets}
    deviation = {s: round(share[s] - targets[s], 4) for s in targets}
    return {"images": n, "share": {s: round(v, 4) for s, v in share.items()}, "deviation": deviation,
            "max_abs_deviation": max((abs(v) for v in deviation.values()), default=0.0)}


def split_report(frame: pd.DataFrame, ratios: Mapping[str, Any], salt: str) -> dict[str, Any]:
    """Sizes, class counts per split, group overlap, and how far each class is from the target ratios.

    The deviation is measured on the images the hash dealt: a given test split is not a ratio target,
    so then it covers train/val among the non-test images, at the renormalised ratios.
    """
    given = _given_test(frame)
    targets = dealt_targets(ratios, bool(given.any()))
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    groups_per = frame.groupby("group_id")["split"].nunique()
    dealt = frame[~given]
    per_class = {str(label): _shares(rows["label"], rows["split"], targets)
                 for label, rows in dealt.groupby("label", sort=True)}
    return {
        "salt": str(salt),
        "given_test_split": bool(given.any()),
        "sizes": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "groups": {s: int(frame.loc[frame["split"] == s, "group_id"].nunique()) for s in SPLITS},
        "overlapping_groups": int((groups_per > 1).sum()),
        "class_counts": {s: {k: int(v) for k, v in counts.loc[s].items()} if s in counts.index else {}
                         for s in SPLITS},
        "stratification": {
            "target": {s: round(v, 4) for s, v in targets.items()},
            "overall": _shares(dealt["label"], dealt["split"], targets),
            "per_class": per_class,
            "max_abs_deviation_any_class": max((c["max_abs_deviation"] for c in per_class.values()),
                                               default=0.0),
        },
    }


def split_problems(frame: pd.DataFrame, ratios: Mapping[str, Any], salt: str) -> list[str]:
    """What makes this split unusable, one sentence each: a class with no training image, or a
    split with a positive target and no image at all. No fallback moves a group, since that would
    break the stability the hash gives: the fix is more cases, or a deliberate re-deal."""
    problems = []
    train_labels = set(frame.loc[frame["split"] == TRAIN, "label"])
    for label, rows in frame.groupby("label", sort=True):
        if label not in train_labels:
            where = rows.groupby("split")["group_id"].nunique().to_dict()
            problems.append(f"class {label!r} has no training image: its {rows['group_id'].nunique()} "
                            f"group(s) hashed to {where} under split.salt={salt!r}; add cases of this "
                            "class, or re-deal every group on purpose with another split.salt")
    targets = dealt_targets(ratios, bool(_given_test(frame).any()))
    for name, target in targets.items():
        if target > 0 and not (frame["split"] == name).any():
            problems.append(f"split {name!r} is empty: {frame['group_id'].nunique()} group(s) are too few "
                            f"for target {target:.2f} under split.salt={salt!r}; add cases or change the salt")
    return problems


def run(paths: Paths, params: Mapping) -> dict:
    ratios, salt = params["split"], str(params["split"]["salt"])
    frame = read_manifest(paths.manifest)
    frame["split"] = assign_splits(frame, ratios, salt)
    report = split_report(frame, ratios, salt)
    report["problems"] = split_problems(frame, ratios, salt)
    outcome = validate_splits(frame[["image_id", "group_id", "label", "split"]])
    report["validation_success"] = bool(outcome.success)
    write_manifest(frame, paths.splits)
    paths.split_report.parent.mkdir(parents=True, exist_ok=True)
    paths.split_report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    dvc_metrics.write(paths.stage_metrics("split"), dvc_metrics.split(report))
    if report["overlapping_groups"] or report["problems"] or not outcome.success:
        raise DataError("split validation failed:\n" + "".join(f"FAIL {p}\n" for p in report["problems"])
                         + outcome.summary())
    return report


def main() -> None:
    report = run_stage("split", run)
    strat = report["stratification"]
    log.info("split (salt %r): %s (groups %s), overlapping groups: %s, largest class deviation from %s: %.3f",
             report["salt"], report["sizes"], report["groups"], report["overlapping_groups"],
             strat["target"], strat["max_abs_deviation_any_class"])


if __name__ == "__main__":
    main()
