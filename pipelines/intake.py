"""Intake: new labelled cases arrive in a drop folder or an S3 prefix and join `data/intake/`.

A drop holds images plus `labels.csv` (columns `file`, `label`, optional `group_id`, `age`,
`sex`, `localization`; `file` is the image's path relative to the drop). Each listed image is
checked (decodes safely, label in the adapter's classes, metadata allowed, image size and age
within params.yaml `bounds:` (pipelines.bounds, the same bounds ingest applies), bytes never
accepted before) and then either
  accepted:    original bytes copied to data/intake/images/<sha256>.<ext>, a row appended to
               data/intake/cases.csv (the ingest stage merges these into the manifest), or
  quarantined: a row appended to data/intake/quarantine.csv with the reason.
Images that no labels.csv row names yet stay `pending` (untouched), since their row may follow.

A sender may still be uploading: a row whose file is not there yet, was modified less than
params.yaml `intake.settle_s` ago, or decodes as truncated or empty, stays `pending` (labels.csv
stays in the drop, so its labels are kept) until `intake.pending_timeout_s` after intake first saw
it; then it is quarantined (missing_image, unstable_file, truncated_image, empty_file). When each
row first waited, and which rows of a labels.csv still in the drop were handled, is kept in
`data/intake/pending.json`.

Drop folder: processed files (and labels.csv, once none of its rows is pending) move to the archive
`<drop>.processed/<timestamp>/` BESIDE the drop (same file system, so moves are renames): the
archive is never where deliveries are scanned, so a delivered `processed/` folder is just data.
S3: objects are left in place; `data/intake/s3_processed.csv` remembers each processed key with
its ETag and sha256, so a rerun processes nothing twice. labels.csv is re-read on every run.

Safe against the sender and against crashes:
- Symlinks in the drop: a link to a regular file inside the drop is followed (read from its real
  path); a link leaving the drop is quarantined `symlink_outside_root` (its row's link is
  archived, the target is never opened); links to folders, FIFOs and sockets are never opened
  (counted as `ignored` in the summary, left in the drop).
- One intake at a time per drop folder and per intake folder: `fcntl.flock` on both folders;
  a second intake waits `intake.lock_timeout_s`, then exits 75 with a one-line message.
- Crash-safe: accepted images are written first (atomically, content-addressed); then a journal
  (`data/intake/.journal.json`, fsynced) records the rows to append and the moves to make; then
  cases.csv, quarantine.csv, the ledgers and pending.json are written, the files moved, and the
  journal removed. A run killed at any point leaves either no journal (nothing recorded: the drop
  is untouched and is taken in afresh) or a journal the next run finishes first: that run reports
  the interrupted run's cases as accepted (`recovered` in the summary), never as rejections.

`dvc add data/intake` (the `--dvc-add` flag) then makes `dvc diff` show what arrived.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from pipelines.bounds import CaseBounds
from pipelines.cases import (
    CASES_COLUMNS,
    CASES_FILE,
    FORMAT_EXTENSIONS,
    IMAGES_DIR,
    LABELS_FILE,
    QUARANTINE_FILE,
    cell,
    csv_text,
    ensure_intake_dir,
    known_shas,
)
from pipelines.errors import ConfigError, MedscanError
from pipelines.folders import FolderBusy, folder_lock, fsync_dir, write_atomic
from pipelines.config import Paths, load_params, project_root, resolve
from pipelines.datasets import DatasetAdapter, get_adapter
from pipelines.datasets.base import (
    CsvFormatError,
    CsvRow,
    IgnoreReason,
    MetadataError,
    Rejected,
    SourceReason,
    list_files,
    read_csv_table,
    relative,
    resolve_duplicates,
)
from pipelines.images import ImageInfo, ImageReason, ImageRejected, sha256_hex, try_normalize
from pipelines.manifest import METADATA_COLUMNS, QUARANTINE_COLUMNS, IgnoredEntry, QuarantineEntry

S3_LEDGER_FILE = "s3_processed.csv"
PENDING_FILE = "pending.json"
JOURNAL_FILE = ".journal.json"
ARCHIVE_SUFFIX = ".processed"  # <drop>.processed/ beside the drop: the archive of processed files
ENDPOINT_ENV = "MEDSCAN_S3_ENDPOINT_URL"
BUSY_EXIT = 75  # EX_TEMPFAIL: another intake holds the lock; try again later
# Decode results that mean "still arriving", not "bad": such a row waits for the pending timeout.
UNFINISHED_REASONS = frozenset({ImageReason.TRUNCATED_IMAGE, ImageReason.EMPTY_FILE})

QUARANTINE_LOG_COLUMNS: tuple[str, ...] = (*QUARANTINE_COLUMNS, "received_at")
LEDGER_COLUMNS: tuple[str, ...] = ("key", "etag", "sha256", "processed_at")
LABELS_REQUIRED = ("file", "label")


# ---------------------------------------------------------------- data/intake, read side


# ---------------------------------------------------------------- one drop, wherever it lives


@dataclass(frozen=True)
class IntakeSettings:
    """params.yaml `intake:`. Library defaults wait for nothing; the CLI reads params.yaml."""

    lock_timeout_s: float = 0.0  # how long a second intake waits for the first
    settle_s: float = 0.0  # a file modified less than this long ago is still being written
    pending_timeout_s: float = 86_400.0  # a waiting row is quarantined this long after first seen

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "IntakeSettings":
        section = params.get("intake") or {}
        names = ("lock_timeout_s", "settle_s", "pending_timeout_s")
        return cls(**{k: float(section[k]) for k in names if k in section})


class IntakeBusy(MedscanError, RuntimeError):
    """Another intake holds the drop (or intake) folder: a clear message, not a traceback."""


@dataclass(frozen=True)
class DropFile:
    """One file offered by a drop."""

    name: str  # relative to the drop, NFC, POSIX: what labels.csv `file` names
    path: Path  # where its bytes are readable now (the drop, or a staged S3 object)
    origin: str  # how the quarantine names it: drop-relative path or s3://bucket/key
    moved_path: Path | None = None  # what moves to the archive (the link itself for a followed link)


@dataclass
class DropListing:
    """What a drop offers: files by name, labels.csv, and what must not be read."""

    files: dict[str, DropFile] = field(default_factory=dict)
    labels: DropFile | None = None
    refused: dict[str, QuarantineEntry] = field(default_factory=dict)  # links out, FIFOs: never read
    refused_paths: dict[str, Path] = field(default_factory=dict)
    ignored: list[IgnoredEntry] = field(default_factory=list)
    atomic: bool = False  # S3: an object appears whole, so a truncated one is final, not arriving


@dataclass(frozen=True)
class _Checked:
    """A labels.csv row whose image, label and metadata all passed."""

    row: CsvRow
    file: DropFile
    info: ImageInfo
    label: str
    group_id: str
    metadata: Mapping[str, Any]


@dataclass
class IntakeResult:
    """What one intake run did. `to_summary()` is the CLI's JSON (Airflow reads `accepted`)."""

    source: str
    accepted: list[dict[str, str]] = field(default_factory=list)  # rows appended to cases.csv
    quarantined: list[QuarantineEntry] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    processed: list[str] = field(default_factory=list)  # drop files handled this run
    processed_dir: str | None = None
    ignored: list[IgnoredEntry] = field(default_factory=list)  # left in the drop, never read
    recovered: int = 0  # of `accepted`: cases an interrupted run had accepted (finished now)

    def to_summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "by_reason": dict(Counter(str(e.reason) for e in self.quarantined)),
            "pending": self.pending,
            "processed_dir": self.processed_dir,
            "ignored": len(self.ignored),
            "ignored_by_reason": dict(Counter(str(e.reason) for e in self.ignored)),
            "recovered": self.recovered,
        }

    def absorb(self, earlier: "IntakeResult") -> None:
        """Put an interrupted run's (recovered) outcome in front of this run's."""
        self.accepted = earlier.accepted + self.accepted
        self.quarantined = earlier.quarantined + self.quarantined
        self.recovered += len(earlier.accepted)
        self.processed_dir = self.processed_dir or earlier.processed_dir


