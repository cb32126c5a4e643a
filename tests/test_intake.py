"""Intake of new labelled cases from a drop folder or an S3 prefix (moto), and its CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import unicodedata
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from ingest_factories import bomb_png, image_bytes, truncated, write, write_labels_csv
from pipelines import intake as intake_module
from pipelines.bounds import CaseBounds
from pipelines.intake import CASES_COLUMNS, IntakeSettings, ensure_intake_dir, intake, parse_s3_uri, s3_client
from pipelines.manifest import write_manifest

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
STAMP = "20250301T120000Z"
BUCKET = "medscan-drop"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cases(intake_dir: Path) -> pd.DataFrame:
    return pd.read_csv(intake_dir / "cases.csv", dtype=str, keep_default_na=False)


def archive(drop: Path) -> Path:
    return drop.parent / "drop.processed"


def reasons(result) -> dict[str, str]:
    return {e.source_path: str(e.reason) for e in result.quarantined}


@pytest.fixture
def intake_dir(tmp_path) -> Path:
    return tmp_path / "project" / "data" / "intake"


def make_drop(drop: Path, files: dict[str, bytes], rows: list[tuple[str, ...]]) -> Path:
    """A finished delivery: its files were last modified an hour ago (past any settle window)."""
    for name, data in files.items():
        write(drop / name, data)
    write_labels_csv(drop, rows)
    settled = time.time() - 3600
    for path in drop.rglob("*"):
        os.utime(path, (settled, settled))
    return drop


def ham_drop(
    tmp_path: Path, extra_files: dict[str, bytes] | None = None, extra_rows: list | None = None
) -> Path:
    """Two good HAM cases plus whatever a test adds."""
    files = {"a.jpg": image_bytes(1, "JPEG"), "b.png": image_bytes(2)} | (extra_files or {})
    rows = [("a.jpg", "mel", "HAM_1", "60", "male", "back"), ("b.png", "NV", "", "", "", "")] + (
        extra_rows or []
    )
    return make_drop(tmp_path / "drop", files, rows)


def assert_good_two_accepted(result, intake_dir: Path) -> None:
    """The two good cases went through whatever else the drop held."""
    assert [c["label"] for c in result.accepted] == ["mel", "nv"]
    assert list(cases(intake_dir)["label"]) == ["mel", "nv"]


# ------------------------------------------------------------------ the intake folder


def test_ensure_intake_dir_creates_a_header_only_cases_file(tmp_path):
    path = ensure_intake_dir(tmp_path / "intake")
    assert (path / "cases.csv").read_text().strip() == ",".join(CASES_COLUMNS)
    assert (path / "images").is_dir()
    ensure_intake_dir(path)  # idempotent: never truncates
    assert (path / "cases.csv").read_text().strip() == ",".join(CASES_COLUMNS)


# ------------------------------------------------------------------ drop folder


def test_drop_folder_cases_are_accepted_copied_and_moved(tmp_path, intake_dir):
    drop = ham_drop(tmp_path)
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    table = cases(intake_dir)
    a_sha = sha((archive(drop) / STAMP / "a.jpg").read_bytes())
    assert list(table.columns) == list(CASES_COLUMNS)
    assert table.iloc[0].to_dict() == {
        "file": f"images/{a_sha}.jpg",
        "label": "mel",
        "group_id": "HAM_1",
        "age": "60.0",
        "sex": "male",
        "localization": "back",
        "sha256": a_sha,
        "received_at": "2025-03-01T12:00:00Z",
    }
    b = table.iloc[1]
    assert (b["file"], b["label"], b["group_id"], b["age"], b["sex"]) == (
        f"images/{b['sha256']}.png",
        "nv",
        "b",
        "",
        "unknown",
    )
    assert (intake_dir / table.iloc[0]["file"]).read_bytes() == (
        archive(drop) / STAMP / "a.jpg"
    ).read_bytes()
    assert list(drop.iterdir()) == []  # the archive is beside the drop, never inside it
    assert sorted(p.name for p in (archive(drop) / STAMP).iterdir()) == ["a.jpg", "b.png", "labels.csv"]
    assert result.to_summary()["accepted"] == 2 and result.quarantined == []


def test_rerun_of_the_same_bytes_accepts_nothing_twice(tmp_path, intake_dir):
    intake(ham_drop(tmp_path), intake_dir, "ham10000", now=NOW)
    again = intake(ham_drop(tmp_path), intake_dir, "ham10000", now=NOW)
    assert again.accepted == [] and set(reasons(again).values()) == {"already_accepted"}
    assert len(cases(intake_dir)) == 2
    assert (archive(tmp_path / "drop") / f"{STAMP}-1" / "labels.csv").is_file()


def test_bytes_already_in_the_manifest_are_rejected(tmp_path, intake_dir):
    known = image_bytes(1, "JPEG")
    manifest = tmp_path / "project" / "data" / "manifest.parquet"
    write_manifest(pd.DataFrame({"sha256": [sha(known)], "label": ["mel"]}), manifest)
    result = intake(ham_drop(tmp_path), intake_dir, "ham10000", manifest, now=NOW)
    assert reasons(result) == {"a.jpg": "already_accepted"}
    assert "manifest" in result.quarantined[0].detail
    assert [c["label"] for c in result.accepted] == ["nv"]


def test_unknown_label_is_quarantined(tmp_path, intake_dir):
    drop = ham_drop(tmp_path, {"c.jpg": image_bytes(3, "JPEG")}, [("c.jpg", "scc", "HAM_3", "", "", "")])
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"c.jpg": "unknown_label"}
    assert_good_two_accepted(result, intake_dir)
    logged = pd.read_csv(intake_dir / "quarantine.csv", dtype=str, keep_default_na=False)
    assert logged[["source_path", "reason", "received_at"]].values.tolist() == [
        ["c.jpg", "unknown_label", "2025-03-01T12:00:00Z"]
    ]


def test_truncated_image_waits_keeps_its_label_and_is_taken_once_complete(tmp_path, intake_dir):
    """A sender still uploading: the cut file's row waits, labels.csv stays, the rest goes through."""
    whole = image_bytes(4, "JPEG", size=(64, 48))
    drop = ham_drop(tmp_path, {"cut.jpg": truncated(whole)}, [("cut.jpg", "mel", "HAM_4", "", "", "")])
    first = intake(drop, intake_dir, "ham10000", now=NOW)
    assert first.quarantined == [] and first.pending[0].startswith("cut.jpg (listed in labels.csv, truncated_image")
    assert_good_two_accepted(first, intake_dir)
    assert (drop / "labels.csv").is_file() and (drop / "cut.jpg").is_file()  # labels kept
    later = intake(drop, intake_dir, "ham10000", now=NOW + timedelta(hours=1))
    assert (later.accepted, later.quarantined, len(later.pending)) == ([], [], 1)  # a, b not seen again
    write(drop / "cut.jpg", whole)  # the upload completes
    done = intake(drop, intake_dir, "ham10000", now=NOW + timedelta(hours=2))
    assert [(c["label"], c["group_id"]) for c in done.accepted] == [("mel", "HAM_4")]
    assert done.pending == [] and not (drop / "labels.csv").exists()
    assert json.loads((intake_dir / "pending.json").read_text()) == {}


