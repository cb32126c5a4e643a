"""The intake folder's layout (data/intake: Paths.intake) and how its accepted cases are read.

Intake (the command-line module that writes the folder), ingest (the stage that merges its cases
into the manifest), the DAG's runner and the web app all need the same file names and the same
reading code; it lives here, beside the manifest, so that none of them imports another.

  data/intake/images/<sha256>.<ext>   accepted originals (ext from the detected format)
  data/intake/cases.csv               one row per accepted case (CASES_COLUMNS)
  data/intake/quarantine.csv          rejected cases with their reasons
A drop (folder or S3 prefix) holds images plus LABELS_FILE.
"""
from __future__ import annotations

import csv
import io
import math
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import INTAKE_DIR
from pipelines.datasets import DatasetAdapter
from pipelines.datasets.base import Candidate, MetadataError, ScanResult, SourceReason, read_csv_table
from pipelines.manifest import METADATA_COLUMNS, QuarantineEntry

CASES_FILE = "cases.csv"
IMAGES_DIR = "images"
QUARANTINE_FILE = "quarantine.csv"
LABELS_FILE = "labels.csv"  # a drop's labels: columns `file`, `label`, optional metadata
CASES_COLUMNS: tuple[str, ...] = ("file", "label", "group_id", *METADATA_COLUMNS, "sha256", "received_at")
CASES_REQUIRED = ("file", "label", "sha256")
# Stored extension follows the detected format, not the (untrusted) name of the dropped file.
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "TIFF": "tif",
    "BMP": "bmp",
    "GIF": "gif",
    "WEBP": "webp",
}


def ensure_intake_dir(path: Path) -> Path:
    """Create `path/images/` and a header-only `path/cases.csv` (the state before any intake)."""
    (path / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    cases = path / CASES_FILE
    if not cases.exists() or cases.stat().st_size == 0:
        append_csv(cases, CASES_COLUMNS, [])
    return path


def scan_cases(intake_dir: Path, adapter: DatasetAdapter) -> ScanResult:
    """Accepted intake cases as ingest candidates (source_path `intake/<file>`, image_id = sha256).

    cases.csv is data like any other: a `file` that resolves outside the intake folder (absolute,
    `../`, a symlink out) is quarantined `path_outside_root` and never read; the `sha256` it
    claims is checked by ingest against the bytes it hashes (`sha256_mismatch`).
    """
    cases = intake_dir / CASES_FILE
    if not cases.is_file():
        return ScanResult()
    table = read_csv_table(cases, f"{INTAKE_DIR}/{CASES_FILE}", CASES_REQUIRED)
    result = ScanResult(quarantine=list(table.problems))
    real_dir = Path(os.path.realpath(intake_dir))
    for row in table.rows:
        values = row.values
        rel = f"{INTAKE_DIR}/{values['file']}"

        def reject(reason: str, what: str) -> None:
            detail = f"{CASES_FILE} line {row.line}: {values['file']!r} {what}"
            result.quarantine.append(QuarantineEntry(rel, reason, detail, values["sha256"], values["label"]))

        target = Path(os.path.realpath(intake_dir / values["file"]))
        if Path(values["file"]).is_absolute() or not target.is_relative_to(real_dir):
            reject(SourceReason.PATH_OUTSIDE_ROOT, f"resolves outside {INTAKE_DIR}/: never read")
            continue
        try:
            regular = stat.S_ISREG(os.stat(target).st_mode)
        except OSError:
            regular = False
        if not regular:
            reject(SourceReason.MISSING_IMAGE, "is missing (or not a regular file)")
            continue
        try:
            metadata = adapter.parse_metadata(values)
        except MetadataError as exc:
            result.quarantine.append(
                QuarantineEntry(
                    rel, SourceReason.INVALID_METADATA, str(exc), values["sha256"], values["label"]
                )
            )
            continue
        group = values.get("group_id") or values["sha256"]
        result.candidates.append(
            Candidate(rel, target, values["label"], group, values["sha256"], "", metadata, values["sha256"])
        )
    return adapter.check_labels(result)


def known_shas(intake_dir: Path, manifest_path: Path | None) -> dict[str, str]:
    """sha256 -> where it was accepted before (the manifest, or an earlier intake)."""
    known: dict[str, str] = {}
    if manifest_path is not None and manifest_path.is_file():
        frame = pd.read_parquet(manifest_path, columns=["sha256", "label"])
        known.update((s, f"in the manifest as {lab!r}") for s, lab in zip(frame["sha256"], frame["label"]))
    cases = intake_dir / CASES_FILE
    if cases.is_file():
        frame = pd.read_csv(cases, dtype=str, keep_default_na=False)
        known.update((s, f"in {CASES_FILE} as {lab!r}") for s, lab in zip(frame["sha256"], frame["label"]))
    return known


def cell(value: Any) -> str:
    """A CSV cell: NaN (pandas' missing metadata) is an empty cell, not the text "nan"."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def csv_text(columns: Iterable[str], rows: Iterable[Mapping[str, Any]], header: bool) -> str:
    """Rows as CSV text (CRLF, as the csv module writes): what intake journals before appending."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\r\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def append_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows (a header first when the file is new): intake files only ever grow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        fh.write(csv_text(columns, rows, new))
