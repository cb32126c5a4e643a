"""The validate stage: every expectation passes on a clean manifest and fails on its own defect.

The tests build small manifests themselves and pass class sets and value sets in, so they need
neither the data set adapters nor ingest output. They do use the real suite files in expectations/.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from browser import offline_browser, open_offline
from pipelines import checks, datadocs
from pipelines import validate as v
from pipelines.bounds import CaseBounds
from pipelines.manifest import CORE_COLUMNS, QUARANTINE_COLUMNS, write_labels, write_manifest

CLASSES = ("mel", "nv")
CATEGORICAL = {"sex": ("male", "female"), "localization": ("back", "face", "scalp")}
PARAMS = {"min_images_per_class": 10, "max_quarantine_rate": 0.05}
PER_CLASS = 12
REPO_SUITES = Path(__file__).resolve().parent.parent / "expectations"
DATASETS = ("ham10000", "malaria", "malaria_tfds", "dermnet")


def make_manifest(classes: tuple[str, ...] = CLASSES, per_class: int = PER_CLASS,
                  metadata: bool = True) -> pd.DataFrame:
    """A manifest in the ingest's shape: two images per lesion group, valid everything."""
    rows = []
    for label in classes:
        for i in range(per_class):
            sha = hashlib.sha256(f"{label}-{i}".encode()).hexdigest()
            row = {
                "image_id": f"{label}_{i:03d}", "path": f"data/images/{sha}.png",
                "source_path": f"images/{label}_{i:03d}.jpg", "sha256": sha, "label": label,
                "group_id": f"{label}_lesion_{i // 2}", "width": 600, "height": 450,
                "source": "ham10000", "split_hint": "",
            }
            if metadata:
                row |= {"age": float(20 + i), "sex": ("male", "female")[i % 2],
                        "localization": ("back", "face", "scalp")[i % 3]}
            rows.append(row)
    return pd.DataFrame(rows)


def failed_titles(outcome: checks.ValidationOutcome) -> set[str]:
    return {r["title"] for r in outcome.results if not r["success"]}


def run_ham(df: pd.DataFrame, **kwargs) -> checks.ValidationOutcome:
    kwargs.setdefault("labels", list(CLASSES))
    kwargs.setdefault("quarantine", quarantine_frame([]))
    classes = kwargs.pop("classes", CLASSES)
    return checks.validate_manifest(df, "ham10000", classes, CATEGORICAL, PARAMS, **kwargs)


# --------------------------------------------------------------------------------------------
# Manifest suite


def test_clean_manifest_passes_every_expectation() -> None:
    outcome = run_ham(make_manifest())
    assert outcome.success, outcome.summary()
    assert outcome.evaluated == len(checks.load_suite("ham10000")["expectations"])
    assert outcome.failed == 0
    assert outcome.rows == len(CLASSES) * PER_CLASS
    assert {r["batch"] for r in outcome.results} == {"manifest", "class_counts", "quarantine_rate", "labels"}
    assert outcome.summary().startswith("validation ham10000: passed (0 of")


def test_missing_metadata_is_allowed() -> None:
    df = make_manifest()
    df.loc[0, ["age", "sex", "localization"]] = [None, None, None]
    df.loc[1, ["sex", "localization"]] = ["unknown", "unknown"]  # HAM's own marker for missing
    outcome = run_ham(df)
    assert outcome.success, outcome.summary()


def _set(column: str, value: object, row: int = 0) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[row, column] = value
        return df
    return mutate


