"""Data set adapters: native layouts in, candidates and source-level quarantine out (no decoding)."""

from __future__ import annotations

import math
import os

import pytest

from ingest_factories import ham_row, image_bytes, write, write_class_folders, write_ham
from pipelines.datasets import ADAPTER_NAMES, get_adapter
from pipelines.datasets.base import CsvFormatError, ScanResult
from pipelines.datasets.dermnet import DermnetAdapter
from pipelines.manifest import METADATA_COLUMNS

DERMNET_ECZEMA = "Eczema Photos"
DERMNET_TINEA = "Tinea Ringworm Candidiasis and other Fungal Infections"


def reasons(result: ScanResult) -> list[str]:
    return [str(e.reason) for e in result.quarantine]


def image_ids(result: ScanResult) -> list[str]:
    return [c.image_id for c in result.candidates]


# ------------------------------------------------------------------ registry and class facts


def test_registry_knows_the_four_adapters():
    assert set(ADAPTER_NAMES) == {"ham10000", "malaria", "malaria_tfds", "dermnet"}
    for name in ADAPTER_NAMES:
        adapter = get_adapter(name)
        assert adapter.name == name
        assert len(set(adapter.classes)) == len(adapter.classes) > 1
        assert set(adapter.metadata_columns) <= set(METADATA_COLUMNS)


def test_unknown_adapter_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="ham10000"):
        get_adapter("isic2019")


def test_ham10000_facts_come_from_the_released_metadata():
    ham = get_adapter("ham10000")
    assert ham.classes == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert ham.metadata_columns == ("age", "sex", "localization")
    assert ham.categorical_values["sex"] == ("female", "male", "unknown")
    assert {"lower extremity", "acral", "unknown"} <= set(ham.categorical_values["localization"])
    assert "dx_type" not in ham.metadata_columns
    assert ham.display_name("mel") == "Melanoma"


def test_other_adapters_have_no_metadata():
    for name in ("malaria", "malaria_tfds", "dermnet"):
        adapter = get_adapter(name)
        assert adapter.metadata_columns == () and dict(adapter.categorical_values) == {}


def test_dermnet_lists_the_23_top_level_classes_with_readable_names():
    dermnet = get_adapter("dermnet")
    assert len(dermnet.classes) == 23 and list(dermnet.classes) == sorted(dermnet.classes, key=str.lower)
    assert DERMNET_ECZEMA in dermnet.classes and DERMNET_TINEA in dermnet.classes
    assert dermnet.display_name(DERMNET_TINEA) == "Tinea/candidiasis/fungal"
    assert set(DermnetAdapter.display_names) == set(dermnet.classes)


def test_missing_root_is_an_error_not_an_empty_data_set(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_adapter("malaria").scan(tmp_path / "absent")


# ------------------------------------------------------------------ HAM10000


def test_ham_reads_metadata_label_group_and_typed_values(tmp_path):
    root = write_ham(
        tmp_path,
        [
            ham_row(1, "mel", lesion="HAM_A", age="55.0", sex="Female"),
            ham_row(2, "mel", lesion="HAM_A", age="", localization="lower extremity"),
        ],
    )
    result = get_adapter("ham10000").scan(root)
    assert result.quarantine == []
    first, second = result.candidates
    assert (first.source_path, first.label, first.group_id, first.image_id) == (
        "images/ISIC_0000001.jpg",
        "mel",
        "HAM_A",
        "ISIC_0000001",
    )
    assert first.metadata == {"age": 55.0, "sex": "female", "localization": "back"}
    assert math.isnan(second.metadata["age"]) and second.metadata["localization"] == "lower extremity"
    assert "dx_type" not in first.metadata and first.split_hint == ""


def test_ham_accepts_the_original_two_part_release(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2)], images=False)
    write(root / "HAM10000_images_part_1" / "ISIC_0000001.jpg", image_bytes(1, "JPEG"))
    write(root / "HAM10000_images_part_2" / "ISIC_0000002.jpg", image_bytes(2, "JPEG"))
    result = get_adapter("ham10000").scan(root)
    assert [c.source_path for c in result.candidates] == [
        "HAM10000_images_part_1/ISIC_0000001.jpg",
        "HAM10000_images_part_2/ISIC_0000002.jpg",
    ]
    assert result.quarantine == []


def test_ham_without_any_image_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        get_adapter("ham10000").scan(write_ham(tmp_path, [ham_row(1)], images=False))


def test_ham_row_whose_image_is_missing_is_quarantined(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2), ham_row(3)])
    (root / "images" / "ISIC_0000002.jpg").unlink()
    result = get_adapter("ham10000").scan(root)
    assert reasons(result) == ["missing_image"]
    assert "ISIC_0000002" in result.quarantine[0].detail
    assert image_ids(result) == ["ISIC_0000001", "ISIC_0000003"]


