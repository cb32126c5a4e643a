"""HAM10000 dermatoscopic images: `HAM10000_metadata.csv` plus the image folders of the release.

Accepted layouts: `images/<image_id>.jpg` (the tidy one) or the original release's
`HAM10000_images_part_1/` and `HAM10000_images_part_2/`. Label = `dx`, group = `lesion_id` (one
lesion is often photographed several times, so splits must keep a lesion on one side).
`dx_type` says HOW the diagnosis was made (histopathology, follow-up, ...); it leaks the label and
is never carried, not even as metadata. Other entries of the root are listed in data/ignored.csv.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.datasets.base import (
    Candidate,
    CsvRow,
    DatasetAdapter,
    MetadataError,
    Rejected,
    ScanResult,
    SourceReason,
    ListedFile,
    list_files,
    read_csv_table,
    relative,
    unread_entries,
    resolve_duplicates,
)
from pipelines.manifest import QuarantineEntry


class Ham10000Adapter(DatasetAdapter):
    """HAM10000 (Tschandl et al. 2018), 7 diagnostic classes."""

    name = "ham10000"
    classes = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    metadata_columns = ("age", "sex", "localization")
    # Value sets of the released metadata CSV.
    categorical_values = {
        "sex": ("female", "male", "unknown"),
        "localization": (
            "abdomen",
            "acral",
            "back",
            "chest",
            "ear",
            "face",
            "foot",
            "genital",
            "hand",
            "lower extremity",
            "neck",
            "scalp",
            "trunk",
            "unknown",
            "upper extremity",
        ),
    }
    display_names = {
        "akiec": "Actinic keratosis / Bowen's disease",
        "bcc": "Basal cell carcinoma",
        "bkl": "Benign keratosis-like lesion",
        "df": "Dermatofibroma",
        "mel": "Melanoma",
        "nv": "Melanocytic nevus",
        "vasc": "Vascular lesion",
    }

    METADATA_FILE = "HAM10000_metadata.csv"
    IMAGE_DIRS = ("images", "HAM10000_images_part_1", "HAM10000_images_part_2")
    REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")

    def _scan(self, root: Path) -> ScanResult:
        csv_path = root / self.METADATA_FILE
        if not csv_path.is_file():
            raise FileNotFoundError(f"{self.name}: no {self.METADATA_FILE} under {root}")
        table = read_csv_table(csv_path, self.METADATA_FILE, self.REQUIRED_COLUMNS)
        files, result = self._index_images(root)
        why = f"only {self.METADATA_FILE} and {', '.join(self.IMAGE_DIRS)} are read"
        result = result.merge(unread_entries(root, (self.METADATA_FILE, *self.IMAGE_DIRS), why))
        result.quarantine.extend(table.problems)
        rows, rejected = resolve_duplicates(
            table.rows, key=lambda r: r.values["image_id"], label=lambda r: r.values["dx"].lower()
        )
        for row in rows:
            self._add_row(root, row, files.pop(row.values["image_id"], None), result)
        for rej in rejected:  # their image files are accounted for by these entries
            files.pop(rej.item.values["image_id"], None)
            result.quarantine.append(self._duplicate_row_entry(rej))
        result.quarantine.extend(
            QuarantineEntry(
                relative(found.path, root),
                SourceReason.MISSING_METADATA,
                f"no {self.METADATA_FILE} row for image_id {stem!r}",
            )
            for stem, found in sorted(files.items())
        )
        return result

    def _index_images(self, root: Path) -> tuple[dict[str, ListedFile], ScanResult]:
        """image_id -> file, over every image folder present; a second file for one id is quarantined."""
        folders = [root / d for d in self.IMAGE_DIRS if (root / d).is_dir()]
        if not folders:
            raise FileNotFoundError(f"{self.name}: none of {self.IMAGE_DIRS} under {root}")
        index: dict[str, ListedFile] = {}
        result = ScanResult()
        for folder in folders:
            listing = list_files(folder, root)
            result.quarantine.extend(listing.quarantine)
            result.ignored.extend(listing.ignored)
            for found in listing.files:
                kept = index.setdefault(found.path.stem, found)
                if kept is not found:
                    detail = f"second file for image_id {found.path.stem!r}; kept {relative(kept.path, root)}"
                    result.quarantine.append(
                        QuarantineEntry(relative(found.path, root), SourceReason.DUPLICATE, detail)
                    )
        return index, result

    def _add_row(self, root: Path, row: CsvRow, found: ListedFile | None, result: ScanResult) -> None:
        values = row.values
        if found is None:
            detail = f"line {row.line}: image_id {values['image_id']!r} has no image file"
            result.quarantine.append(
                QuarantineEntry(self.METADATA_FILE, SourceReason.MISSING_IMAGE, detail, label=values["dx"])
            )
            return
        rel = relative(found.path, root)
        try:
            metadata = self.parse_metadata(values)
        except MetadataError as exc:
            detail = f"line {row.line}: {exc}"
            result.quarantine.append(
                QuarantineEntry(rel, SourceReason.INVALID_METADATA, detail, label=values["dx"])
            )
            return
        result.candidates.append(
            Candidate(rel, found.target, values["dx"], values["lesion_id"], values["image_id"], "", metadata)
        )

    def _duplicate_row_entry(self, rej: Rejected[CsvRow]) -> QuarantineEntry:
        values = rej.item.values
        others = ", ".join(f"line {o.line} (dx {o.values['dx']!r})" for o in rej.related)
        verb = "duplicates" if rej.reason == SourceReason.DUPLICATE else "conflicts with"
        detail = f"line {rej.item.line}: image_id {values['image_id']!r} {verb} {others}"
        return QuarantineEntry(self.METADATA_FILE, rej.reason, detail, label=values["dx"])