def _duplicate_sha(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[1, "sha256"] = df.loc[0, "sha256"]
    return df


def _thin_class(df: pd.DataFrame) -> pd.DataFrame:
    """Leave 'nv' with 3 images, below validate.min_images_per_class = 10."""
    return df.drop(df.index[df["label"] == "nv"][3:]).reset_index(drop=True)


BAD_FRAMES = {
    "unknown label": (_set("label", "foo"), "label in class set", "'foo' (image_id=mel_000)"),
    "null group_id": (_set("group_id", None), "group_id not null", "None (image_id=mel_000)"),
    "null image_id": (_set("image_id", None), "image_id not null", "1 unexpected"),
    "wide image": (_set("width", 99999), "width within bounds [min_side, max_side]", "99999"),
    "tiny image": (_set("height", 4), "height within bounds [min_side, max_side]", "4 (image_id"),
    "duplicate sha256": (_duplicate_sha, "sha256 unique", "2 unexpected"),
    "sha256 not hex": (_set("sha256", "not-a-hash"), "sha256 is 64 lowercase hex digits", "'not-a-hash'"),
    "duplicate image_id": (_set("image_id", "mel_001"), "image_id unique", "mel_001"),
    "path outside store": (_set("path", "/etc/passwd"), "path is data/images/<sha256>.png", "'/etc/passwd'"),
    "age 150": (_set("age", 150.0), "age within bounds.age_range (nulls allowed)", "150.0 (image_id=mel_000)"),
    "bad sex": (_set("sex", "robot"), "sex in the adapter's value set (nulls allowed)", "'robot'"),
    "bad localization": (_set("localization", "moon"),
                         "localization in the adapter's value set (nulls allowed)", "'moon'"),
    "bad split hint": (_set("split_hint", "val"), "split_hint is empty, train or test", "'val'"),
    "class below minimum": (_thin_class, "at least validate.min_images_per_class images per class",
                            "3 (label=nv)"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_each_expectation_fails_on_its_defect(case: str) -> None:
    mutate, title, example = BAD_FRAMES[case]
    outcome = run_ham(mutate(make_manifest()))
    assert not outcome.success
    assert failed_titles(outcome) == {title}, outcome.summary()
    line = next(x for x in outcome.summary().splitlines() if x.startswith(f"FAIL {title}:"))
    assert example in line, line


def test_summary_is_one_readable_line_per_failure() -> None:
    df = make_manifest()
    for row in (0, PER_CLASS, PER_CLASS + 1):  # one 'mel' and two 'nv': both stay at >= 10 images
        df.loc[row, "label"] = "foo"
    outcome = run_ham(df)
    lines = outcome.summary().splitlines()
    assert lines[0] == (f"validation ham10000: FAILED (1 of {outcome.evaluated} expectations failed, "
                        f"{len(df)} rows)")
    assert lines[1].startswith("FAIL label in class set: 3 unexpected (e.g. 'foo' (image_id=mel_000)")
    assert lines[2] == "quarantined 0 of 24 offered cases (0.00%: none); see data/quarantine.csv"
    assert len(lines) == 3
    record = next(r for r in outcome.results if not r["success"])
    assert record["expectation"] == "expect_column_values_to_be_in_set"
    assert record["column"] == "label" and record["unexpected_count"] == 3
    assert record["examples"][0] == {"label": "foo", "image_id": "mel_000"}


def test_class_missing_entirely_fails_count_and_labels() -> None:
    outcome = run_ham(make_manifest(), classes=(*CLASSES, "bcc"))
    assert failed_titles(outcome) == {"at least validate.min_images_per_class images per class",
                                      "labels.json lists exactly the expected classes"}
    summary = outcome.summary()
    assert "0 (label=bcc)" in summary
    assert "missing ['bcc']" in summary


def test_labels_json_with_stray_or_repeated_class_fails() -> None:
    outcome = run_ham(make_manifest(), labels=["mel", "nv", "nv", "zzz"])
    assert failed_titles(outcome) == {"labels.json lists exactly the expected classes",
                                      "labels.json lists each class once"}


def test_without_labels_the_labels_batch_is_left_out() -> None:
    outcome = run_ham(make_manifest(), labels=None)
    assert outcome.success
    assert "labels" not in {r["batch"] for r in outcome.results}


def test_missing_column_is_reported_not_raised() -> None:
    outcome = run_ham(make_manifest().drop(columns=["group_id"]))
    assert not outcome.success
    assert "manifest has every core column" in failed_titles(outcome)
    summary = outcome.summary()
    assert "FAIL manifest has every core column: missing ['group_id']" in summary
    assert "ERROR group_id not null:" in summary


def test_empty_manifest_fails() -> None:
    outcome = run_ham(make_manifest().iloc[0:0])
    assert "manifest is not empty" in failed_titles(outcome)


def test_row_level_bounds_come_from_the_one_bounds_definition() -> None:
    df = make_manifest()  # every image is 600x450
    outcome = checks.validate_manifest(df, "ham10000", CLASSES, CATEGORICAL, PARAMS, labels=list(CLASSES),
                                  bounds=CaseBounds(max_side=500))
    assert failed_titles(outcome) == {"width within bounds [min_side, max_side]"}


def test_bounds_in_the_validate_section_are_refused() -> None:
    with pytest.raises(ValueError, match="moved to the `bounds:` section"):
        checks.manifest_parameters(CLASSES, {}, {**PARAMS, "age_range": [0, 120]})


def quarantine_frame(reasons: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"source_path": f"images/q{n}.jpg", "reason": r, "detail": "", "sha256": "",
                          "label": "mel"} for n, r in enumerate(reasons)], columns=list(QUARANTINE_COLUMNS))


def test_one_quarantined_case_passes_and_is_reported() -> None:
    outcome = run_ham(make_manifest(), quarantine=quarantine_frame(["age_out_of_range"]))
    assert outcome.success, outcome.summary()
    assert outcome.quarantine == {"offered": 25, "quarantined": 1, "rate": 0.04,
                                  "reasons": "age_out_of_range=1"}
    assert "quarantined 1 of 25 offered cases (4.00%: age_out_of_range=1)" in outcome.summary()
    assert outcome.to_metrics()["quarantine_rate"] == 0.04


def test_quarantine_rate_over_the_maximum_fails_the_data_set() -> None:
    reasons = ["too_large", "age_out_of_range", "corrupt_image"]  # 3 of 27 = 11% > 5%
    outcome = run_ham(make_manifest(), quarantine=quarantine_frame(reasons))
    assert failed_titles(outcome) == {"quarantined share of offered cases at most validate.max_quarantine_rate"}
    assert "reasons=age_out_of_range=1, corrupt_image=1, too_large=1" in outcome.summary()


def test_exact_duplicates_and_encoding_notes_lose_nothing_and_do_not_count() -> None:
    outcome = run_ham(make_manifest(), quarantine=quarantine_frame(["duplicate"] * 5 + ["wrong_encoding"]))
    assert outcome.success and outcome.quarantine["quarantined"] == 0


# --------------------------------------------------------------------------------------------
# Suite files


@pytest.mark.parametrize("name", DATASETS)
def test_suite_files_are_parameterised_and_valid(name: str) -> None:
    suite = checks.load_suite(name)
    assert suite["name"] == name
    needed = checks.suite_parameter_names(suite)
    categorical = CATEGORICAL if name == "ham10000" else {}
    assert needed <= set(checks.manifest_parameters(CLASSES, categorical, PARAMS))
    assert {"classes", "min_side", "max_side", "min_images_per_class", "max_quarantine_rate"} <= needed
    # No class list is repeated in a suite: the label expectations take $PARAMETER classes.
    label_sets = [e["kwargs"]["value_set"] for e in suite["expectations"]
                  if e["kwargs"].get("column") == "label" and "value_set" in e["kwargs"]]
    assert label_sets and all(s in ({"$PARAMETER": "classes"}, {"$PARAMETER": "expected_classes"})
                              for s in label_sets)
    # The non-HAM suites validate a metadata-free manifest from end to end.
    if name != "ham10000":
        outcome = checks.validate_manifest(make_manifest(metadata=False), name, CLASSES, {}, PARAMS,
                                      labels=list(CLASSES))
        assert outcome.success, outcome.summary()


def test_missing_parameter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="sex_values"):
        checks.validate_manifest(make_manifest(), "ham10000", CLASSES, {"localization": ("back",)}, PARAMS)