def test_ham_image_without_metadata_row_is_quarantined(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2)])
    write(root / "images" / "ISIC_9999999.jpg", image_bytes(99, "JPEG"))
    result = get_adapter("ham10000").scan(root)
    assert [(e.source_path, e.reason) for e in result.quarantine] == [
        ("images/ISIC_9999999.jpg", "missing_metadata")
    ]
    assert image_ids(result) == ["ISIC_0000001", "ISIC_0000002"]


def test_ham_malformed_rows_are_quarantined_one_by_one(tmp_path):
    rows = [ham_row(1), ("HAM_X", "ISIC_0000002", "nv"), ham_row(3), ham_row(4, dx="")]
    root = write_ham(tmp_path, rows)
    result = get_adapter("ham10000").scan(root)
    assert reasons(result).count("malformed_row") == 2
    assert {e.detail.split(":")[0] for e in result.quarantine if e.reason == "malformed_row"} == {
        "line 3",
        "line 5",
    }
    assert image_ids(result) == ["ISIC_0000001", "ISIC_0000003"]
    # Their image files have no usable row left, so they are reported too, not dropped.
    assert sorted(e.source_path for e in result.quarantine if e.reason == "missing_metadata") == [
        "images/ISIC_0000002.jpg",
        "images/ISIC_0000004.jpg",
    ]


def test_ham_latin1_csv_is_read_with_a_note_and_rows_kept(tmp_path):
    root = write_ham(tmp_path, [ham_row(1, lesion="HAM_Zoë"), ham_row(2)], encoding="latin-1")
    result = get_adapter("ham10000").scan(root)
    assert reasons(result) == ["wrong_encoding"]
    assert result.quarantine[0].source_path == "HAM10000_metadata.csv"
    assert [c.group_id for c in result.candidates] == ["HAM_Zoë", "HAM_0000002"]


def test_ham_utf8_with_bom_is_not_an_encoding_problem(tmp_path):
    root = write_ham(tmp_path, [ham_row(1)], encoding="utf-8-sig")
    assert get_adapter("ham10000").scan(root).quarantine == []


def test_ham_unknown_label_is_quarantined(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2, dx="scc"), ham_row(3, dx="NV")])
    result = get_adapter("ham10000").scan(root)
    assert [(e.source_path, e.reason, e.label) for e in result.quarantine] == [
        ("images/ISIC_0000002.jpg", "unknown_label", "scc")
    ]
    assert [c.label for c in result.candidates] == ["nv", "nv"]  # case is canonicalised


def test_ham_metadata_outside_the_allowed_values_is_quarantined(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2, sex="robot"), ham_row(3, age="forty")])
    result = get_adapter("ham10000").scan(root)
    assert reasons(result) == ["invalid_metadata", "invalid_metadata"]
    assert image_ids(result) == ["ISIC_0000001"]


def test_ham_duplicate_metadata_rows_keep_one(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2), ham_row(2)])
    result = get_adapter("ham10000").scan(root)
    assert reasons(result) == ["duplicate"]
    assert image_ids(result) == ["ISIC_0000001", "ISIC_0000002"]


def test_ham_rows_giving_one_image_two_labels_quarantine_both(tmp_path):
    root = write_ham(tmp_path, [ham_row(1), ham_row(2, dx="nv"), ham_row(2, dx="mel")])
    result = get_adapter("ham10000").scan(root)
    assert reasons(result) == ["conflicting_duplicate", "conflicting_duplicate"]
    assert image_ids(result) == ["ISIC_0000001"]


def test_ham_header_without_required_columns_is_an_error(tmp_path):
    root = write_ham(tmp_path, [("a", "b")], header=("lesion", "image"))
    with pytest.raises(CsvFormatError, match="dx"):
        get_adapter("ham10000").scan(root)


def test_ham_ignores_os_litter(tmp_path):
    root = write_ham(tmp_path, [ham_row(1)])
    write(root / "images" / "Thumbs.db", b"\x00" * 10)
    write(root / "images" / ".DS_Store", b"\x00" * 10)
    result = get_adapter("ham10000").scan(root)
    assert result.quarantine == [] and image_ids(result) == ["ISIC_0000001"]


# ------------------------------------------------------------------ malaria


@pytest.mark.parametrize("nest", ["", "cell_images", "cell_images/cell_images"])
def test_malaria_root_may_be_above_at_or_inside_cell_images(tmp_path, nest):
    write_class_folders(tmp_path / nest, {"Parasitized": 1, "Uninfected": 1})
    start = tmp_path / "cell_images" if nest == "cell_images/cell_images" else tmp_path
    result = get_adapter("malaria").scan(start)
    assert [c.label for c in result.candidates] == ["Parasitized", "Uninfected"]