def test_truncated_image_is_quarantined_after_the_pending_timeout(tmp_path, intake_dir):
    settings = IntakeSettings(pending_timeout_s=600)
    drop = ham_drop(
        tmp_path,
        {"cut.jpg": truncated(image_bytes(4, "JPEG", size=(64, 48)))},
        [("cut.jpg", "mel", "HAM_4", "", "", "")],
    )
    intake(drop, intake_dir, "ham10000", now=NOW, settings=settings)
    result = intake(drop, intake_dir, "ham10000", now=NOW + timedelta(seconds=600), settings=settings)
    assert reasons(result) == {"cut.jpg": "truncated_image"} and "pending_timeout_s (600 s)" in result.quarantined[0].detail
    assert result.quarantined[0].label == "mel" and result.pending == []
    assert not (drop / "labels.csv").exists() and list(drop.iterdir()) == []


def test_recently_modified_file_waits_for_the_settle_window(tmp_path, intake_dir):
    settings = IntakeSettings(settle_s=3600)
    drop = ham_drop(tmp_path)
    os.utime(drop / "b.png")  # b.png was modified just now: still being written
    old = time.time() - 7200
    first = intake(drop, intake_dir, "ham10000", now=NOW, settings=settings)
    assert [c["label"] for c in first.accepted] == ["mel"] and "still being written" in first.pending[0]
    os.utime(drop / "b.png", (old, old))
    second = intake(drop, intake_dir, "ham10000", now=NOW, settings=settings)
    assert [c["label"] for c in second.accepted] == ["nv"] and not (drop / "labels.csv").exists()