def test_invalid_expectation_in_a_suite_file_raises(tmp_path: Path) -> None:
    suite = {"name": "broken", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {}},  # no column: GE would skip it
    ]}
    (tmp_path / "broken.json").write_text(json.dumps(suite), encoding="utf-8")
    with pytest.raises(ValueError, match="expectation 1"):
        checks.validate_manifest(make_manifest(), "broken", CLASSES, {}, PARAMS, suite_dir=tmp_path)


def test_unknown_data_set_names_the_missing_suite(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="isic"):
        checks.load_suite("isic", tmp_path)


# --------------------------------------------------------------------------------------------
# Splits


def make_splits() -> pd.DataFrame:
    df = make_manifest()[["image_id", "group_id", "label"]]
    lesion = df["group_id"].str.rsplit("_", n=1).str[-1].astype(int)
    df["split"] = lesion.map(lambda i: "test" if i == 0 else "val" if i == 1 else "train")
    return df


def test_clean_splits_pass() -> None:
    outcome = checks.validate_splits(make_splits())
    assert outcome.success, outcome.summary()
    assert {r["batch"] for r in outcome.results} == {"splits", "split_groups", "split_classes"}


def test_group_on_two_sides_of_a_split_is_caught() -> None:
    df = make_splits()
    df.loc[df.index[df["group_id"] == "mel_lesion_0"][0], "split"] = "train"  # the other image stays in test
    outcome = checks.validate_splits(df)
    assert failed_titles(outcome) == {"each group_id in exactly one split"}
    assert "1 unexpected (e.g. 2 (group_id=mel_lesion_0))" in outcome.summary()


