"""What every data set adapter shares: the scan result, label and metadata checks, robust CSV reading.

An adapter's only job is to turn a data set in its native layout into candidates (one per image
file, with label, group and metadata) and source-level quarantine entries (rows without images,
images without rows, unreadable rows, unknown labels). Decoding and hashing happen later, in ingest.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Mapping, Sequence, TypeVar

from pipelines.manifest import QuarantineEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

# Operating-system litter that is never data (skipped, not quarantined).
IGNORED_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini"})
IGNORED_DIR_NAMES = frozenset({"__macosx"})


class SourceReason(StrEnum):
    """Quarantine reasons found without decoding (image-level ones live in images.ImageReason)."""

    MISSING_IMAGE = "missing_image"  # a metadata row names a file that is not there
    MISSING_METADATA = "missing_metadata"  # a file on disk that no metadata row names
    MALFORMED_ROW = "malformed_row"  # wrong field count, empty required field, bad CSV
    MALFORMED_CSV = "malformed_csv"  # a CSV whose header is unusable: no row can be read
    WRONG_ENCODING = "wrong_encoding"  # CSV not UTF-8: read as latin-1, rows kept (a note)
    INVALID_METADATA = "invalid_metadata"  # age not a number, sex/localization not allowed
    UNKNOWN_LABEL = "unknown_label"
    DUPLICATE = "duplicate"  # same content (or id) and label as a kept item
    CONFLICTING_DUPLICATE = "conflicting_duplicate"  # same content (or id), different labels
    ALREADY_ACCEPTED = "already_accepted"  # intake: these bytes were accepted before


@dataclass(frozen=True)
class Candidate:
    """One image file a source offers, before it is hashed and decoded."""

    source_path: str  # relative to the data set root, POSIX separators
    path: Path  # absolute path to read
    label: str
    group_id: str  # lesion / patient / image: splits never cut a group
    image_id: str
    split_hint: str = ""  # split given by the distribution (DermNet train/test) or empty
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ScanResult:
    """Candidates plus everything the source offered that cannot become one."""

    candidates: list[Candidate] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def merge(self, other: "ScanResult") -> "ScanResult":
        return ScanResult(self.candidates + other.candidates, self.quarantine + other.quarantine)


class MetadataError(ValueError):
    """A metadata value outside what the adapter allows."""


class CsvFormatError(ValueError):
    """A CSV that cannot be read at all (no header, required columns missing)."""


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line in the file, for quarantine details
    values: Mapping[str, str]


@dataclass
class CsvTable:
    rows: list[CsvRow]
    problems: list[QuarantineEntry]  # malformed rows, encoding note
    encoding: str


def decode_text(data: bytes) -> tuple[str, str]:
    """UTF-8 (with or without BOM) first; latin-1 decodes any byte string, so it never fails."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def read_csv_table(path: Path, source_path: str, required: Sequence[str]) -> CsvTable:
    """Read a metadata CSV row by row so one bad row costs one row, not the whole file.

    Header names are stripped and lower-cased; values are stripped. Rows with the wrong number of
    fields, an empty required value or a CSV syntax error become `malformed_row` entries. A file
    that is not UTF-8 is read as latin-1 and noted as `wrong_encoding` (its rows are kept).
    Raises CsvFormatError only when the header itself is unusable.
    """
    text, encoding = decode_text(path.read_bytes())
    problems: list[QuarantineEntry] = []
    if encoding != "utf-8":
        detail = "not valid UTF-8; read as latin-1 (rows kept, check accented values)"
        log.warning("%s: %s", source_path, detail)
        problems.append(QuarantineEntry(source_path, SourceReason.WRONG_ENCODING, detail))
    reader = csv.reader(io.StringIO(text, newline=""))
    header = _read_header(reader, source_path, required)
    rows: list[CsvRow] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(_malformed(source_path, reader.line_num, f"CSV syntax: {exc}"))
            continue
        row = _row_or_problem(fields, header, required, reader.line_num)
        if isinstance(row, CsvRow):
            rows.append(row)
        elif row:
            problems.append(_malformed(source_path, reader.line_num, row))
    return CsvTable(rows, problems, encoding)


def _read_header(reader: Any, source_path: str, required: Sequence[str]) -> list[str]:
    try:
        header = [name.strip().lower() for name in next(reader)]
    except (StopIteration, csv.Error) as exc:
        raise CsvFormatError(f"{source_path}: no header row ({exc!r})") from exc
    missing = [name for name in required if name not in header]
    if missing:
        raise CsvFormatError(f"{source_path}: header {header} lacks required columns {missing}")
    return header


def _row_or_problem(fields: list[str], header: list[str], required: Sequence[str], line: int) -> CsvRow | str:
    """A CsvRow, a problem description, or "" for a blank line (skipped: not data)."""
    if not any(value.strip() for value in fields):
        return ""
    if len(fields) != len(header):
        return f"expected {len(header)} fields, got {len(fields)}: {fields!r}"[:300]
    values = {name: value.strip() for name, value in zip(header, fields)}
    empty = [name for name in required if not values[name]]
    if empty:
        return f"empty required field(s) {empty}"
    return CsvRow(line, values)


def _malformed(source_path: str, line: int, detail: str) -> QuarantineEntry:
    return QuarantineEntry(source_path, SourceReason.MALFORMED_ROW, f"line {line}: {detail}")