def test_labels_csv_still_being_written_leaves_the_drop_alone(tmp_path, intake_dir):
    drop = ham_drop(tmp_path)
    os.utime(drop / "labels.csv")
    result = intake(drop, intake_dir, "ham10000", now=NOW, settings=IntakeSettings(settle_s=3600))
    assert result.accepted == [] and "labels.csv (still being written)" in result.pending
    assert (drop / "a.jpg").is_file()


def test_text_file_posing_as_an_image_is_quarantined(tmp_path, intake_dir):
    drop = ham_drop(tmp_path, {"note.jpg": b"call the patient"}, [("note.jpg", "mel", "HAM_5", "", "", "")])
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"note.jpg": "not_an_image"}
    assert_good_two_accepted(result, intake_dir)


def test_metadata_outside_the_allowed_values_is_quarantined(tmp_path, intake_dir):
    drop = ham_drop(tmp_path, {"c.jpg": image_bytes(6, "JPEG")}, [("c.jpg", "mel", "HAM_6", "", "robot", "")])
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"c.jpg": "invalid_metadata"}
    assert_good_two_accepted(result, intake_dir)


def test_cases_outside_the_bounds_are_quarantined_with_reason_and_detail(tmp_path, intake_dir):
    files = {f"{n}.jpg": image_bytes(20 + i, "JPEG") for i, n in enumerate(("old", "neg", "txt", "sex"))}
    files["strip.png"] = bomb_png(30_000, 10)
    drop = ham_drop(tmp_path, files, [
        ("old.jpg", "mel", "HAM_20", "500", "male", "back"),
        ("neg.jpg", "mel", "HAM_21", "-3", "male", "back"),
        ("txt.jpg", "mel", "HAM_22", "forty", "male", "back"),
        ("sex.jpg", "mel", "HAM_23", "40", "X", "back"),
        ("strip.png", "mel", "HAM_24", "40", "male", "back"),
    ])
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {
        "old.jpg": "age_out_of_range",
        "neg.jpg": "age_out_of_range",
        "txt.jpg": "invalid_metadata",
        "sex.jpg": "invalid_metadata",
        "strip.png": "too_large",
    }
    details = {e.source_path: e.detail for e in result.quarantined}
    assert details["old.jpg"] == "line 4: age 500 outside bounds.age_range [0, 120]"
    assert details["strip.png"] == "line 8: 30000x10 > bounds.max_side 20000"
    assert all(e.sha256 for e in result.quarantined)  # the bytes are identified even when refused
    assert result.to_summary()["by_reason"] == {"age_out_of_range": 2, "invalid_metadata": 2, "too_large": 1}
    assert_good_two_accepted(result, intake_dir)
    logged = pd.read_csv(intake_dir / "quarantine.csv", dtype=str, keep_default_na=False)
    assert sorted(logged["reason"]) == sorted(reasons(result).values())


