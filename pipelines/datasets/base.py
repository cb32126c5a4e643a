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
import os
import stat
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Mapping, Sequence, TypeVar

from pipelines.manifest import IgnoredEntry, QuarantineEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

# Operating-system litter that is never data (listed as ignored `hidden_file`, not quarantined).
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
    SYMLINK_OUTSIDE_ROOT = "symlink_outside_root"  # a link leaving the root: never followed or opened
    BROKEN_SYMLINK = "broken_symlink"  # a link inside the root to nothing (or a loop)
    PATH_OUTSIDE_ROOT = "path_outside_root"  # intake cases.csv `file` resolving outside data/intake
    SHA256_MISMATCH = "sha256_mismatch"  # intake cases.csv `sha256` is not the file's
    UNSTABLE_FILE = "unstable_file"  # intake: still being written when the pending timeout ran out


class IgnoreReason(StrEnum):
    """Why something a source holds is not a case (data/ignored.csv `reason`)."""

    HIDDEN_FILE = "hidden_file"  # dotfiles and OS litter (Thumbs.db, __MACOSX)
    SYMLINKED_DIR = "symlinked_dir"  # never descended: no loops, no second copy of a folder
    SPECIAL_FILE = "special_file"  # FIFO, socket, device: never opened, so never blocked on
    UNREAD_FOLDER = "unread_folder"  # a folder the native layout does not read (DermNet validation/)
    STRAY_FILE = "stray_file"  # a file beside the layout's folders
    UNREADABLE_DIR = "unreadable_dir"  # a folder the OS would not list
    EXTRA_FRAMES = "extra_frames"  # GIF/TIFF/MPO frames after the first (only frame 0 is a case)


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
    expected_sha256: str = ""  # a sha256 the source claims (intake cases.csv): checked on ingest


@dataclass
class ScanResult:
    """Candidates plus everything the source offered that cannot become one."""

    candidates: list[Candidate] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    ignored: list[IgnoredEntry] = field(default_factory=list)

    def merge(self, other: "ScanResult") -> "ScanResult":
        return ScanResult(
            self.candidates + other.candidates,
            self.quarantine + other.quarantine,
            self.ignored + other.ignored,
        )


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


@dataclass(frozen=True)
class ListedFile:
    """A regular file found under a folder."""

    path: Path  # where it was found (for a followed link: the link itself): what names it
    target: Path  # what to read: the file itself, or the real file a link inside the root names


@dataclass
class Listing:
    """Every entry under a folder: data files, links that must not be followed, things ignored."""

    files: list[ListedFile] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    ignored: list[IgnoredEntry] = field(default_factory=list)


def list_files(folder: Path, root: Path | None = None) -> Listing:
    """Every data file under `folder` (sorted); everything else is accounted for, never opened.

    Symlinks: a link whose real path stays inside `root` (default `folder`) and names a regular
    file is followed (it is read from its real path, so a later swap of the link cannot redirect
    the read); a link leaving the root is quarantined `symlink_outside_root` and its target is
    never opened (only the link is read, with readlink). Links to folders are never descended
    (`symlinked_dir`), FIFOs, sockets and devices are never opened (`special_file`), dotfiles and
    OS litter are `hidden_file`. Names in entries are relative to `root`.
    """
    root = Path(root or folder)
    listing = Listing()
    _walk(Path(folder), root, Path(os.path.realpath(root)), listing)
    listing.files.sort(key=lambda f: f.path)
    return listing


def _walk(directory: Path, root: Path, real_root: Path, out: Listing) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        out.ignored.append(IgnoredEntry(relative(directory, root), IgnoreReason.UNREADABLE_DIR,
                                        f"{type(exc).__name__}: {exc.strerror}"))
        return
    for entry in entries:
        path = Path(entry.path)
        rel = relative(path, root)
        if _ignored_file(entry.name) or (entry.name.lower() in IGNORED_DIR_NAMES):
            out.ignored.append(IgnoredEntry(rel, IgnoreReason.HIDDEN_FILE, "dotfile or OS litter, not data"))
        elif entry.is_symlink():
            _add_link(path, rel, real_root, out)
        elif entry.is_dir(follow_symlinks=False):
            _walk(path, root, real_root, out)
        elif entry.is_file(follow_symlinks=False):
            out.files.append(ListedFile(path, path))
        else:
            out.ignored.append(IgnoredEntry(rel, IgnoreReason.SPECIAL_FILE, _kind(entry.stat(follow_symlinks=False))))