def _nfc(name: str) -> str:
    """macOS writes decomposed unicode names; compare names in one normal form."""
    return unicodedata.normalize("NFC", name.strip().replace("\\", "/").removeprefix("./"))


# ---------------------------------------------------------------- pending rows (pending.json)


@dataclass
class PendingState:
    """Per source: when each waiting row was first seen, and the rows of a labels.csv still in
    the drop that were already handled (their files are in the archive, or they timed out)."""

    first_seen: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"first_seen": dict(sorted(self.first_seen.items())), "done": sorted(self.done)}


def _load_pending(intake_dir: Path) -> dict[str, Any]:
    path = intake_dir / PENDING_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _pending_for(intake_dir: Path, source: str) -> PendingState:
    raw = _load_pending(intake_dir).get(source) or {}
    return PendingState(dict(raw.get("first_seen", {})), set(raw.get("done", [])))


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- evaluating one drop (no writes)


@dataclass(frozen=True)
class _Waiting:
    """A row whose file is still arriving: why, and what to quarantine it as when time is up."""

    why: str
    entry: QuarantineEntry


def _evaluate_drop(
    listing: DropListing,
    adapter: DatasetAdapter,
    bounds: CaseBounds,
    settings: IntakeSettings,
    state: PendingState,
    now: datetime,
    done: frozenset[str] = frozenset(),
) -> tuple[list[_Checked], IntakeResult, PendingState, bool]:
    """Check every labels.csv row against its file. Returns the passing rows, the result so far,
    the new pending state, and whether labels.csv is finished (no row waits). No writes."""
    result = IntakeResult(source="", ignored=list(listing.ignored))
    files, labels = listing.files, listing.labels
    refused = [f"{n} (never read: quarantined once a row names it)" for n in sorted(listing.refused)]
    if labels is None or _unsettled(labels.path, settings):
        result.pending = sorted(files) + refused + ([f"{LABELS_FILE} (still being written)"] if labels else [])
        return [], result, state, False
    try:
        table = read_csv_table(labels.path, labels.origin, LABELS_REQUIRED)
    except CsvFormatError as exc:
        result.quarantined.append(QuarantineEntry(labels.origin, SourceReason.MALFORMED_CSV, str(exc)))
        result.pending = sorted(files)
        return [], result, state, True
    result.quarantined.extend(table.problems)
    checked: list[_Checked] = []
    used: set[str] = set()
    new_state = PendingState(done=set(state.done))
    iso_now = _iso(now)
    for row in table.rows:
        name = _nfc(row.values["file"])
        if name in done or name in new_state.done:
            continue
        if name in listing.refused:
            entry = listing.refused[name]
            result.quarantined.append(replace_detail(entry, f"line {row.line}: {entry.detail}", row.values["label"]))
            used.add(name)
            continue
        outcome = _row_outcome(row, files.get(name), listing, name, adapter, bounds, settings)
        if isinstance(outcome, _Waiting):
            since = state.first_seen.get(name, iso_now)
            if now - _parse_iso(since) >= timedelta(seconds=settings.pending_timeout_s):
                result.quarantined.append(outcome.entry)
                if name in files:
                    used.add(name)
                else:
                    new_state.done.add(name)
            else:
                new_state.first_seen[name] = since
                result.pending.append(f"{name} (listed in {LABELS_FILE}, {outcome.why}; waiting since {since})")
            continue
        used.add(name)
        if isinstance(outcome, _Checked):
            checked.append(outcome)
        else:
            result.quarantined.append(outcome)
    result.pending.extend(sorted(set(files) - used - {n for n in files if n in new_state.first_seen}))
    result.pending.extend(r for n, r in zip(sorted(listing.refused), refused) if n not in used)
    result.processed = sorted(used)
    result.ignored = [e for e in result.ignored if _nfc(e.source_path) not in used]  # now quarantined
    return checked, result, new_state, not new_state.first_seen