def test_bounds_come_from_the_caller(tmp_path, intake_dir):
    drop = ham_drop(tmp_path)
    result = intake(drop, intake_dir, "ham10000", bounds=CaseBounds(age_range=(0, 50)), now=NOW)
    assert reasons(result) == {"a.jpg": "age_out_of_range"}  # age 60
    assert [c["label"] for c in result.accepted] == ["nv"]


def test_row_naming_a_file_not_there_yet_waits_and_its_label_is_kept(tmp_path, intake_dir):
    drop = ham_drop(tmp_path, extra_rows=[("ghost.jpg", "mel", "HAM_7", "", "", "")])
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert result.quarantined == [] and result.pending == [
        "ghost.jpg (listed in labels.csv, not arrived; waiting since 2025-03-01T12:00:00Z)"]
    assert_good_two_accepted(result, intake_dir)
    write(drop / "ghost.jpg", image_bytes(7, "JPEG"))
    arrived = intake(drop, intake_dir, "ham10000", now=NOW + timedelta(minutes=5))
    assert [(c["label"], c["group_id"]) for c in arrived.accepted] == [("mel", "HAM_7")]


def test_row_naming_a_missing_file_is_quarantined_after_the_timeout(tmp_path, intake_dir):
    drop = ham_drop(tmp_path, extra_rows=[("ghost.jpg", "mel", "HAM_7", "", "", "")])
    intake(drop, intake_dir, "ham10000", now=NOW)
    result = intake(drop, intake_dir, "ham10000", now=NOW + timedelta(days=2))
    assert reasons(result) == {"labels.csv": "missing_image"} and "ghost.jpg" in result.quarantined[0].detail
    assert not (drop / "labels.csv").exists()
    assert (archive(drop) / f"{STAMP.replace('01T', '03T')}" / "labels.csv").is_file()


def test_image_without_a_row_stays_pending_in_the_drop(tmp_path, intake_dir):
    drop = ham_drop(tmp_path, {"later.jpg": image_bytes(8, "JPEG")})
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert result.pending == ["later.jpg"] and result.quarantined == []
    assert (drop / "later.jpg").is_file()
    assert_good_two_accepted(result, intake_dir)


def test_drop_without_labels_csv_is_left_alone(tmp_path, intake_dir):
    write(tmp_path / "drop" / "a.jpg", image_bytes(1, "JPEG"))
    result = intake(tmp_path / "drop", intake_dir, "ham10000", now=NOW)
    assert (result.accepted, result.pending, result.processed_dir) == ([], ["a.jpg"], None)
    assert (tmp_path / "drop" / "a.jpg").is_file()


def test_labels_csv_without_required_columns_is_malformed_csv(tmp_path, intake_dir):
    drop = make_drop(tmp_path / "drop", {"a.jpg": image_bytes(1, "JPEG")}, [])
    (drop / "labels.csv").write_text("filename,diagnosis\na.jpg,mel\n")
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"labels.csv": "malformed_csv"}
    assert result.accepted == [] and result.pending == ["a.jpg"] and (drop / "a.jpg").is_file()


def test_malformed_row_is_quarantined(tmp_path, intake_dir):
    drop = ham_drop(tmp_path)
    with open(drop / "labels.csv", "a", encoding="utf-8") as fh:
        fh.write("only-one-field\n")
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"labels.csv": "malformed_row"}
    assert_good_two_accepted(result, intake_dir)


def test_latin1_labels_csv_is_read_with_a_note(tmp_path, intake_dir):
    drop = ham_drop(tmp_path)
    text = (drop / "labels.csv").read_text().replace("HAM_1", "HAM_Zoë")
    (drop / "labels.csv").write_bytes(text.encode("latin-1"))
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"labels.csv": "wrong_encoding"}
    assert cases(intake_dir)["group_id"].iloc[0] == "HAM_Zoë"
    assert_good_two_accepted(result, intake_dir)


