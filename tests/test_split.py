from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Paths
from pipelines.errors import DataError
from pipelines.manifest import SPLITS, read_manifest, write_manifest
from pipelines.split import assign_splits, group_points, run, split_problems, split_report

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}
SALT = "v1"
# HAM10000's class mix (images per class), for HAM-sized frames.
HAM_MIX = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}


def manifest(n_groups: int = 120, seed: int = 0, prefix: str = "lesion") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = ["a", "b", "c", "d"][g % 4] if g % 10 else "rare"
        for i in range(int(rng.integers(1, 4))):
            rows.append({"image_id": f"{prefix}{g}_img{i}", "group_id": f"{prefix}{g}", "label": label,
                         "split_hint": ""})
    return pd.DataFrame(rows)


def ham_like(n_groups: int, seed: int, prefix: str = "HAM_") -> pd.DataFrame:
    """Lesions with HAM's class mix and 1-6 images each (most lesions have one or two)."""
    rng = np.random.default_rng(seed)
    classes, weights = list(HAM_MIX), np.array(list(HAM_MIX.values()), dtype=float)
    labels = rng.choice(classes, size=n_groups, p=weights / weights.sum())
    sizes = rng.choice([1, 2, 3, 4, 6], size=n_groups, p=[0.6, 0.25, 0.1, 0.03, 0.02])
    rows = [{"image_id": f"{prefix}{g:07d}_{i}", "group_id": f"{prefix}{g:07d}", "label": labels[g],
             "split_hint": ""} for g in range(n_groups) for i in range(sizes[g])]
    return pd.DataFrame(rows)


def dealt(frame: pd.DataFrame, salt: str = SALT) -> pd.Series:
    """image_id -> split."""
    return pd.Series(assign_splits(frame, RATIOS, salt).to_numpy(), index=frame["image_id"])


def moved(before: pd.Series, after: pd.Series) -> int:
    common = before.index.intersection(after.index)
    return int((before[common] != after[common]).sum())


def test_no_group_on_two_sides_and_every_class_trains():
    frame = manifest()
    frame["split"] = assign_splits(frame, RATIOS, SALT)
    assert split_report(frame, RATIOS, SALT)["overlapping_groups"] == 0
    assert frame.groupby("group_id")["split"].nunique().max() == 1
    assert set(frame.loc[frame["split"] == "train", "label"]) == set(frame["label"])
    assert split_problems(frame, RATIOS, SALT) == []


def test_split_is_a_function_of_group_id_and_salt_only():
    frame = manifest(400)
    first = assign_splits(frame, RATIOS, SALT)
    assert first.equals(assign_splits(frame, RATIOS, SALT))
    shuffled = frame.sample(frac=1.0, random_state=3)   # row order and neighbours do not matter
    assert assign_splits(shuffled, RATIOS, SALT).equals(first[shuffled.index])
    alone = frame[frame["group_id"] == "lesion7"]
    assert (assign_splits(alone, RATIOS, SALT) == first[alone.index]).all()
    points = group_points([f"g{i}" for i in range(20000)], SALT)
    assert points.min() >= 0 and points.max() < 1
    assert np.histogram(points, bins=10, range=(0, 1))[0].min() > 1800   # uniform: about 2000 a bin


def test_ratios_are_close_on_many_groups():
    frame = manifest(2000)
    share = assign_splits(frame, RATIOS, SALT).value_counts(normalize=True)
    for split, ratio in RATIOS.items():
        assert share[split] == pytest.approx(ratio, abs=0.03)


def test_adding_and_removing_cases_moves_no_existing_image():
    frame = manifest(300)
    before = dealt(frame)
    # New lesions, new images of lesions already known, and a few cases withdrawn.
    new_groups = manifest(30, seed=5, prefix="new")
    known = frame.drop_duplicates("group_id").sample(25, random_state=1)
    new_images = known.assign(image_id=known["image_id"] + "_followup")
    grown = pd.concat([frame.drop(frame.index[::37]), new_groups, new_images], ignore_index=True)
    after = dealt(grown)
    assert moved(before, after) == 0
    group_split = before.groupby(frame.set_index("image_id")["group_id"]).first()
    assert (after[new_images["image_id"]].to_numpy() == group_split[known["group_id"]].to_numpy()).all()


def test_ham_sized_frame_with_one_percent_new_lesions_moves_nothing():
    frame = ham_like(6000, seed=0)
    before = dealt(frame)
    new_groups = ham_like(60, seed=1, prefix="NEW_")
    known = frame.drop_duplicates("group_id").sample(60, random_state=2)
    grown = pd.concat([frame, new_groups, known.assign(image_id=known["image_id"] + "_new")],
                      ignore_index=True)
    after = dealt(grown)
    assert moved(before, after) == 0
    assert len(after) == len(before) + len(new_groups) + 60
    grown["split"] = after.to_numpy()
    strat = split_report(grown, RATIOS, SALT)["stratification"]
    assert strat["overall"]["max_abs_deviation"] < 0.02   # about 8,000 images: the ratios hold overall
    assert set(strat["per_class"]) == set(HAM_MIX)


def test_a_new_salt_re_deals_on_purpose():
    frame = manifest(2000)
    fraction = moved(dealt(frame, "v1"), dealt(frame, "v2")) / len(frame)
    # Independent deals agree with probability 0.7^2 + 2 * 0.15^2 = 0.535.
    assert fraction == pytest.approx(1 - 0.535, abs=0.05)