def replace_detail(entry: QuarantineEntry, detail: str, label: str) -> QuarantineEntry:
    return QuarantineEntry(entry.source_path, entry.reason, detail, entry.sha256, label)


def _unsettled(path: Path, settings: IntakeSettings) -> bool:
    """Modified less than `settle_s` ago (wall clock, like mtime): its sender may still write."""
    if settings.settle_s <= 0:
        return False
    try:
        return time.time() - os.stat(path).st_mtime < settings.settle_s
    except OSError:
        return True


def _row_outcome(
    row: CsvRow,
    drop_file: DropFile | None,
    listing: DropListing,
    name: str,
    adapter: DatasetAdapter,
    bounds: CaseBounds,
    settings: IntakeSettings,
) -> _Checked | QuarantineEntry | _Waiting:
    label = row.values["label"]
    timeout = f"after intake.pending_timeout_s ({settings.pending_timeout_s:g} s)"
    if drop_file is None:
        detail = f"line {row.line}: {name!r} is not in the drop {timeout}"
        origin = listing.labels.origin if listing.labels else LABELS_FILE
        return _Waiting("not arrived", QuarantineEntry(origin, SourceReason.MISSING_IMAGE, detail, label=label))
    if _unsettled(drop_file.path, settings):
        detail = f"line {row.line}: still being modified {timeout}"
        entry = QuarantineEntry(drop_file.origin, SourceReason.UNSTABLE_FILE, detail, label=label)
        return _Waiting("still being written", entry)
    outcome = _check_row(row, drop_file, adapter, bounds)
    if isinstance(outcome, QuarantineEntry) and outcome.reason in UNFINISHED_REASONS and not listing.atomic:
        entry = replace_detail(outcome, f"{outcome.detail} ({timeout})", label)
        return _Waiting(f"{outcome.reason}, may still be uploading", entry)
    return outcome


