"""The ingest stage: every candidate ends in the manifest or the quarantine, the image store equals
the manifest, and one bad input never disturbs the rest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from ingest_factories import (
    bomb_png,
    ham_row,
    image_bytes,
    noise,
    truncated,
    write,
    write_class_folders,
    write_ham,
)
from pipelines import image_cache
from pipelines import ingest as ingest_module
from pipelines.bounds import CaseBounds
from pipelines.config import Paths
from pipelines.ingest import IngestSummary, ingest
from pipelines.cases import CASES_COLUMNS, ensure_intake_dir
from pipelines.manifest import CORE_COLUMNS, read_labels, read_manifest, read_quarantine

PARAMS = {"store_max_side": 32, "workers": 1}
BOUNDS = CaseBounds(min_side=8, max_side=20_000, max_pixels=1_000_000)
PARASITIZED = "cell_images/Parasitized"


class Run:
    """One ingest run into a fresh project, with its outputs read back."""

    def __init__(self, summary: IngestSummary, paths: Paths) -> None:
        self.summary, self.paths = summary, paths
        self.manifest = read_manifest(paths.manifest)
        self.quarantine = read_quarantine(paths.quarantine)

    def reasons(self) -> dict[str, str]:
        return dict(zip(self.quarantine["source_path"], self.quarantine["reason"]))

    def stored(self) -> set[str]:
        return {p.name for p in self.paths.images.iterdir()}


def run(
    source: Path,
    project: Path,
    adapter: str = "malaria",
    intake_dir: Path | None = None,
    bounds: CaseBounds = BOUNDS,
    **params,
) -> Run:
    paths = Paths(project)
    return Run(ingest(adapter, source, paths, PARAMS | params, intake_dir, bounds), paths)


@pytest.fixture
def malaria(tmp_path) -> Path:
    """Four good images, two per class: the data set every bad input is added to."""
    write_class_folders(tmp_path / "src" / "cell_images", {"Parasitized": 2, "Uninfected": 2})
    return tmp_path / "src"


@pytest.fixture
def baseline(malaria, tmp_path) -> Run:
    return run(malaria, tmp_path / "baseline")


def assert_rest_untouched(result: Run, baseline: Run) -> None:
    """The four good images went through exactly as without the bad input."""
    cols = ["image_id", "path", "source_path", "sha256", "label", "group_id", "width", "height"]
    good = result.manifest[result.manifest["source_path"].isin(baseline.manifest["source_path"])]
    pd.testing.assert_frame_equal(good[cols].reset_index(drop=True), baseline.manifest[cols])
    assert not set(result.quarantine["source_path"]) & set(baseline.manifest["source_path"])


def bad_input_run(malaria: Path, tmp_path: Path, rel: str, data: bytes, **params) -> Run:
    write(malaria / rel, data)
    return run(malaria, tmp_path / "project", **params)


# ------------------------------------------------------------------ the good path


def test_manifest_columns_paths_and_image_store(baseline):
    m = baseline.manifest
    assert list(m.columns) == list(CORE_COLUMNS)
    assert len(m) == 4 and list(m["source_path"]) == sorted(m["source_path"])
    assert all(p == f"data/images/{s}.png" for p, s in zip(m["path"], m["sha256"]))
    assert baseline.stored() == {f"{s}.png" for s in m["sha256"]}
    assert set(m["source"]) == {"malaria"} and set(m["group_id"]) == {"C1P1ThinF"}
    assert read_labels(baseline.paths.labels) == ["Parasitized", "Uninfected"]
    assert baseline.quarantine.empty
    assert (baseline.summary.accepted, baseline.summary.quarantined, baseline.summary.candidates) == (4, 0, 4)


def test_sha256_is_of_the_original_bytes(baseline, malaria):
    row = baseline.manifest.iloc[0]
    assert row["sha256"] == hashlib.sha256((malaria / row["source_path"]).read_bytes()).hexdigest()


def test_ham_manifest_carries_metadata_but_never_dx_type(tmp_path):
    root = write_ham(tmp_path / "ham", [ham_row(1, "mel", age=""), ham_row(2, "nv", sex="female")])
    result = run(root, tmp_path / "project", adapter="ham10000")
    m = result.manifest
    assert list(m.columns) == [*CORE_COLUMNS, "age", "sex", "localization"]
    assert m["age"].dtype == "float64" and pd.isna(m["age"].iloc[0])
    assert list(m["sex"]) == ["male", "female"] and "dx_type" not in m.columns
    assert read_labels(result.paths.labels) == ["mel", "nv"]  # canonical order, present classes only


def test_labels_follow_the_adapter_order_not_discovery_order(tmp_path):
    write_class_folders(
        tmp_path / "src" / "train",
        {"Tinea Ringworm Candidiasis and other Fungal Infections": 1, "Acne and Rosacea Photos": 1},
        fmt="JPEG",
    )
    result = run(tmp_path / "src", tmp_path / "project", adapter="dermnet")
    assert read_labels(result.paths.labels) == [
        "Acne and Rosacea Photos",
        "Tinea Ringworm Candidiasis and other Fungal Infections",
    ]
    assert set(result.manifest["split_hint"]) == {"train"}


def test_stale_images_are_removed_so_the_store_equals_the_manifest(malaria, tmp_path):
    project = tmp_path / "project"
    write(project / "data" / "images" / ("0" * 64 + ".png"), image_bytes(50))
    write(project / "data" / "images" / ".tmp-left-by-a-crash.png", b"x")
    result = run(malaria, project)
    assert result.stored() == {f"{s}.png" for s in result.manifest["sha256"]}


def test_rerun_gives_identical_outputs(malaria, tmp_path):
    first = run(malaria, tmp_path / "project")
    second = run(malaria, tmp_path / "project")
    pd.testing.assert_frame_equal(first.manifest, second.manifest)
    assert first.stored() == second.stored()


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_worker_pool_gives_the_same_manifest_as_one_process(malaria, tmp_path, monkeypatch, start):
    if start == "spawn":  # what ingest uses once TensorFlow is loaded (after a malaria_tfds export)
        monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    else:  # other tests in this session may have imported TensorFlow
        monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert ingest_module._pool_context().get_start_method() == start
    write(malaria / PARASITIZED / "broken.png", truncated(image_bytes(40, size=(64, 48))))
    pooled = run(malaria, tmp_path / "pooled", workers=2)
    serial = run(malaria, tmp_path / "serial", workers=1)
    pd.testing.assert_frame_equal(pooled.manifest, serial.manifest)
    pd.testing.assert_frame_equal(pooled.quarantine, serial.quarantine)
    assert pooled.summary.workers == 2 and pooled.reasons() == {
        f"{PARASITIZED}/broken.png": "truncated_image"
    }


def test_summary_line_reports_counts_reasons_and_speed(malaria, tmp_path):
    write(malaria / PARASITIZED / "empty.png", b"")
    summary = run(malaria, tmp_path / "project").summary
    line = summary.line()
    assert "4 accepted" in line and "1 quarantined (empty_file=1)" in line and "images/s" in line
    assert summary.to_dict()["by_reason"] == {"empty_file": 1}


def test_images_converted_from_other_modes_are_accepted_as_rgb(malaria, tmp_path, baseline):
    write(malaria / PARASITIZED / "grey.png", image_bytes(60, mode="L"))
    write(malaria / PARASITIZED / "alpha.png", image_bytes(61, mode="RGBA"))
    write(malaria / PARASITIZED / "cmyk.jpg", image_bytes(62, "JPEG", mode="CMYK"))
    write(malaria / PARASITIZED / "deep.png", image_bytes(63, mode="I;16"))
    result = run(malaria, tmp_path / "project")
    assert result.quarantine.empty and len(result.manifest) == 8
    assert_rest_untouched(result, baseline)


# ------------------------------------------------------------------ one bad input at a time


def test_zero_byte_file(malaria, tmp_path, baseline):
    result = bad_input_run(malaria, tmp_path, f"{PARASITIZED}/zero.png", b"")
    assert result.reasons() == {f"{PARASITIZED}/zero.png": "empty_file"}
    assert_rest_untouched(result, baseline)


def test_truncated_jpeg(malaria, tmp_path, baseline):
    result = bad_input_run(
        malaria, tmp_path, f"{PARASITIZED}/cut.jpg", truncated(image_bytes(70, "JPEG", size=(64, 48)))
    )
    assert result.reasons() == {f"{PARASITIZED}/cut.jpg": "truncated_image"}
    assert_rest_untouched(result, baseline)


def test_truncated_png(malaria, tmp_path, baseline):
    result = bad_input_run(
        malaria, tmp_path, f"{PARASITIZED}/cut.png", truncated(image_bytes(71, size=(64, 48)))
    )
    assert result.reasons() == {f"{PARASITIZED}/cut.png": "truncated_image"}
    assert_rest_untouched(result, baseline)


def test_text_file_named_jpg(malaria, tmp_path, baseline):
    result = bad_input_run(malaria, tmp_path, f"{PARASITIZED}/readme.jpg", b"not a picture\n")
    assert result.reasons() == {f"{PARASITIZED}/readme.jpg": "not_an_image"}
    assert_rest_untouched(result, baseline)


def test_decompression_bomb_header(malaria, tmp_path, baseline):
    result = bad_input_run(malaria, tmp_path, f"{PARASITIZED}/bomb.png", bomb_png())
    assert result.reasons() == {f"{PARASITIZED}/bomb.png": "decompression_bomb"}
    assert_rest_untouched(result, baseline)


def test_image_over_the_max_pixels_param(malaria, tmp_path, baseline):
    result = bad_input_run(
        malaria,
        tmp_path,
        f"{PARASITIZED}/huge.png",
        image_bytes(72, size=(40, 30)),
        bounds=CaseBounds(max_pixels=1000),
    )
    assert result.reasons() == {f"{PARASITIZED}/huge.png": "decompression_bomb"}
    assert_rest_untouched(result, baseline)


def test_side_over_the_max_side_bound_is_too_large(malaria, tmp_path, baseline):
    result = bad_input_run(malaria, tmp_path, f"{PARASITIZED}/strip.png", bomb_png(30_000, 10))
    assert result.reasons() == {f"{PARASITIZED}/strip.png": "too_large"}
    assert result.quarantine["detail"].tolist() == ["30000x10 > bounds.max_side 20000"]
    assert_rest_untouched(result, baseline)


def test_too_small_image(malaria, tmp_path, baseline):
    result = bad_input_run(malaria, tmp_path, f"{PARASITIZED}/sliver.png", image_bytes(73, size=(30, 3)))
    assert result.reasons() == {f"{PARASITIZED}/sliver.png": "too_small"}
    assert_rest_untouched(result, baseline)


def test_unknown_label(malaria, tmp_path, baseline):
    result = bad_input_run(malaria, tmp_path, "cell_images/Gametocyte/g.png", image_bytes(74))
    assert result.reasons() == {"cell_images/Gametocyte/g.png": "unknown_label"}
    assert result.quarantine["label"].tolist() == ["Gametocyte"]
    assert_rest_untouched(result, baseline)


def test_same_bytes_twice_with_the_same_label_keeps_one(malaria, tmp_path, baseline):
    copy = f"{PARASITIZED}/zz-copy.png"
    kept = baseline.manifest["source_path"].iloc[0]
    result = bad_input_run(malaria, tmp_path, copy, (malaria / kept).read_bytes())
    assert result.reasons() == {copy: "duplicate"}
    assert kept in result.quarantine["detail"].iloc[0]
    assert_rest_untouched(result, baseline)


def test_same_bytes_twice_with_conflicting_labels_quarantines_all_copies(malaria, tmp_path, baseline):
    original = baseline.manifest["source_path"].iloc[0]  # a Parasitized image
    data = (malaria / original).read_bytes()
    result = bad_input_run(malaria, tmp_path, "cell_images/Uninfected/relabelled.png", data)
    assert result.reasons() == {
        original: "conflicting_duplicate",
        "cell_images/Uninfected/relabelled.png": "conflicting_duplicate",
    }
    assert len(result.manifest) == 3 and original not in set(result.manifest["source_path"])
    assert result.stored() == {f"{s}.png" for s in result.manifest["sha256"]}
    others = baseline.manifest[baseline.manifest["source_path"] != original]
    assert list(result.manifest["sha256"]) == list(others["sha256"])


def test_file_names_with_spaces_and_unicode(malaria, tmp_path, baseline):
    names = [f"{PARASITIZED}/cell with spaces.png", f"{PARASITIZED}/célula-细胞.png"]
    for n, name in enumerate(names):
        write(malaria / name, image_bytes(80 + n))
    result = run(malaria, tmp_path / "project")
    assert result.quarantine.empty and set(names) <= set(result.manifest["source_path"])
    assert_rest_untouched(result, baseline)


def test_missing_image_and_missing_metadata_reach_the_quarantine_file(tmp_path):
    root = write_ham(tmp_path / "ham", [ham_row(1), ham_row(2), ham_row(3)])
    (root / "images" / "ISIC_0000002.jpg").unlink()
    write(root / "images" / "ISIC_0000009.jpg", image_bytes(9, "JPEG"))
    result = run(root, tmp_path / "project", adapter="ham10000")
    assert sorted(result.quarantine["reason"]) == ["missing_image", "missing_metadata"]
    assert list(result.manifest["image_id"]) == ["ISIC_0000001", "ISIC_0000003"]


def test_malformed_rows_and_latin1_csv_reach_the_quarantine_file(tmp_path):
    root = write_ham(
        tmp_path / "ham",
        [ham_row(1, lesion="HAM_Zoë"), ("HAM_X", "ISIC_0000002"), ham_row(3)],
        encoding="latin-1",
    )
    result = run(root, tmp_path / "project", adapter="ham10000")
    assert sorted(result.quarantine["reason"]) == ["malformed_row", "missing_metadata", "wrong_encoding"]
    assert list(result.manifest["group_id"]) == ["HAM_Zoë", "HAM_0000003"]


def test_metadata_outside_the_bounds_is_quarantined_row_by_row(tmp_path):
    rows = [ham_row(1), ham_row(2, age="500"), ham_row(3, age="-3"), ham_row(4, age="old"),
            ham_row(5, sex="x"), ham_row(6, localization="elbow"), ham_row(7, age=""), ham_row(8, sex="")]
    result = run(write_ham(tmp_path / "ham", rows), tmp_path / "project", adapter="ham10000")
    q = result.quarantine.set_index("source_path")
    assert q["reason"].to_dict() == {
        "images/ISIC_0000002.jpg": "age_out_of_range",
        "images/ISIC_0000003.jpg": "age_out_of_range",
        "images/ISIC_0000004.jpg": "invalid_metadata",
        "images/ISIC_0000005.jpg": "invalid_metadata",
        "images/ISIC_0000006.jpg": "invalid_metadata",
    }
    assert q.loc["images/ISIC_0000002.jpg", "detail"] == "age 500 outside bounds.age_range [0, 120]"
    assert "'x' not in" in q.loc["images/ISIC_0000005.jpg", "detail"]
    assert list(result.manifest["image_id"]) == ["ISIC_0000001", "ISIC_0000007", "ISIC_0000008"]
    assert result.manifest["sex"].tolist() == ["male", "male", "unknown"]  # empty is unknown, kept
    assert result.summary.by_reason == {"age_out_of_range": 2, "invalid_metadata": 3}
    assert result.stored() == {f"{s}.png" for s in result.manifest["sha256"]}


def test_size_bounds_in_the_ingest_section_are_refused(malaria, tmp_path):
    with pytest.raises(ValueError, match="moved to the `bounds:` section"):
        run(malaria, tmp_path / "project", min_side=8)


def test_nothing_accepted_still_writes_empty_typed_outputs(tmp_path):
    write(tmp_path / "src" / "cell_images" / "Parasitized" / "a.png", b"")
    result = run(tmp_path / "src", tmp_path / "project")
    assert result.manifest.empty and list(result.manifest.columns) == list(CORE_COLUMNS)
    assert read_labels(result.paths.labels) == [] and result.stored() == set()


# ------------------------------------------------------------------ intake cases join the data set


def test_intake_cases_are_merged_with_their_metadata(tmp_path):
    root = write_ham(tmp_path / "ham", [ham_row(1)])
    intake_dir = ensure_intake_dir(tmp_path / "project" / "data" / "intake")
    data = image_bytes(90, "JPEG")
    sha = hashlib.sha256(data).hexdigest()
    write(intake_dir / "images" / f"{sha}.jpg", data)
    case = dict(
        zip(
            CASES_COLUMNS,
            [f"images/{sha}.jpg", "bcc", "HAM_NEW", "70", "female", "face", sha, "2025-01-01T00:00:00Z"],
        )
    )
    with open(intake_dir / "cases.csv", "a", encoding="utf-8") as fh:
        fh.write(",".join(case.values()) + "\n")
    result = run(root, tmp_path / "project", adapter="ham10000", intake_dir=intake_dir)
    new = result.manifest.set_index("source_path").loc[f"intake/images/{sha}.jpg"]
    assert (new["label"], new["group_id"], new["age"], new["sex"], new["localization"]) == (
        "bcc",
        "HAM_NEW",
        70.0,
        "female",
        "face",
    )
    assert new["sha256"] == sha and read_labels(result.paths.labels) == ["bcc", "nv"]


def test_header_only_intake_adds_nothing(malaria, tmp_path, baseline):
    intake_dir = ensure_intake_dir(tmp_path / "project" / "data" / "intake")
    result = run(malaria, tmp_path / "project", intake_dir=intake_dir)
    assert_rest_untouched(result, baseline)
    assert len(result.manifest) == 4 and result.quarantine.empty


# ------------------------------------------------------------------ the DVC entry point


def test_main_reads_params_and_writes_under_the_project_root(malaria, tmp_path, monkeypatch):
    project = tmp_path / "project"
    params = {"dataset": {"name": "malaria", "root": str(malaria)}, "ingest": PARAMS, "bounds": {"min_side": 8}}
    write(project / "params.yaml", yaml.safe_dump(params).encode())
    monkeypatch.setenv("MEDSCAN_ROOT", str(project))
    assert ingest_module.main() == 0
    assert len(read_manifest(project / "data" / "manifest.parquet")) == 4
    assert json.loads((project / "data" / "labels.json").read_text())["classes"] == [
        "Parasitized",
        "Uninfected",
    ]
    assert (
        (project / "data" / "quarantine.csv").read_text().startswith("source_path,reason,detail,sha256,label")
    )


# ------------------------------------------------------------------ incremental: the ingest cache


def snapshot(result: Run) -> dict[str, object]:
    """Everything ingest writes, byte for byte (the cache itself excluded)."""
    data = result.paths.data
    return {
        "manifest": result.manifest,
        "quarantine": result.paths.quarantine.read_bytes(),
        "labels": result.paths.labels.read_bytes(),
        "images": {p.name: p.read_bytes() for p in sorted(result.paths.images.iterdir())},
        "files": sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if "intake" not in p.parts),
    }


def assert_same_outputs(a: Run, b: Run) -> None:
    sa, sb = snapshot(a), snapshot(b)
    pd.testing.assert_frame_equal(sa.pop("manifest"), sb.pop("manifest"))
    assert sa == sb


@pytest.fixture
def decodes(monkeypatch) -> list[object]:
    """Every image the ingest cache sent to the decoder (workers=1 runs in this process)."""
    calls: list[object] = []
    real = image_cache.try_normalize

    def spy(src, *args, **kwargs):
        calls.append(src)
        return real(src, *args, **kwargs)

    monkeypatch.setattr(image_cache, "try_normalize", spy)
    return calls


def delivery_source(root: Path, n_old: int, n_new: int) -> Path:
    """A HAM source of n_old cases, then n_new more (call again with a larger n_new to deliver)."""
    rows = [ham_row(i, "mel" if i % 3 else "nv") for i in range(1, n_old + n_new + 1)]
    rows.append(ham_row(900, age="500"))  # quarantined from its metadata: never decoded
    root = write_ham(root, rows)
    write(root / "images" / "ISIC_0000901.jpg", truncated(image_bytes(901, "JPEG", size=(64, 48))))
    with open(root / "HAM10000_metadata.csv", "a", encoding="utf-8") as fh:
        fh.write(",".join(ham_row(901)) + "\n")
    return root


def test_incremental_run_decodes_only_new_images_and_equals_a_full_run(tmp_path, decodes):
    old = delivery_source(tmp_path / "src", n_old=8, n_new=0)
    project = tmp_path / "incremental"
    first = run(old, project, adapter="ham10000")
    assert (first.summary.decoded, first.summary.reused) == (9, 0)  # 8 good + the truncated one
    decodes.clear()
    grown = delivery_source(tmp_path / "src", n_old=8, n_new=3)  # the same 8 files, 3 new cases
    incremental = run(grown, project, adapter="ham10000")
    assert (incremental.summary.decoded, incremental.summary.reused) == (4, 8)  # 3 new + truncated
    assert len(decodes) == 4
    full = run(grown, tmp_path / "full", adapter="ham10000")
    assert (full.summary.decoded, full.summary.reused) == (12, 0)
    assert_same_outputs(incremental, full)
    assert incremental.reasons() == {
        "images/ISIC_0000900.jpg": "age_out_of_range",
        "images/ISIC_0000901.jpg": "truncated_image",
    }


def test_incremental_intake_cases_equal_a_full_run(tmp_path):
    source = delivery_source(tmp_path / "src", n_old=4, n_new=0)
    project = tmp_path / "incremental"
    intake_dir = ensure_intake_dir(project / "data" / "intake")
    run(source, project, adapter="ham10000", intake_dir=intake_dir)
    data = image_bytes(95, "JPEG")
    sha = hashlib.sha256(data).hexdigest()
    write(intake_dir / "images" / f"{sha}.jpg", data)
    with open(intake_dir / "cases.csv", "a", encoding="utf-8") as fh:
        fh.write(f"images/{sha}.jpg,bcc,HAM_NEW,70,female,face,{sha},2025-01-01T00:00:00Z\n")
    incremental = run(source, project, adapter="ham10000", intake_dir=intake_dir)
    assert (incremental.summary.decoded, incremental.summary.reused) == (2, 4)
    shutil.copytree(intake_dir, tmp_path / "full" / "data" / "intake")
    full = run(source, tmp_path / "full", adapter="ham10000", intake_dir=tmp_path / "full" / "data" / "intake")
    assert_same_outputs(incremental, full)


def test_pool_with_a_warm_cache_equals_a_cold_serial_run(malaria, tmp_path):
    run(malaria, tmp_path / "warm", workers=2)
    write_class_folders(malaria / "cell_images", {"Uninfected": 1}, seed0=500, name="C2P2ThinF_new_{n}")
    warm = run(malaria, tmp_path / "warm", workers=2)
    assert (warm.summary.decoded, warm.summary.reused) == (1, 4)
    assert_same_outputs(warm, run(malaria, tmp_path / "cold", workers=1))


def test_tighter_bounds_requarantine_cached_images_exactly_like_a_full_run(malaria, tmp_path):
    write(malaria / PARASITIZED / "wide.png", image_bytes(77, size=(60, 10)))
    run(malaria, tmp_path / "warm")
    tight = CaseBounds(max_side=40, max_pixels=1_000_000)
    warm = run(malaria, tmp_path / "warm", bounds=tight)
    assert warm.reasons() == {f"{PARASITIZED}/wide.png": "too_large"}
    assert_same_outputs(warm, run(malaria, tmp_path / "cold", bounds=tight))


def test_other_normalisation_params_never_reuse_copies(malaria, tmp_path, decodes):
    run(malaria, tmp_path / "warm", store_max_side=32)
    decodes.clear()
    resized = run(malaria, tmp_path / "warm", store_max_side=8)
    assert (resized.summary.decoded, len(decodes)) == (4, 4)
    assert_same_outputs(resized, run(malaria, tmp_path / "cold", store_max_side=8))
    back = run(malaria, tmp_path / "warm", store_max_side=32)
    assert back.summary.reused == 4  # each normalisation keeps its own cache folder


def test_a_deleted_or_half_written_cache_entry_is_decoded_again(malaria, tmp_path):
    first = run(malaria, tmp_path / "project")
    cache_dirs = list(first.paths.ingest_cache.iterdir())
    assert len(cache_dirs) == 1
    victim = first.manifest["sha256"].iloc[0]
    (cache_dirs[0] / f"{victim}.png").unlink()
    with open(cache_dirs[0] / "index.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"sha256": "cut sho')
    again = run(malaria, tmp_path / "project")
    assert (again.summary.decoded, again.summary.reused) == (1, 3)
    assert_same_outputs(again, first)


def test_dvc_style_deleted_outputs_are_rebuilt_from_the_cache(malaria, tmp_path, decodes):
    first = run(malaria, tmp_path / "project")
    before = snapshot(first)
    shutil.rmtree(first.paths.images)  # what `dvc repro` does to a stage's outs before running it
    for path in (first.paths.manifest, first.paths.quarantine, first.paths.labels):
        path.unlink()
    decodes.clear()
    again = run(malaria, tmp_path / "project")
    assert decodes == [] and again.summary.reused == 4
    after = snapshot(again)
    pd.testing.assert_frame_equal(before.pop("manifest"), after.pop("manifest"))
    assert before == after


# ------------------------------------------------------------------ hostile cases.csv, ignored list, byte-identity


def test_cases_csv_paths_must_stay_inside_the_intake_folder_and_shas_must_match(tmp_path):
    root = write_ham(tmp_path / "ham", [ham_row(1)])
    intake_dir = ensure_intake_dir(tmp_path / "project" / "data" / "intake")
    outside = write(tmp_path / "outside.jpg", image_bytes(91, "JPEG"))
    good, liar = image_bytes(92, "JPEG"), image_bytes(93, "JPEG")
    good_sha, liar_sha = hashlib.sha256(good).hexdigest(), hashlib.sha256(liar).hexdigest()
    write(intake_dir / "images" / f"{good_sha}.jpg", good)
    write(intake_dir / "images" / f"{liar_sha}.jpg", liar)
    (intake_dir / "images" / "link.jpg").symlink_to(outside)
    rows = [
        ("/etc/passwd", "deadbeef"),
        ("../../../outside.jpg", "deadbeef"),
        ("images/link.jpg", "deadbeef"),
        (f"images/{liar_sha}.jpg", "deadbeef"),  # a row claiming sha deadbeef
        (f"images/{good_sha}.jpg", good_sha),
    ]
    with open(intake_dir / "cases.csv", "a", encoding="utf-8") as fh:
        for file, claimed in rows:
            fh.write(f"{file},mel,HAM_X,50,male,back,{claimed},2025-01-01T00:00:00Z\n")
    result = run(root, tmp_path / "project", adapter="ham10000", intake_dir=intake_dir)
    assert result.reasons() == {
        "intake//etc/passwd": "path_outside_root",
        "intake/../../../outside.jpg": "path_outside_root",
        "intake/images/link.jpg": "path_outside_root",
        f"intake/images/{liar_sha}.jpg": "sha256_mismatch",
    }
    detail = result.quarantine.set_index("reason").loc["sha256_mismatch", "detail"]
    assert detail == f"the source says sha256 'deadbeef', the file's is {liar_sha}"
    assert set(result.manifest["sha256"]) == {hashlib.sha256(image_bytes(0, "JPEG")).hexdigest(), good_sha}


def test_ignored_list_counts_unread_entries_and_extra_frames(malaria, tmp_path):
    frames = [Image.fromarray(noise((16, 12), seed)) for seed in (60, 61, 62)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    write(malaria / "cell_images" / "Parasitized" / "anim.gif", buf.getvalue())
    os.mkfifo(malaria / "cell_images" / "Uninfected" / "pipe.png")
    write(malaria / "README.md", b"notes")
    result = run(malaria, tmp_path / "project")
    table = pd.read_csv(result.paths.ignored, dtype=str, keep_default_na=False)
    assert table.values.tolist() == [
        ["README.md", "stray_file", "file not read: only cell_images/ is read"],
        ["cell_images/Parasitized/anim.gif", "extra_frames",
         "2 frame(s) after the first not used (a case is frame 0 of 3)"],
        ["cell_images/Uninfected/pipe.png", "special_file", "a FIFO: never opened"],
    ]
    assert result.summary.ignored == 3 and "3 ignored (extra_frames=1, special_file=1, stray_file=1)" in result.summary.line()
    assert len(result.manifest) == 5  # the GIF's first frame is a case


def test_the_same_input_twice_gives_byte_identical_outputs(malaria, tmp_path):
    write(malaria / "cell_images" / "Parasitized" / "text.png", b"this is not an image at all")
    write(malaria / "cell_images" / "Uninfected" / "cut.png", truncated(image_bytes(70, size=(64, 64))))
    write(malaria / "stray.txt", b"x")
    project = tmp_path / "project"
    paths = Paths(project)
    outputs = (paths.manifest, paths.quarantine, paths.ignored, paths.labels)

    def snapshot() -> list[bytes]:
        return [p.read_bytes() for p in outputs]

    first = run(malaria, project)
    cold = snapshot()
    assert "0x" not in first.quarantine["detail"].str.cat() and "BytesIO" not in first.quarantine["detail"].str.cat()
    run(malaria, project)  # warm cache
    assert snapshot() == cold
    shutil.rmtree(paths.ingest_cache)
    run(malaria, project)  # cold again, and in a fresh process's worker pool
    assert snapshot() == cold
    run(malaria, tmp_path / "other", workers=2)
    assert [(tmp_path / "other" / p.relative_to(project)).read_bytes() for p in outputs] == cold


def test_cache_materialises_by_hard_link_and_twice_leaves_no_temporary(tmp_path):
    """The cached PNGs are linked into data/images (no bytes written again); a second pass onto
    the same inodes leaves the folder as it was, with no `.tmp-` file behind."""
    from pipelines.image_cache import ImageCache
    from pipelines.images import ImageLimits, stored_name

    cache = ImageCache(tmp_path / "cache", ImageLimits(store_max_side=64))
    cache.dir.mkdir(parents=True)
    shas = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    for i, sha in enumerate(shas):
        (cache.dir / stored_name(sha)).write_bytes(b"png" + bytes([i]))
    dest = tmp_path / "images"
    for _ in range(2):
        cache.materialise(shas, dest)
        assert sorted(p.name for p in dest.iterdir()) == sorted(stored_name(s) for s in shas)
    for i, sha in enumerate(shas):
        assert (dest / stored_name(sha)).read_bytes() == b"png" + bytes([i])
        assert os.path.samefile(dest / stored_name(sha), cache.dir / stored_name(sha))