def test_same_bytes_twice_in_one_drop_with_conflicting_labels(tmp_path, intake_dir):
    same = image_bytes(9, "JPEG")
    drop = ham_drop(
        tmp_path,
        {"x1.jpg": same, "x2.jpg": same},
        [("x1.jpg", "mel", "HAM_9", "", "", ""), ("x2.jpg", "bcc", "HAM_9", "", "", "")],
    )
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"x1.jpg": "conflicting_duplicate", "x2.jpg": "conflicting_duplicate"}
    assert_good_two_accepted(result, intake_dir)


def test_same_bytes_twice_in_one_drop_with_the_same_label(tmp_path, intake_dir):
    same = image_bytes(9, "JPEG")
    drop = ham_drop(
        tmp_path,
        {"x1.jpg": same, "x2.jpg": same},
        [("x1.jpg", "mel", "HAM_9", "", "", ""), ("x2.jpg", "mel", "HAM_9", "", "", "")],
    )
    result = intake(drop, intake_dir, "ham10000", now=NOW)
    assert reasons(result) == {"x2.jpg": "duplicate"}
    assert [c["label"] for c in result.accepted] == ["mel", "nv", "mel"]


def test_names_with_spaces_and_unicode_match_in_either_normal_form(tmp_path, intake_dir):
    name = "cellule infectée 1.png"
    drop = make_drop(
        tmp_path / "drop",
        {unicodedata.normalize("NFD", name): image_bytes(10), "sub dir/b.png": image_bytes(11)},
        [
            (unicodedata.normalize("NFC", name), "parasitized", "", "", "", ""),
            ("sub dir/b.png", "Uninfected", "P7", "", "", ""),
        ],
    )
    result = intake(drop, intake_dir, "malaria", now=NOW)
    assert [(c["label"], c["group_id"]) for c in result.accepted] == [
        ("Parasitized", "cellule infectée 1"),
        ("Uninfected", "P7"),
    ]
    assert (archive(drop) / STAMP / "sub dir" / "b.png").is_file()


def test_malaria_group_falls_back_to_the_slide_prefix(tmp_path, intake_dir):
    drop = make_drop(
        tmp_path / "drop",
        {"C9P9ThinF_IMG_1_cell_1.png": image_bytes(12)},
        [("C9P9ThinF_IMG_1_cell_1.png", "Uninfected", "", "", "", "")],
    )
    assert intake(drop, intake_dir, "malaria", now=NOW).accepted[0]["group_id"] == "C9P9ThinF"


def test_missing_drop_folder_is_an_error(tmp_path, intake_dir):
    with pytest.raises(FileNotFoundError):
        intake(tmp_path / "nowhere", intake_dir, "ham10000")


# ------------------------------------------------------------------ S3 prefix (moto)


@pytest.fixture
def s3(monkeypatch):
    moto = pytest.importorskip("moto")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MEDSCAN_S3_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        client = s3_client()
        client.create_bucket(Bucket=BUCKET)
        yield client


def put_drop(client, files: dict[str, bytes], rows: list[tuple[str, ...]], prefix: str = "incoming/") -> None:
    for name, data in files.items():
        client.put_object(Bucket=BUCKET, Key=prefix + name, Body=data)
    body = "file,label,group_id,age,sex,localization\n" + "".join(",".join(r) + "\n" for r in rows)
    client.put_object(Bucket=BUCKET, Key=prefix + "labels.csv", Body=body.encode())


def test_s3_uri_parsing():
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError):
        parse_s3_uri("/local/path")


def test_s3_endpoint_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSCAN_S3_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:8333"
    assert s3_client("http://localhost:9000").meta.endpoint_url == "http://localhost:9000"