def test_unknown_split_name_is_caught() -> None:
    df = make_splits()
    df.loc[0, "split"] = "holdout"
    assert "split in {train, val, test}" in failed_titles(checks.validate_splits(df))


def test_class_missing_from_train_is_caught() -> None:
    df = make_splits()
    df.loc[df["label"] == "nv", "split"] = "test"
    outcome = checks.validate_splits(df)
    assert failed_titles(outcome) == {"every class present in train"}
    assert "0 (label=nv)" in outcome.summary()
    # A known class with no rows at all also fails when the class set is given.
    outcome = checks.validate_splits(make_splits(), classes=(*CLASSES, "bcc"))
    assert "0 (label=bcc)" in outcome.summary()


# --------------------------------------------------------------------------------------------
# Data Docs and the stage entry point


def test_data_docs_are_written(tmp_path: Path) -> None:
    docs = tmp_path / "data_docs"
    (docs / "validations").mkdir(parents=True)
    (docs / "validations" / "stale.html").write_text("old run", encoding="utf-8")
    df = make_manifest()
    df.loc[0, "label"] = "foo"
    outcome = run_ham(df, docs_dir=docs)
    assert outcome.docs_index == (docs / "index.html").resolve()
    assert outcome.docs_index.is_file()
    assert "Data Docs" in outcome.summary()
    assert not (docs / "validations" / "stale.html").exists()
    pages = {p.relative_to(docs).parts[:3] for p in docs.glob("validations/**/*.html")}
    assert pages == {("validations", "ham10000", b) for b in ("manifest", "class_counts", "quarantine_rate", "labels")}
    manifest_page = next(docs.glob("validations/ham10000/manifest/**/*.html")).read_text(encoding="utf-8")
    assert "foo" in manifest_page  # the unexpected value is shown in the GE page


def test_data_docs_have_no_remote_assets(tmp_path: Path) -> None:
    docs = tmp_path / "data_docs"
    run_ham(make_manifest(), docs_dir=docs)
    pages = sorted(docs.rglob("*.html"))
    assert pages
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert datadocs.remote_assets(html) == [], page
        assert "newsletter" not in html.lower() and "amazonaws" not in html
    assert (docs / datadocs.SITE_VENDOR / "jquery" / "3.7.1" / "jquery.min.js").is_file()