def test_given_test_split_is_respected_and_stable():
    frame = manifest(80)
    frame.loc[frame.index[::5], "split_hint"] = "test"
    frame["split_hint"] = frame["split_hint"].replace("", "train")
    frame["group_id"] = frame["image_id"]  # DermNet: one image per group
    split = assign_splits(frame, RATIOS, SALT)
    assert (split[frame["split_hint"] == "test"] == "test").all()
    assert set(split[frame["split_hint"] != "test"]) == {"train", "val"}
    report = split_report(frame.assign(split=split), RATIOS, SALT)
    assert report["given_test_split"] is True
    assert report["stratification"]["target"] == {"train": pytest.approx(0.8235, abs=1e-4),
                                                  "val": pytest.approx(0.1765, abs=1e-4)}
    more = manifest(10, seed=9, prefix="extra").assign(split_hint="test")
    more["group_id"] = more["image_id"]
    grown = pd.concat([frame, more], ignore_index=True)
    assert moved(dealt(frame), dealt(grown)) == 0


def test_one_test_hinted_image_pins_its_whole_group():
    frame = pd.DataFrame({"image_id": ["a1", "a2", "b1"], "group_id": ["a", "a", "b"],
                          "label": ["x", "x", "x"], "split_hint": ["test", "train", "train"]})
    split = assign_splits(frame, RATIOS, SALT)
    assert list(split[:2]) == ["test", "test"] and split[2] in {"train", "val"}


def test_report_states_class_counts_and_distance_from_target():
    frame = manifest(400)
    frame["split"] = assign_splits(frame, RATIOS, SALT)
    report = split_report(frame, RATIOS, SALT)
    assert report["salt"] == SALT and report["given_test_split"] is False
    assert sum(report["sizes"].values()) == len(frame)
    rare = frame[frame["label"] == "rare"]
    assert report["class_counts"]["test"]["rare"] == int((rare["split"] == "test").sum())
    strat = report["stratification"]
    assert strat["target"] == RATIOS
    row = strat["per_class"]["rare"]
    assert row["images"] == len(rare)
    for s in SPLITS:
        share = (rare["split"] == s).mean()
        assert row["share"][s] == pytest.approx(share, abs=1e-4)
        assert row["deviation"][s] == pytest.approx(share - RATIOS[s], abs=1e-4)
    assert row["max_abs_deviation"] == max(abs(v) for v in row["deviation"].values())
    assert strat["max_abs_deviation_any_class"] == max(c["max_abs_deviation"]
                                                       for c in strat["per_class"].values())


def groups_landing(where: str, count: int, prefix: str) -> list[str]:
    """The first `count` ids prefix0, prefix1, ... whose hash puts them in `where` (train or held out)."""
    ids = [f"{prefix}{i}" for i in range(500)]
    held_out = group_points(ids, SALT) >= RATIOS["train"]
    return [g for g, h in zip(ids, held_out) if h == (where == "held_out")][:count]


def tiny_frame() -> pd.DataFrame:
    """Class x: two lesions that both hash out of train. Class y: five lesions, two in train."""
    xs = groups_landing("held_out", 2, "x")
    ys = groups_landing("train", 2, "y") + groups_landing("held_out", 3, "y")
    groups = xs + ys
    return pd.DataFrame({"image_id": [f"{g}_img" for g in groups], "group_id": groups,
                         "label": ["x"] * 2 + ["y"] * 5, "split_hint": ""})


def test_a_class_without_a_training_group_is_a_named_problem():
    frame = tiny_frame()
    frame["split"] = assign_splits(frame, RATIOS, SALT)
    assert not (frame.loc[frame["label"] == "x", "split"] == "train").any()   # no silent fallback
    problems = split_problems(frame, RATIOS, SALT)
    assert len([p for p in problems if p.startswith("class 'x' has no training image")]) == 1
    assert "split.salt='v1'" in problems[0] and not any("'y'" in p for p in problems)


def test_an_empty_held_out_split_is_a_named_problem():
    groups = groups_landing("train", 3, "g")
    frame = pd.DataFrame({"image_id": groups, "group_id": groups, "label": "x", "split_hint": ""})
    frame["split"] = assign_splits(frame, RATIOS, SALT)
    problems = split_problems(frame, RATIOS, SALT)
    assert [p.split(":")[0] for p in problems] == ["split 'val' is empty", "split 'test' is empty"]


def stage_project(tmp_path, frame: pd.DataFrame) -> Paths:
    paths = Paths(tmp_path)
    write_manifest(frame, paths.manifest)
    return paths


def test_stage_writes_splits_and_report(tmp_path):
    paths = stage_project(tmp_path, manifest(120))
    report = run(paths, {"split": {**RATIOS, "salt": SALT}})
    saved = read_manifest(paths.splits)
    assert list(saved["split"]) == list(assign_splits(manifest(120), RATIOS, SALT))
    assert json.loads(paths.split_report.read_text()) == report
    assert report["validation_success"] and report["problems"] == []


def test_stage_fails_clearly_when_a_class_cannot_train(tmp_path):
    paths = stage_project(tmp_path, tiny_frame())
    with pytest.raises(DataError, match="FAIL class 'x' has no training image"):
        run(paths, {"split": {**RATIOS, "salt": SALT}})
    report = json.loads(paths.split_report.read_text())   # written anyway, for the user to read
    assert report["validation_success"] is False and report["problems"]