def _add_link(path: Path, rel: str, real_root: Path, out: Listing) -> None:
    """Classify a symlink from its real path (readlink and stat only: nothing is opened)."""
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(real_root):
        detail = "symlink pointing outside the root: not followed, its target never opened"
        out.quarantine.append(QuarantineEntry(rel, SourceReason.SYMLINK_OUTSIDE_ROOT, detail))
        return
    try:
        mode = os.stat(target).st_mode
    except OSError as exc:
        out.quarantine.append(QuarantineEntry(rel, SourceReason.BROKEN_SYMLINK, f"link to nothing ({exc.strerror})"))
        return
    if stat.S_ISDIR(mode):
        out.ignored.append(IgnoredEntry(rel, IgnoreReason.SYMLINKED_DIR, "symlink to a folder: not descended"))
    elif stat.S_ISREG(mode):
        out.files.append(ListedFile(path, target))
    else:
        out.ignored.append(IgnoredEntry(rel, IgnoreReason.SPECIAL_FILE, "symlink to " + _kind(os.stat(target))))


def _kind(st: os.stat_result) -> str:
    if stat.S_ISFIFO(st.st_mode):
        what = "a FIFO"
    elif stat.S_ISSOCK(st.st_mode):
        what = "a socket"
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        what = "a device"
    else:
        what = "not a regular file"
    return f"{what}: never opened"


def unread_entries(root: Path, read: Sequence[str], why: str) -> ScanResult:
    """The top-level entries of `root` a native layout does not read, each accounted for.

    A folder becomes one `unread_folder` entry (with its file count), a file `stray_file`; links,
    FIFOs and litter are classified as `list_files` does. `why` says what the layout reads.
    """
    result = ScanResult()
    root = Path(root)
    real_root = Path(os.path.realpath(root))
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name in read:
            continue
        path, rel = Path(entry.path), entry.name
        if entry.is_dir(follow_symlinks=False) and not _ignored_file(entry.name):
            count = sum(len(files) for _, _, files in os.walk(path))
            detail = f"folder not read ({count} file(s) inside): {why}"
            result.ignored.append(IgnoredEntry(rel, IgnoreReason.UNREAD_FOLDER, detail))
        elif entry.is_file(follow_symlinks=False) and not _ignored_file(entry.name):
            result.ignored.append(IgnoredEntry(rel, IgnoreReason.STRAY_FILE, f"file not read: {why}"))
        else:
            listing = Listing()
            if _ignored_file(entry.name):
                listing.ignored.append(IgnoredEntry(rel, IgnoreReason.HIDDEN_FILE, "dotfile or OS litter, not data"))
            elif entry.is_symlink():
                _add_link(path, rel, real_root, listing)
            else:
                kind = _kind(entry.stat(follow_symlinks=False))
                listing.ignored.append(IgnoredEntry(rel, IgnoreReason.SPECIAL_FILE, kind))
            result.quarantine.extend(listing.quarantine)
            result.ignored.extend(listing.ignored)
            if listing.files:  # a link to a file inside the root: still not part of the layout
                result.ignored.append(IgnoredEntry(rel, IgnoreReason.STRAY_FILE, f"file not read: {why}"))
    return result


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
        return ScanResult(kept, quarantine, list(result.ignored))

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
    listing = list_files(base, root)
    result = ScanResult(quarantine=list(listing.quarantine), ignored=list(listing.ignored))
    for found in listing.files:
        rel = relative(found.path, root)
        parts = found.path.relative_to(base).parts
        if len(parts) < 2:
            result.quarantine.append(
                QuarantineEntry(rel, SourceReason.UNKNOWN_LABEL, "file is not inside a class folder")
            )
            continue
        name = found.path.name
        result.candidates.append(
            Candidate(rel, found.target, parts[0], adapter.group_id_for(name), Path(name).stem, split_hint)
        )
    return result