def test_malaria_groups_by_slide_prefix_with_stem_fallback(tmp_path):
    base = tmp_path / "cell_images"
    write(base / "Parasitized" / "C100P61ThinF_IMG_20150918_144104_cell_162.png", image_bytes(1))
    write(base / "Uninfected" / "oddly named.png", image_bytes(2))
    groups = {c.image_id: c.group_id for c in get_adapter("malaria").scan(tmp_path).candidates}
    assert groups == {
        "C100P61ThinF_IMG_20150918_144104_cell_162": "C100P61ThinF",
        "oddly named": "oddly named",
    }


def test_malaria_ignores_thumbs_db(tmp_path):
    write_class_folders(tmp_path / "cell_images", {"Parasitized": 2})
    write(tmp_path / "cell_images" / "Parasitized" / "Thumbs.db", b"\x00thumbs")
    result = get_adapter("malaria").scan(tmp_path)
    assert result.quarantine == [] and len(result.candidates) == 2


def test_malaria_unknown_class_folder_is_quarantined(tmp_path):
    write_class_folders(tmp_path / "cell_images", {"Parasitized": 1, "Gametocyte": 2, "Uninfected": 1})
    result = get_adapter("malaria").scan(tmp_path)
    assert reasons(result) == ["unknown_label", "unknown_label"]
    assert [c.label for c in result.candidates] == ["Parasitized", "Uninfected"]


def test_malaria_file_outside_any_class_folder_is_quarantined(tmp_path):
    write_class_folders(tmp_path / "cell_images", {"Parasitized": 1})
    write(tmp_path / "cell_images" / "stray.png", image_bytes(5))
    result = get_adapter("malaria").scan(tmp_path)
    assert [(e.source_path, e.reason) for e in result.quarantine] == [
        ("cell_images/stray.png", "unknown_label")
    ]
    assert len(result.candidates) == 1


# ------------------------------------------------------------------ DermNet


def test_dermnet_keeps_the_given_split_and_groups_by_image(tmp_path):
    write_class_folders(tmp_path / "train", {DERMNET_ECZEMA: 2}, fmt="JPEG", name="e-{n}")
    write_class_folders(tmp_path / "test", {DERMNET_TINEA: 1}, fmt="JPEG", seed0=10, name="t-{n}")
    result = get_adapter("dermnet").scan(tmp_path)
    assert [(c.split_hint, c.label, c.group_id) for c in result.candidates] == [
        ("train", DERMNET_ECZEMA, "e-0"),
        ("train", DERMNET_ECZEMA, "e-1"),
        ("test", DERMNET_TINEA, "t-0"),
    ]


def test_dermnet_folder_outside_the_23_classes_is_quarantined(tmp_path):
    write_class_folders(tmp_path / "train", {DERMNET_ECZEMA: 1, "Selfies": 1}, fmt="JPEG")
    result = get_adapter("dermnet").scan(tmp_path)
    assert [(e.reason, e.label) for e in result.quarantine] == [("unknown_label", "Selfies")]
    assert [c.label for c in result.candidates] == [DERMNET_ECZEMA]


def test_dermnet_folder_names_match_despite_case_and_spacing(tmp_path):
    write_class_folders(tmp_path / "test", {"eczema  photos": 1}, fmt="JPEG")
    assert [c.label for c in get_adapter("dermnet").scan(tmp_path).candidates] == [DERMNET_ECZEMA]


def test_dermnet_without_train_or_test_is_an_error(tmp_path):
    write_class_folders(tmp_path / "valid", {DERMNET_ECZEMA: 1}, fmt="JPEG")
    with pytest.raises(FileNotFoundError, match="train"):
        get_adapter("dermnet").scan(tmp_path)


def test_file_names_with_spaces_and_unicode_are_scanned(tmp_path):
    for n, name in enumerate(["eczema hand 1.jpg", "ékzéma-曲-2.jpg"]):
        write(tmp_path / "train" / DERMNET_ECZEMA / name, image_bytes(n, "JPEG"))
    result = get_adapter("dermnet").scan(tmp_path)
    assert [c.source_path for c in result.candidates] == [
        f"train/{DERMNET_ECZEMA}/eczema hand 1.jpg",
        f"train/{DERMNET_ECZEMA}/ékzéma-曲-2.jpg",
    ]
    assert all(c.path.is_file() for c in result.candidates)


# ------------------------------------------------------------------ malaria through TFDS (mocked, offline)