def _check_row(
    row: CsvRow, drop_file: DropFile, adapter: DatasetAdapter, bounds: CaseBounds
) -> _Checked | QuarantineEntry:
    raw_label = row.values["label"]

    def reject(reason: str, detail: str, sha: str = "") -> QuarantineEntry:
        return QuarantineEntry(drop_file.origin, reason, f"line {row.line}: {detail}", sha, raw_label)

    outcome = try_normalize(drop_file.path, None, bounds.image_limits())
    if isinstance(outcome, ImageRejected):
        return reject(outcome.reason, outcome.detail, outcome.sha256)
    label = adapter.canonical_label(raw_label)
    if label is None:
        return reject(
            SourceReason.UNKNOWN_LABEL, f"{raw_label!r} is not a {adapter.name} class", outcome.sha256
        )
    try:
        metadata = adapter.parse_metadata(row.values)
    except MetadataError as exc:
        return reject(SourceReason.INVALID_METADATA, str(exc), outcome.sha256)
    problem = bounds.metadata_problem(metadata)
    if problem is not None:
        return reject(*problem, outcome.sha256)
    group = row.values.get("group_id") or adapter.group_id_for(drop_file.name)
    return _Checked(row, drop_file, outcome, label, group, metadata)


def _accept(
    checked: list[_Checked], known: Mapping[str, str], intake_dir: Path, received_at: str
) -> tuple[list[dict[str, str]], list[QuarantineEntry]]:
    """Copy the new, unique images into data/intake/images; everything else is quarantined."""
    kept, duplicates = resolve_duplicates(checked, key=lambda c: c.info.sha256, label=lambda c: c.label)
    quarantine = [_duplicate_row_entry(rej) for rej in duplicates]
    cases: list[dict[str, str]] = []
    for item in kept:
        before = known.get(item.info.sha256)
        if before is not None:
            detail = f"line {item.row.line}: same bytes already accepted ({before})"
            quarantine.append(
                QuarantineEntry(
                    item.file.origin, SourceReason.ALREADY_ACCEPTED, detail, item.info.sha256, item.label
                )
            )
        else:
            cases.append(_store_case(item, intake_dir, received_at))
    return cases, quarantine


def _duplicate_row_entry(rej: Rejected[_Checked]) -> QuarantineEntry:
    """A drop row whose bytes another row of the same drop carries: named by its labels.csv line."""
    item = rej.item
    others = ", ".join(f"{o.file.origin} [{o.label}]" for o in rej.related)
    detail = f"line {item.row.line}: same bytes as {others}" + (
        " (kept)" if rej.reason == SourceReason.DUPLICATE else ""
    )
    return QuarantineEntry(item.file.origin, rej.reason, detail, item.info.sha256, item.label)