def test_s3_cases_are_accepted_and_objects_left_in_place(s3, intake_dir):
    put_drop(
        s3,
        {"a.png": image_bytes(1), "b.png": image_bytes(2)},
        [("a.png", "Parasitized", "C1", "", "", ""), ("b.png", "Uninfected", "C2", "", "", "")],
    )
    result = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert [c["label"] for c in result.accepted] == ["Parasitized", "Uninfected"]
    assert result.processed_dir is None and result.source == f"s3://{BUCKET}/incoming"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sorted(keys) == ["incoming/a.png", "incoming/b.png", "incoming/labels.csv"]
    ledger = pd.read_csv(intake_dir / "s3_processed.csv", dtype=str)
    assert sorted(ledger["key"]) == ["incoming/a.png", "incoming/b.png"]
    assert set(ledger["sha256"]) == {sha(image_bytes(1)), sha(image_bytes(2))}


def test_s3_rerun_processes_only_new_objects(s3, intake_dir):
    put_drop(s3, {"a.png": image_bytes(1)}, [("a.png", "Parasitized", "C1", "", "", "")])
    intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    unchanged = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert (unchanged.accepted, unchanged.quarantined, unchanged.pending) == ([], [], [])
    put_drop(
        s3,
        {"c.png": image_bytes(3)},
        [("a.png", "Parasitized", "C1", "", "", ""), ("c.png", "Uninfected", "C3", "", "", "")],
    )
    grown = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert [c["group_id"] for c in grown.accepted] == ["C3"] and grown.quarantined == []
    assert list(cases(intake_dir)["group_id"]) == ["C1", "C3"]


def test_s3_same_bytes_under_a_new_key_are_not_accepted_twice(s3, intake_dir):
    put_drop(s3, {"a.png": image_bytes(1)}, [("a.png", "Parasitized", "C1", "", "", "")])
    intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    put_drop(s3, {"a-again.png": image_bytes(1)}, [("a-again.png", "Parasitized", "C1", "", "", "")])
    result = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert reasons(result) == {f"s3://{BUCKET}/incoming/a-again.png": "already_accepted"}


def test_s3_row_whose_object_has_not_arrived_is_pending(s3, intake_dir):
    put_drop(
        s3,
        {"a.png": image_bytes(1)},
        [("a.png", "Parasitized", "C1", "", "", ""), ("late.png", "Uninfected", "C2", "", "", "")],
    )
    first = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert first.quarantined == [] and first.pending == [
        "late.png (listed in labels.csv, not arrived; waiting since 2025-03-01T12:00:00Z)"]
    s3.put_object(Bucket=BUCKET, Key="incoming/late.png", Body=image_bytes(2))
    second = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert [c["group_id"] for c in second.accepted] == ["C2"]


def test_s3_row_whose_object_never_arrives_is_quarantined_once_after_the_timeout(s3, intake_dir):
    put_drop(s3, {}, [("late.png", "Uninfected", "C2", "", "", "")])
    settings = IntakeSettings(pending_timeout_s=60)
    intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW, settings=settings)
    later = NOW + timedelta(seconds=61)
    timed_out = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=later, settings=settings)
    assert reasons(timed_out) == {f"s3://{BUCKET}/incoming/labels.csv": "missing_image"}
    assert timed_out.quarantined[0].label == "Uninfected" and timed_out.pending == []
    again = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=later, settings=settings)
    assert (again.quarantined, again.pending) == ([], [])


def test_s3_bad_object_is_quarantined_once(s3, intake_dir):
    put_drop(
        s3,
        {"a.png": image_bytes(1), "bad.png": b""},
        [("a.png", "Parasitized", "C1", "", "", ""), ("bad.png", "Uninfected", "C2", "", "", "")],
    )
    first = intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW)
    assert reasons(first) == {f"s3://{BUCKET}/incoming/bad.png": "empty_file"} and len(first.accepted) == 1
    assert intake(f"s3://{BUCKET}/incoming", intake_dir, "malaria", now=NOW).quarantined == []


# ------------------------------------------------------------------ CLI


