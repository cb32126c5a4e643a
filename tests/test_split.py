import numpy as np
import pandas as pd
import pytest

from pipelines.split import SPLITS, assign_splits, split_report

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def manifest(n_groups: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = ["a", "b", "c", "d"][g % 4] if g % 10 else "rare"
        for i in range(int(rng.integers(1, 4))):
            rows.append({"image_id": f"img{g}_{i}", "group_id": f"lesion{g}", "label": label,
                         "split_hint": ""})
    return pd.DataFrame(rows)


def test_no_group_on_two_sides_and_every_class_everywhere():
    frame = manifest()
    frame["split"] = assign_splits(frame, RATIOS, seed=1)
    report = split_report(frame)
    assert report["overlapping_groups"] == 0
    assert frame.groupby("group_id")["split"].nunique().max() == 1
    for split in SPLITS:
        assert set(frame.loc[frame["split"] == split, "label"]) == set(frame["label"])


def test_ratios_are_close_and_split_is_deterministic():
    frame = manifest(400)
    first = assign_splits(frame, RATIOS, seed=3)
    assert first.equals(assign_splits(frame, RATIOS, seed=3))
    share = first.value_counts(normalize=True)
    for split, ratio in RATIOS.items():
        assert share[split] == pytest.approx(ratio, abs=0.05)
    assert not first.equals(assign_splits(frame, RATIOS, seed=4))


def test_given_test_split_is_respected():
    frame = manifest(80)
    frame.loc[frame.index[::5], "split_hint"] = "test"
    frame["group_id"] = frame["image_id"]  # DermNet: one image per group
    split = assign_splits(frame, RATIOS, seed=0)
    assert (split[frame["split_hint"] == "test"] == "test").all()
    assert set(split[frame["split_hint"] != "test"]) == {"train", "val"}


def test_tiny_class_keeps_a_training_group():
    frame = pd.DataFrame({"image_id": ["x1", "x2", "y1", "y2", "y3", "y4", "y5"],
                          "group_id": ["gx1", "gx2", "gy1", "gy2", "gy3", "gy4", "gy5"],
                          "label": ["x", "x", "y", "y", "y", "y", "y"], "split_hint": ""})
    split = assign_splits(frame, RATIOS, seed=0)
    assert (split[frame["label"] == "x"] == "train").any()
    assert (split[frame["label"] == "y"] == "train").any()