def _store_case(item: _Checked, intake_dir: Path, received_at: str) -> dict[str, str]:
    """Write the original bytes (the very bytes that were hashed and checked) atomically."""
    ext = FORMAT_EXTENSIONS.get(item.info.format, item.info.format.lower() or "bin")
    rel = f"{IMAGES_DIR}/{item.info.sha256}.{ext}"
    data = item.file.path.read_bytes()
    if sha256_hex(data) != item.info.sha256:
        raise RuntimeError(f"{item.file.origin} changed while intake read it; rerun intake")
    write_atomic(intake_dir / rel, data)
    return {
        "file": rel,
        "label": item.label,
        "group_id": item.group_id,
        **{
            col: cell(item.metadata.get(col, item.row.values.get(col, "")))
            for col in METADATA_COLUMNS
        },
        "sha256": item.info.sha256,
        "received_at": received_at,
    }


# ---------------------------------------------------------------- durable writes and the journal


def _planned_append(path: Path, columns: Iterable[str], rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A journal entry: the file's size now and the exact text to append after it (idempotent:
    replaying truncates back to that size first, so a half-done append is never doubled)."""
    size = path.stat().st_size if path.exists() else 0
    return {"file": path.name, "size": size, "text": csv_text(columns, rows, size == 0) if rows else ""}


def _apply_append(intake_dir: Path, plan: Mapping[str, Any]) -> None:
    if not plan["text"]:
        return
    path = intake_dir / plan["file"]
    with open(path, "a+b") as fh:
        fh.truncate(plan["size"])
        fh.seek(plan["size"])
        fh.write(plan["text"].encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _move_one(src: Path, dest: Path) -> None:
    """Move one processed file into the archive (a rename; copy + fsync + unlink across devices).
    Idempotent, so a journal replay after a crash can call it again."""
    if not os.path.lexists(src):
        return  # moved before the crash
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: the archive is on another device
            raise
        shutil.copy2(src, dest, follow_symlinks=False)
        os.unlink(src)


def _commit(intake_dir: Path, journal: dict[str, Any]) -> None:
    """Journal first (fsynced), then the appends, pending.json and the moves, then no journal."""
    write_atomic(intake_dir / JOURNAL_FILE, json.dumps(journal, sort_keys=True).encode("utf-8"))
    _replay(intake_dir, journal)


def _replay(intake_dir: Path, journal: Mapping[str, Any]) -> None:
    for plan in journal["appends"]:
        _apply_append(intake_dir, plan)
    if journal.get("pending") is not None:
        write_atomic(intake_dir / PENDING_FILE, json.dumps(journal["pending"], indent=1, sort_keys=True).encode())
    for src, dest in journal["moves"]:
        _move_one(Path(src), Path(dest))
    for folder in sorted({str(Path(d).parent) for _, d in journal["moves"]}):
        fsync_dir(Path(folder))
    (intake_dir / JOURNAL_FILE).unlink()
    fsync_dir(intake_dir)


def _remove_temporaries(intake_dir: Path) -> None:
    """A kill in the middle of an atomic write leaves its `.tmp-*` file; only intake writes them."""
    for folder in (intake_dir, intake_dir / IMAGES_DIR):
        for path in folder.glob(".tmp-*"):
            path.unlink(missing_ok=True)


def recover(intake_dir: Path) -> IntakeResult | None:
    """Finish what an interrupted run recorded in its journal; its outcome, or None."""
    path = intake_dir / JOURNAL_FILE
    if not path.is_file():
        return None
    journal = json.loads(path.read_text(encoding="utf-8"))
    _replay(intake_dir, journal)
    done = journal["result"]
    return IntakeResult(
        source=done["source"],
        accepted=done["accepted"],
        quarantined=[QuarantineEntry(**e) for e in done["quarantined"]],
        processed_dir=done["processed_dir"],
    )


def _journal(
    intake_dir: Path,
    result: IntakeResult,
    received_at: str,
    moves: list[tuple[Path, Path]],
    pending: dict[str, Any] | None,
    ledger: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    appends = [
        _planned_append(intake_dir / CASES_FILE, CASES_COLUMNS, result.accepted),
        _planned_append(
            intake_dir / QUARANTINE_FILE,
            QUARANTINE_LOG_COLUMNS,
            [asdict(e) | {"received_at": received_at} for e in result.quarantined],
        ),
    ]
    if ledger is not None:
        appends.append(_planned_append(intake_dir / S3_LEDGER_FILE, LEDGER_COLUMNS, ledger))
    return {
        "appends": appends,
        "pending": pending,
        "moves": [[str(a), str(b)] for a, b in moves],
        "result": {
            "source": result.source,
            "accepted": result.accepted,
            "quarantined": [asdict(e) for e in result.quarantined],
            "processed_dir": result.processed_dir,
        },
    }


def _pending_doc(intake_dir: Path, source: str, state: PendingState, finished: bool) -> dict[str, Any]:
    doc = _load_pending(intake_dir)
    if finished or (not state.first_seen and not state.done):
        doc.pop(source, None)
    else:
        doc[source] = state.to_json()
    return doc


# ---------------------------------------------------------------- one intake run, under locks


@contextmanager
def _locked(folder: Path, timeout_s: float, what: str) -> Iterator[None]:
    """An exclusive flock on the folder itself (nothing written into the drop)."""
    try:
        with folder_lock(folder, timeout_s):
            yield
    except FolderBusy:
        raise IntakeBusy(
            f"another intake is running on {what} {folder}; gave up after {timeout_s:g} s "
            "(params.yaml intake.lock_timeout_s). Run intake again once it has finished."
        ) from None


def _run_drop(
    listing: DropListing,
    adapter: DatasetAdapter,
    intake_dir: Path,
    manifest_path: Path | None,
    bounds: CaseBounds,
    settings: IntakeSettings,
    now: datetime,
    source: str,
    done: frozenset[str] = frozenset(),
) -> tuple[IntakeResult, PendingState, bool]:
    """Evaluate one drop and store its accepted images; the caller journals and commits."""
    ensure_intake_dir(intake_dir)
    state = _pending_for(intake_dir, source)
    checked, result, new_state, finished = _evaluate_drop(listing, adapter, bounds, settings, state, now, done)
    cases, rejected = _accept(checked, known_shas(intake_dir, manifest_path), intake_dir, _iso(now))
    result.accepted = cases
    result.quarantined.extend(rejected)
    result.source = source
    return result, new_state, finished


# ---------------------------------------------------------------- drop folder


def archive_dir_for(drop: Path) -> Path:
    """`<drop>.processed/`, beside the drop: never inside what is scanned for deliveries."""
    drop = Path(os.path.realpath(drop))
    return drop.parent / f"{drop.name}{ARCHIVE_SUFFIX}"


def _folder_listing(drop: Path) -> DropListing:
    found = list_files(drop)
    listing = DropListing(ignored=list(found.ignored))
    for entry in found.quarantine:  # links leaving the drop (or broken): refused by name
        name = _nfc(entry.source_path)
        listing.refused[name] = entry
        listing.refused_paths[name] = drop / entry.source_path
    for entry in found.ignored:  # a row naming a FIFO or a linked folder: refused, never opened
        if entry.reason in (IgnoreReason.SPECIAL_FILE, IgnoreReason.SYMLINKED_DIR):
            name = _nfc(entry.source_path)
            listing.refused[name] = QuarantineEntry(entry.source_path, ImageReason.UNREADABLE_FILE, entry.detail)
            listing.refused_paths[name] = drop / entry.source_path
    for item in found.files:
        rel = relative(item.path, drop)
        entry = DropFile(_nfc(rel), item.target, rel, item.path)
        if rel == LABELS_FILE:
            listing.labels = entry
        else:
            listing.files[entry.name] = entry
    return listing


def _archive_target(drop: Path, stamp: str) -> Path:
    archive = archive_dir_for(drop)
    target, suffix = archive / stamp, 0
    while target.exists():
        suffix += 1
        target = archive / f"{stamp}-{suffix}"
    return target


def intake_folder(
    drop: Path,
    intake_dir: Path,
    adapter: DatasetAdapter,
    manifest_path: Path | None,
    bounds: CaseBounds,
    now: datetime,
    settings: IntakeSettings = IntakeSettings(),
) -> IntakeResult:
    drop = Path(os.path.realpath(drop))
    listing = _folder_listing(drop)
    source = str(drop)
    result, state, finished = _run_drop(listing, adapter, intake_dir, manifest_path, bounds, settings, now, source)
    moves: list[tuple[Path, Path]] = []
    if result.processed or (finished and listing.labels is not None):
        target = _archive_target(drop, now.strftime("%Y%m%dT%H%M%SZ"))
        for name in result.processed:
            item = listing.files.get(name)
            src = (item.moved_path or item.path) if item else listing.refused_paths[name]
            moves.append((src, target / relative(src, drop)))
        if finished and listing.labels is not None:
            moves.append((drop / LABELS_FILE, target / LABELS_FILE))
        result.processed_dir = str(target)
    if listing.labels is not None and not finished:
        state.done |= set(result.processed)
    pending = _pending_doc(intake_dir, source, state, finished)
    _commit(intake_dir, _journal(intake_dir, result, _iso(now), moves, pending))
    return result


# ---------------------------------------------------------------- S3 prefix


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/")."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"no bucket in {uri!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client(endpoint_url: str | None = None) -> Any:
    """boto3 S3 client; endpoint from the argument, else MEDSCAN_S3_ENDPOINT_URL, else AWS."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url or os.environ.get(ENDPOINT_ENV) or None)