def test_make_offline_names_an_unknown_remote_asset(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(
        '<html><head><script src="https://cdn.example.org/new-lib.js"></script></head></html>', encoding="utf-8")
    with pytest.raises(RuntimeError, match="index.html: https://cdn.example.org/new-lib.js"):
        datadocs.make_offline(tmp_path)


def test_offline_page_rewrites_relative_to_each_page(tmp_path: Path) -> None:
    url = "https://code.jquery.com/jquery-3.7.1.min.js"
    html = f'<script src="{url}" integrity="sha384-x" crossorigin="anonymous"></script>'
    deep = tmp_path / "validations" / "a" / "b.html"
    out = datadocs.offline_page(html, deep, tmp_path)
    assert out == '<script src="../../static/vendor/jquery/3.7.1/jquery.min.js"></script>'


def test_data_docs_render_in_a_browser_with_the_network_blocked(tmp_path: Path) -> None:
    """Index and a validation page: nothing requested from outside, styled, tables filled by JS."""
    docs = tmp_path / "data_docs"
    df = make_manifest()
    df.loc[0, "label"] = "foo"
    run_ham(df, docs_dir=docs)
    result_page = next(docs.glob("validations/ham10000/manifest/**/*.html"))
    with offline_browser() as browser:
        for html, min_rows in ((docs / "index.html", 4), (result_page, 1)):
            page = open_offline(browser, html)
            assert page.blocked == [], html
            assert page.errors == [], html
            assert [u for u in page.failed if u.startswith("file:")] == [], html  # a vendored file missing
            # Bootstrap applied (a plain page has a block navbar) and Font Awesome's font loaded.
            assert page.eval("() => getComputedStyle(document.querySelector('.navbar')).display") == "flex"
            assert page.eval("() => document.fonts.check('900 16px \"Font Awesome 6 Free\"')")
            rows = page.eval("() => Math.max(...[...document.querySelectorAll('table')]"
                             ".map(t => t.querySelectorAll('tbody tr').length))")
            assert rows >= min_rows, html
            text = page.eval("() => document.body.innerText")
            assert "No matching records" not in text
        assert "ham10000.manifest" in open_offline(browser, docs / "index.html").eval("() => document.body.innerText")


def _project(tmp_path: Path, df: pd.DataFrame) -> Path:
    """A project root holding just what the validate stage reads."""
    params = {"dataset": {"name": "ham10000", "root": "data/demo/ham10000"}, "validate": PARAMS}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    shutil.copytree(REPO_SUITES, tmp_path / "expectations")
    write_manifest(df, tmp_path / "data" / "manifest.parquet")
    write_labels(list(CLASSES), tmp_path / "data" / "labels.json")
    return tmp_path


def test_main_passes_and_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _project(tmp_path, make_manifest())
    outcome = v.main(root, CLASSES, CATEGORICAL)
    assert outcome.success
    metrics = json.loads((root / "reports" / "validation.json").read_text(encoding="utf-8"))
    assert metrics["success"] is True and metrics["failed"] == 0
    assert metrics["evaluated"] == len(metrics["expectations"]) > 0
    assert metrics["rows"] == len(CLASSES) * PER_CLASS
    assert (root / "reports" / "data_docs" / "index.html").is_file()
    assert "passed" in capsys.readouterr().out


def test_main_exits_nonzero_with_summary_on_failure(tmp_path: Path) -> None:
    df = make_manifest()
    df.loc[0, "age"] = 150.0
    root = _project(tmp_path, df)
    with pytest.raises(SystemExit) as exc:
        v.main(root, CLASSES, CATEGORICAL)
    assert exc.value.code not in (0, None)  # a message code exits with status 1
    assert "FAIL age within bounds.age_range" in str(exc.value.code)  # the safety net past ingest
    metrics = json.loads((root / "reports" / "validation.json").read_text(encoding="utf-8"))
    assert metrics["success"] is False and metrics["failed"] == 1
    failed = [r for r in metrics["expectations"] if not r["success"]]
    assert failed[0]["column"] == "age" and failed[0]["examples"] == [{"age": 150.0, "image_id": "mel_000"}]
    assert (root / "reports" / "data_docs" / "index.html").is_file()


def test_core_columns_parameter_tracks_the_manifest_contract() -> None:
    assert checks.manifest_parameters(CLASSES, {}, PARAMS)["core_columns"] == list(CORE_COLUMNS)
    assert checks.manifest_parameters(CLASSES, CATEGORICAL, PARAMS)["sex_values"] == ["male", "female", "unknown"]


def test_subset_copies_validate_when_all_classes_are_not_required():
    """A DermNet-like extract: 2 of 3 known classes present."""
    known = ("a", "b", "c")
    rows = [{"image_id": f"i{n}", "path": f"data/images/{n:064x}.png", "source_path": f"x/{n}.jpg",
             "sha256": f"{n:064x}", "label": "a" if n % 2 else "b", "group_id": f"g{n}",
             "width": 64, "height": 64, "source": "dermnet", "split_hint": "train"} for n in range(40)]
    frame = pd.DataFrame(rows)
    params = {"min_images_per_class": 5, "max_quarantine_rate": 0.05}
    strict = checks.validate_manifest(frame, "dermnet", known, {}, params, labels=["a", "b"])
    assert not strict.success and "c" in strict.summary()
    lenient = checks.validate_manifest(frame, "dermnet", known, {}, {**params, "require_all_classes": False},
                                labels=["a", "b"])
    assert lenient.success, lenient.summary()
    frame.loc[0, "label"] = "zzz"  # an unknown label still fails
    bad = checks.validate_manifest(frame, "dermnet", known, {}, {**params, "require_all_classes": False},
                            labels=["a", "b", "zzz"])
    assert not bad.success


# --------------------------------------------------------------------------------------------
# One bad case never blocks a retrain: intake -> ingest -> validate


def test_impossible_age_and_oversize_cases_are_quarantined_and_validation_passes(tmp_path: Path) -> None:
    from ingest_factories import bomb_png, ham_row, image_bytes, write, write_ham, write_labels_csv
    from pipelines.ingest import ingest
    from pipelines.intake import intake
    from pipelines.config import Paths
    from pipelines.manifest import read_quarantine

    root = tmp_path / "project"
    paths = Paths(root)
    params = {"dataset": {"name": "ham10000", "root": str(tmp_path / "ham")},
              "bounds": {"max_side": 20000, "age_range": [0, 120]},
              "validate": {"min_images_per_class": 2, "require_all_classes": False, "max_quarantine_rate": 0.05}}
    (root).mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    shutil.copytree(REPO_SUITES, root / "expectations")
    bounds = CaseBounds.from_params(params)
    # The source: 40 good cases, one with age 500 and one whose image has a 30,000 px side.
    rows = [ham_row(i, ("mel", "nv")[i % 2]) for i in range(1, 41)] + [ham_row(41, age="500"), ham_row(42)]
    source = write_ham(tmp_path / "ham", rows)
    write(source / "images" / "ISIC_0000042.jpg", bomb_png(30_000, 10))
    # A delivery through intake: two good cases, one impossible age, one oversize image.
    drop = tmp_path / "drop"
    for name, data in {"g1.jpg": image_bytes(101, "JPEG"), "g2.jpg": image_bytes(102, "JPEG"),
                       "old.jpg": image_bytes(103, "JPEG"), "wide.png": bomb_png(30_000, 10)}.items():
        write(drop / name, data)
    write_labels_csv(drop, [("g1.jpg", "mel", "HAM_N1", "50", "male", "back"),
                            ("g2.jpg", "nv", "HAM_N2", "", "", ""),
                            ("old.jpg", "mel", "HAM_N3", "500", "female", "face"),
                            ("wide.png", "nv", "HAM_N4", "40", "male", "back")])
    taken = intake(drop, paths.intake, "ham10000", paths.manifest, bounds=bounds)
    assert {e.source_path: str(e.reason) for e in taken.quarantined} == {
        "old.jpg": "age_out_of_range", "wide.png": "too_large"}
    assert len(taken.accepted) == 2

    summary = ingest("ham10000", source, paths, {"store_max_side": 32, "workers": 1},
                     paths.intake, bounds)
    quarantine = read_quarantine(paths.quarantine)
    assert dict(zip(quarantine["source_path"], quarantine["reason"])) == {
        "images/ISIC_0000041.jpg": "age_out_of_range", "images/ISIC_0000042.jpg": "too_large"}
    assert set(quarantine["detail"]) == {"age 500 outside bounds.age_range [0, 120]",
                                         "30000x10 > bounds.max_side 20000"}
    assert summary.by_reason == {"age_out_of_range": 1, "too_large": 1} and summary.accepted == 42
    manifest = pd.read_parquet(paths.manifest)
    expected = {f"images/ISIC_{i:07d}.jpg" for i in range(1, 41)} | {
        f"intake/{c['file']}" for c in taken.accepted}
    assert set(manifest["source_path"]) == expected

    outcome = v.run(paths, params)
    assert outcome.success, outcome.summary()
    assert outcome.quarantine["quarantined"] == 2 and outcome.quarantine["offered"] == 44
    metrics = json.loads(paths.validation.read_text(encoding="utf-8"))
    assert metrics["success"] is True and metrics["quarantined"] == 2
