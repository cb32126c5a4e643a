"""Split stage: deterministic, stratified, group-aware train/val/test assignment.

Groups (lesions, patients/slides) never straddle two splits, otherwise near-identical images of one
lesion land in train and test and the test score leaks. A split given by the distribution
(DermNet's train/test folders, `split_hint`) is respected; only its train part is cut into train/val.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipelines.config import Paths, load_params, project_root
from pipelines.manifest import read_manifest, write_manifest

SPLITS = ("train", "val", "test")


def _group_labels(frame: pd.DataFrame) -> pd.Series:
    """Majority label per group (groups are almost always single-label), for stratification."""
    return frame.groupby("group_id")["label"].agg(lambda s: s.value_counts().index[0])


def _allocate(groups: list[str], sizes: Mapping[str, int], targets: Mapping[str, float]) -> dict[str, str]:
    """Fill the held-out splits group by group to their target image counts; the rest train.

    Every held-out split gets at least one group when there are enough groups to keep one in train.
    """
    assignment: dict[str, str] = {}
    total = sum(sizes[g] for g in groups)
    remaining = list(groups)
    held_out = [s for s in targets if s != "train" and targets[s] > 0]
    for split in held_out:
        want = targets[split] * total
        taken = 0
        while remaining and (taken < want or taken == 0) and len(remaining) > len(held_out):
            if taken > 0 and taken + sizes[remaining[0]] / 2 > want:
                break
            group = remaining.pop(0)
            assignment[group] = split
            taken += sizes[group]
    for group in remaining:
        assignment[group] = "train"
    return assignment


def assign_splits(frame: pd.DataFrame, ratios: Mapping[str, float], seed: int) -> pd.Series:
    """Return the split of every manifest row (index-aligned)."""
    total_ratio = sum(ratios[s] for s in SPLITS)
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=frame.index, dtype=object)
    hint = frame.get("split_hint", pd.Series("", index=frame.index)).fillna("")
    given_test = hint == "test"
    split[given_test] = "test"
    pool = frame[~given_test]
    if given_test.any():  # the distribution fixed the test set: share the rest between train and val
        targets = {"train": ratios["train"], "val": ratios["val"]}
    else:
        targets = {s: ratios[s] for s in SPLITS}
    norm = sum(targets.values()) or total_ratio
    targets = {k: v / norm for k, v in targets.items()}
    sizes = pool.groupby("group_id").size().to_dict()
    labels = _group_labels(pool)
    for label in sorted(labels.unique()):
        groups = sorted(labels[labels == label].index)
        rng.shuffle(groups)
        for group, name in _allocate(groups, sizes, targets).items():
            split[pool.index[pool["group_id"] == group]] = name
    return split


def split_report(frame: pd.DataFrame) -> dict:
    """Class counts per split and an explicit count of groups found in more than one split."""
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    groups_per = frame.groupby("group_id")["split"].nunique()
    return {
        "sizes": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "groups": {s: int(frame.loc[frame["split"] == s, "group_id"].nunique()) for s in SPLITS},
        "overlapping_groups": int((groups_per > 1).sum()),
        "class_counts": {s: {k: int(v) for k, v in counts.loc[s].items()} if s in counts.index else {}
                         for s in SPLITS},
    }


def read_splits(paths: Paths) -> dict[str, pd.DataFrame]:
    """The split stage's output as one frame per split (row order is the manifest's)."""
    frame = read_manifest(paths.splits)
    return {s: frame[frame["split"] == s].reset_index(drop=True) for s in SPLITS}


def run(paths: Paths, params: Mapping) -> dict:
    frame = read_manifest(paths.manifest)
    frame["split"] = assign_splits(frame, params["split"], int(params["split"]["seed"]))
    report = split_report(frame)

    from pipelines.validate import validate_splits  # GE check of the same facts, in Data Docs terms

    outcome = validate_splits(frame[["image_id", "group_id", "label", "split"]])
    report["validation_success"] = bool(outcome.success)
    write_manifest(frame, paths.splits)
    paths.split_report.parent.mkdir(parents=True, exist_ok=True)
    paths.split_report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if report["overlapping_groups"] or not outcome.success:
        raise SystemExit("split validation failed:\n" + outcome.summary())
    return report


def main() -> None:
    root = project_root()
    report = run(Paths(root), load_params(root))
    print(f"split: {report['sizes']} (groups {report['groups']}), "
          f"overlapping groups: {report['overlapping_groups']}", file=sys.stderr)


if __name__ == "__main__":
    main()