def _read_ledger(intake_dir: Path) -> set[tuple[str, str]]:
    ledger = intake_dir / S3_LEDGER_FILE
    if not ledger.is_file():
        return set()
    frame = pd.read_csv(ledger, dtype=str, keep_default_na=False)
    return set(zip(frame["key"], frame["etag"]))


@dataclass
class _S3Staged:
    files: dict[str, DropFile] = field(default_factory=dict)
    labels: DropFile | None = None
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (key, etag)
    done: set[str] = field(default_factory=set)  # names processed by earlier runs


def _stage_s3(
    client: Any, bucket: str, prefix: str, ledger: set[tuple[str, str]], staging: Path
) -> _S3Staged:
    """Download labels.csv and every object not yet processed (key + ETag) into `staging`."""
    staged = _S3Staged()
    numbers = itertools.count()  # staged under numbered names: a key may hold "../"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key, etag = obj["Key"], obj["ETag"].strip('"')
            name = _nfc(key[len(prefix) :])
            if not name or key.endswith("/") or any(part.startswith(".") for part in name.split("/")):
                continue
            if name != LABELS_FILE and (key, etag) in ledger:
                staged.done.add(name)
                continue
            local = staging / f"{next(numbers):06d}{Path(name).suffix}"
            client.download_file(bucket, key, str(local))
            entry = DropFile(name, local, f"s3://{bucket}/{key}")
            if name == LABELS_FILE:
                staged.labels = entry
            else:
                staged.files[name], staged.keys[name] = entry, (key, etag)
    return staged