def test_cli_prints_a_json_summary_for_airflow(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    write(project / "params.yaml", b"dataset: {name: ham10000, root: x}\nbounds: {age_range: [0, 59]}\n")
    monkeypatch.setenv("MEDSCAN_ROOT", str(project))
    assert intake_module.main(["--drop", str(ham_drop(tmp_path))]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # params.yaml bounds: reach the CLI (the age-60 case is out of [0, 59])
    assert summary["accepted"] == 1 and summary["by_reason"] == {"age_out_of_range": 1}
    assert len(cases(project / "data" / "intake")) == 1


def test_cli_init_creates_the_empty_intake_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSCAN_ROOT", str(tmp_path))
    assert intake_module.main(["--init"]) == 0
    assert (tmp_path / "data" / "intake" / "cases.csv").read_text().strip() == ",".join(CASES_COLUMNS)
    assert json.loads(capsys.readouterr().out)["intake_dir"] == str(tmp_path / "data" / "intake")


@pytest.mark.slow
def test_cli_dvc_add_versions_the_intake_folder(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    env = {**os.environ, "MEDSCAN_ROOT": str(project)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.intake",
            "--drop",
            str(ham_drop(tmp_path)),
            "--dataset",
            "ham10000",
            "--dvc-add",
        ],
        cwd=Path(intake_module.__file__).parents[1],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1])["accepted"] == 2
    assert "outs:" in (project / "data" / "intake.dvc").read_text()


# ------------------------------------------------------------------ through DVC: one bad case never blocks


@pytest.mark.slow
def test_dvc_repro_quarantines_bad_cases_reuses_decoded_images_and_validates(tmp_path):
    """`dvc repro` deletes ingest's outputs before it runs: the cache still spares the decoding,
    and bad cases, new or appended to cases.csv before the bounds existed, never fail validate."""
    from tests.conftest import copy_project, set_params, venv_env

    root = copy_project(tmp_path / "project")
    set_params(root, {"demo": {"images_per_class": 12, "image_size": 24}})
    env = venv_env(root)

    def dvc_repro() -> str:
        done = subprocess.run(["dvc", "repro", "validate"], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    first = re.search(r"(\d+) images hashed \((\d+) decoded, 0 reused from the cache\)", dvc_repro())
    assert first and first[1] == first[2]
    demo = int(first[1])
    intake_dir = root / "data" / "intake"
    old = image_bytes(300, "JPEG")  # accepted before the bounds existed: intake files are append-only
    write(intake_dir / "images" / f"{sha(old)}.jpg", old)
    with open(intake_dir / "cases.csv", "a", encoding="utf-8") as fh:
        fh.write(f"images/{sha(old)}.jpg,mel,HAM_OLD,500,male,back,{sha(old)},2024-01-01T00:00:00Z\n")
    drop = ham_drop(tmp_path, {"old.jpg": image_bytes(301, "JPEG"), "wide.png": bomb_png(30_000, 10)},
                    [("old.jpg", "mel", "HAM_9", "500", "male", "back"),
                     ("wide.png", "nv", "HAM_10", "40", "male", "back")])
    taken = subprocess.run([sys.executable, "-m", "pipelines.intake", "--drop", str(drop)], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout
    summary = json.loads(taken.strip().splitlines()[-1])
    assert summary["accepted"] == 2 and summary["by_reason"] == {"age_out_of_range": 1, "too_large": 1}

    assert f"(2 decoded, {demo} reused from the cache)" in dvc_repro()
    quarantine = pd.read_csv(root / "data" / "quarantine.csv", dtype=str, keep_default_na=False)
    assert quarantine[["source_path", "reason"]].values.tolist() == [
        [f"intake/images/{sha(old)}.jpg", "age_out_of_range"]]
    manifest = pd.read_parquet(root / "data" / "manifest.parquet")
    assert len(manifest) == demo + 2 and sha(old) not in set(manifest["sha256"])
    validation = json.loads((root / "reports" / "validation.json").read_text())
    assert validation["success"] is True and validation["quarantined"] == 1