@pytest.mark.slow
def test_malaria_tfds_exports_once_to_the_folder_layout(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        result = get_adapter("malaria_tfds").scan(tmp_path)
    assert len(result.candidates) == 6 and result.quarantine == []
    assert {c.label for c in result.candidates} <= {"Parasitized", "Uninfected"}
    assert all(
        c.source_path.startswith("cell_images/") and c.group_id == c.image_id for c in result.candidates
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell_images"]

    def no_network(*args, **kwargs):
        raise AssertionError("a second scan must reuse the export, not call TFDS")

    monkeypatch.setattr(tfds, "builder", no_network)
    again = get_adapter("malaria_tfds").scan(tmp_path)
    assert [c.source_path for c in again.candidates] == [c.source_path for c in result.candidates]


# ------------------------------------------------------------------ links, special files, what is not read


def ignored(result: ScanResult) -> dict[str, str]:
    return {e.source_path: str(e.reason) for e in result.ignored}


def test_links_leaving_the_data_root_are_quarantined_links_inside_are_followed(tmp_path):
    root = tmp_path / "malaria"
    base = root / "cell_images"
    inside = write_class_folders(base, {"Parasitized": 1, "Uninfected": 1})[1]
    outside = write(tmp_path / "outside" / "x.png", image_bytes(50))
    (base / "Parasitized" / "out.png").symlink_to(outside)
    (base / "Parasitized" / "passwd.png").symlink_to("/etc/passwd")
    (base / "Uninfected" / "dangling.png").symlink_to(base / "nothing.png")
    (base / "Parasitized" / "again.png").symlink_to(inside)  # inside the root: followed
    result = get_adapter("malaria").scan(root)
    assert {e.source_path: str(e.reason) for e in result.quarantine} == {
        "cell_images/Parasitized/out.png": "symlink_outside_root",
        "cell_images/Parasitized/passwd.png": "symlink_outside_root",
        "cell_images/Uninfected/dangling.png": "broken_symlink",
    }
    followed = next(c for c in result.candidates if c.source_path.endswith("again.png"))
    assert followed.path == inside.resolve() and followed.label == "Parasitized"
    assert all(not str(c.path).startswith(str(tmp_path / "outside")) for c in result.candidates)


def test_ham_image_linked_out_of_the_root_never_becomes_a_candidate(tmp_path):
    root = write_ham(tmp_path / "ham", [ham_row(1), ham_row(2)])
    (root / "images" / "ISIC_0000002.jpg").unlink()
    (root / "images" / "ISIC_0000002.jpg").symlink_to("/etc/passwd")
    result = get_adapter("ham10000").scan(root)
    assert image_ids(result) == ["ISIC_0000001"]
    assert [(e.source_path, str(e.reason)) for e in result.quarantine] == [
        ("images/ISIC_0000002.jpg", "symlink_outside_root"), ("HAM10000_metadata.csv", "missing_image")]


def test_dermnet_folders_stray_files_links_and_fifos_are_listed_as_ignored(tmp_path):
    root = tmp_path / "dermnet"
    write_class_folders(root / "train", {DERMNET_ECZEMA: 2})
    write_class_folders(root / "validation", {DERMNET_ECZEMA: 3})
    write_class_folders(root / "Train", {DERMNET_ECZEMA: 1})
    write(root / "README.txt", b"about this copy")
    write(root / ".DS_Store", b"\0")
    os.mkfifo(root / "train" / DERMNET_ECZEMA / "pipe.jpg")
    (root / "train" / "Linked").symlink_to(root / "validation")
    result = get_adapter("dermnet").scan(root)  # a read of the FIFO would block: never opened
    assert len(result.candidates) == 2 and result.quarantine == []
    assert ignored(result) == {
        ".DS_Store": "hidden_file",
        "README.txt": "stray_file",
        "Train": "unread_folder",
        "validation": "unread_folder",
        f"train/{DERMNET_ECZEMA}/pipe.jpg": "special_file",
        "train/Linked": "symlinked_dir",
    }
    details = {e.source_path: e.detail for e in result.ignored}
    assert details["validation"].startswith("folder not read (3 file(s) inside)") and "case-sensitive" in details["Train"]
    assert "FIFO" in details[f"train/{DERMNET_ECZEMA}/pipe.jpg"]


def test_ham_and_malaria_list_what_their_layout_does_not_read(tmp_path):
    ham = write_ham(tmp_path / "ham", [ham_row(1)])
    write(ham / "notes.pdf", b"%PDF")
    write(ham / "extra" / "a.jpg", image_bytes(3, "JPEG"))
    assert ignored(get_adapter("ham10000").scan(ham)) == {"extra": "unread_folder", "notes.pdf": "stray_file"}
    malaria = tmp_path / "malaria"
    write_class_folders(malaria / "cell_images", {"Parasitized": 1})
    write(malaria / "LICENSE", b"cc")
    assert ignored(get_adapter("malaria").scan(malaria)) == {"LICENSE": "stray_file"}