def intake_s3(
    uri: str,
    intake_dir: Path,
    adapter: DatasetAdapter,
    manifest_path: Path | None,
    bounds: CaseBounds,
    now: datetime,
    endpoint_url: str | None = None,
    settings: IntakeSettings = IntakeSettings(),
) -> IntakeResult:
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(endpoint_url)
    # S3 objects appear whole (no settle window); a truncated upload still waits for the timeout.
    s3_settings = IntakeSettings(settings.lock_timeout_s, 0.0, settings.pending_timeout_s)
    with tempfile.TemporaryDirectory(prefix="medscan-intake-") as tmp:
        staged = _stage_s3(client, bucket, prefix, _read_ledger(intake_dir), Path(tmp))
        listing = DropListing(files=staged.files, labels=staged.labels, atomic=True)
        result, state, _ = _run_drop(
            listing,
            adapter,
            intake_dir,
            manifest_path,
            bounds,
            s3_settings,
            now,
            uri,
            done=frozenset(staged.done - set(staged.files)),
        )
        ledger = [
            {
                "key": staged.keys[n][0],
                "etag": staged.keys[n][1],
                "sha256": _file_sha(staged.files[n].path),
                "processed_at": _iso(now),
            }
            for n in result.processed
        ]
    pending = _pending_doc(intake_dir, uri, state, finished=False)
    _commit(intake_dir, _journal(intake_dir, result, _iso(now), [], pending, ledger))
    return result