def list_files(folder: Path) -> list[Path]:
    """Every data file under `folder`, sorted, without OS litter (dotfiles, Thumbs.db, __MACOSX)."""
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") or p.lower() in IGNORED_DIR_NAMES for p in parts[:-1]):
            continue
        if path.is_file() and not _ignored_file(path.name):
            found.append(path)
    return sorted(found)


def _ignored_file(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILE_NAMES


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


@dataclass(frozen=True)
class Rejected(Generic[T]):
    """An item `resolve_duplicates` refused, with the items that made it a duplicate."""

    item: T
    reason: SourceReason
    related: tuple[T, ...]  # the kept copy (duplicate) or the other copies (conflicting)


def resolve_duplicates(
    items: Sequence[T], key: Callable[[T], str], label: Callable[[T], str]
) -> tuple[list[T], list[Rejected[T]]]:
    """Keep one item per key: the one policy for copies, wherever they are found.

    Same key and same label: the first item (in the given order) is kept, the others are
    `duplicate` of it. Same key with different labels: nobody can tell which label is right, so
    every copy is `conflicting_duplicate`. Kept items stay in their original order.
    """
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    kept_ids: set[int] = set()
    rejected: list[Rejected[T]] = []
    for group in groups.values():
        if len({label(item) for item in group}) > 1:
            rejected.extend(
                Rejected(item, SourceReason.CONFLICTING_DUPLICATE, tuple(o for o in group if o is not item))
                for item in group
            )
            continue
        kept_ids.add(id(group[0]))
        rejected.extend(Rejected(item, SourceReason.DUPLICATE, (group[0],)) for item in group[1:])
    return [item for item in items if id(item) in kept_ids], rejected


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


class DatasetAdapter(ABC):
    """Reads one data set in its native layout. The class attributes are the data set's facts."""

    name: ClassVar[str]
    classes: ClassVar[tuple[str, ...]]  # canonical order: labels.json order
    metadata_columns: ClassVar[tuple[str, ...]] = ()  # subset of manifest.METADATA_COLUMNS
    categorical_values: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    display_names: ClassVar[Mapping[str, str]] = {}  # label -> short readable name

    def scan(self, root: Path) -> ScanResult:
        """List candidates and source-level problems; labels are canonicalised and checked."""
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{self.name}: data set root {root} does not exist")
        return self.check_labels(self._scan(root))

    @abstractmethod
    def _scan(self, root: Path) -> ScanResult:
        """Native-layout listing; labels may be raw (folder names, CSV values)."""

    def group_id_for(self, file_name: str) -> str:
        """Group of a file when the source has no better id: the image itself."""
        return Path(file_name).stem

    def display_name(self, label: str) -> str:
        return self.display_names.get(label, label)

    def canonical_label(self, raw: str) -> str | None:
        """The class `raw` names, tolerant of case and spacing ('parasitized ' -> 'Parasitized')."""
        folded = _fold(raw)
        return next((c for c in self.classes if _fold(c) == folded), None)

    def check_labels(self, result: ScanResult) -> ScanResult:
        """Canonicalise labels; candidates with a label outside `classes` become unknown_label."""
        kept, quarantine = [], list(result.quarantine)
        for cand in result.candidates:
            label = self.canonical_label(cand.label)
            if label is None:
                detail = f"{cand.label!r} is not a {self.name} class"
                quarantine.append(
                    QuarantineEntry(cand.source_path, SourceReason.UNKNOWN_LABEL, detail, label=cand.label)
                )
            else:
                kept.append(cand if label == cand.label else replace(cand, label=label))
        return ScanResult(kept, quarantine)

    def parse_metadata(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """Typed metadata for this adapter's columns; raises MetadataError on a bad value.

        age: float, NaN when empty. Categorical columns: lower-cased; empty means 'unknown'.
        """
        return {col: self._parse_value(col, (raw.get(col) or "").strip()) for col in self.metadata_columns}

    def _parse_value(self, column: str, value: str) -> Any:
        if column == "age":
            return parse_age(value)
        allowed = self.categorical_values.get(column)
        if allowed is None:
            return value
        folded = value.lower() or "unknown"
        if folded not in allowed:
            raise MetadataError(f"{column} {value!r} not in {list(allowed)}")
        return folded


def parse_age(value: str) -> float:
    """Age in years; empty or 'nan' means unknown (NaN)."""
    if value.lower() in {"", "nan", "na", "n/a", "null", "none"}:
        return math.nan
    try:
        age = float(value)
    except ValueError as exc:
        raise MetadataError(f"age {value!r} is not a number") from exc
    if not math.isfinite(age):
        raise MetadataError(f"age {value!r} is not finite")
    return age


def scan_class_folders(adapter: DatasetAdapter, root: Path, base: Path, split_hint: str = "") -> ScanResult:
    """`base/<Class>/<files>`: the folder name is the label (checked later by the adapter)."""
    result = ScanResult()
    for path in list_files(base):
        rel = relative(path, root)
        parts = path.relative_to(base).parts
        if len(parts) < 2:
            result.quarantine.append(
                QuarantineEntry(rel, SourceReason.UNKNOWN_LABEL, "file is not inside a class folder")
            )
            continue
        result.candidates.append(
            Candidate(rel, path, parts[0], adapter.group_id_for(path.name), path.stem, split_hint)
        )
    return result