def _file_sha(path: Path) -> str:
    return sha256_hex(path.read_bytes())


# ---------------------------------------------------------------- entry points


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def intake(
    drop: Path | str,
    intake_dir: Path,
    adapter_name: str,
    manifest_path: Path | None = None,
    *,
    bounds: CaseBounds = CaseBounds(),
    endpoint_url: str | None = None,
    now: datetime | None = None,
    settings: IntakeSettings = IntakeSettings(),
) -> IntakeResult:
    """Take in one drop (a folder, or an `s3://bucket/prefix` URI) for data set `adapter_name`.

    `manifest_path` (data/manifest.parquet) adds its sha256s to those already accepted. Holds
    an exclusive lock on the drop folder and the intake folder (IntakeBusy after
    `settings.lock_timeout_s`), and first finishes the journal of an interrupted run, if any.
    """
    adapter = get_adapter(adapter_name)
    moment = now or datetime.now(timezone.utc)
    is_s3 = isinstance(drop, str) and drop.startswith("s3://")
    if not is_s3 and not Path(drop).is_dir():
        raise FileNotFoundError(f"drop folder {drop} does not exist")
    intake_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as locks:
        if not is_s3:
            locks.enter_context(_locked(Path(drop), settings.lock_timeout_s, "drop folder"))
        locks.enter_context(_locked(intake_dir, settings.lock_timeout_s, "intake folder"))
        _remove_temporaries(intake_dir)
        earlier = recover(intake_dir)
        if is_s3:
            result = intake_s3(str(drop), intake_dir, adapter, manifest_path, bounds, moment, endpoint_url, settings)
        else:
            result = intake_folder(Path(drop), intake_dir, adapter, manifest_path, bounds, moment, settings)
    if earlier is not None:
        result.absorb(earlier)
    return result


def dvc_add(intake_dir: Path, cwd: Path) -> None:
    """Version the intake folder so `dvc diff` shows what arrived."""
    subprocess.run([sys.executable, "-m", "dvc", "add", str(intake_dir)], cwd=cwd, check=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.intake", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--drop", type=Path, help="drop folder with images and labels.csv")
    source.add_argument("--s3", help="s3://bucket/prefix with images and labels.csv")
    source.add_argument(
        "--init", action="store_true", help="only create the empty intake folder (header-only cases.csv)"
    )
    parser.add_argument("--endpoint-url", help=f"S3 endpoint (default: ${ENDPOINT_ENV}, else AWS)")
    parser.add_argument("--dataset", help="adapter name (default: params.yaml dataset.name)")
    parser.add_argument("--intake-dir", type=Path, help="default: data/intake")
    parser.add_argument(
        "--dvc-add", action="store_true", help="run `dvc add` on the intake folder afterwards"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: prints a JSON summary whose `accepted` count lets Airflow skip retraining."""
    args = _parse_args(argv)
    root = project_root()
    paths = Paths(root)
    params = load_params(root) if (root / "params.yaml").is_file() else {}
    intake_dir = resolve(root, args.intake_dir) if args.intake_dir else paths.intake
    if args.init:
        print(json.dumps({"intake_dir": str(ensure_intake_dir(intake_dir))}))
        return 0
    adapter_name = args.dataset or params.get("dataset", {}).get("name")
    if not adapter_name:
        raise SystemExit("no --dataset given and no params.yaml dataset.name")
    try:
        result = intake(
            args.s3 or args.drop,
            intake_dir,
            adapter_name,
            paths.manifest,
            bounds=CaseBounds.from_params(params),
            endpoint_url=args.endpoint_url,
            settings=IntakeSettings.from_params(params),
        )
    except IntakeBusy as exc:
        print(f"intake: {exc}", file=sys.stderr)
        return BUSY_EXIT
    if args.dvc_add:
        dvc_add(intake_dir, root)
    print(json.dumps(result.to_summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
