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

Drop folder: processed files (and labels.csv) move to `<drop>/processed/<timestamp>/`.
S3: objects are left in place; `data/intake/s3_processed.csv` remembers each processed key with
its ETag and sha256, so a rerun processes nothing twice. labels.csv is re-read on every run, so on
S3 a row whose object has not arrived yet is pending too, not quarantined.

`dvc add data/intake` (the `--dvc-add` flag) then makes `dvc diff` show what arrived.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from pipelines.bounds import CaseBounds
from pipelines.config import Paths, load_params, project_root, resolve
from pipelines.datasets import DatasetAdapter, get_adapter
from pipelines.datasets.base import (
    Candidate,
    CsvFormatError,
    CsvRow,
    MetadataError,
    Rejected,
    ScanResult,
    SourceReason,
    list_files,
    read_csv_table,
    relative,
    resolve_duplicates,
)
from pipelines.images import ImageInfo, ImageRejected, try_normalize
from pipelines.manifest import METADATA_COLUMNS, QUARANTINE_COLUMNS, QuarantineEntry

INTAKE_DIR = "intake"
CASES_FILE = "cases.csv"
IMAGES_DIR = "images"
QUARANTINE_FILE = "quarantine.csv"
S3_LEDGER_FILE = "s3_processed.csv"
LABELS_FILE = "labels.csv"
PROCESSED_DIR = "processed"
ENDPOINT_ENV = "MEDSCAN_S3_ENDPOINT_URL"

CASES_COLUMNS: tuple[str, ...] = ("file", "label", "group_id", *METADATA_COLUMNS, "sha256", "received_at")
QUARANTINE_LOG_COLUMNS: tuple[str, ...] = (*QUARANTINE_COLUMNS, "received_at")
LEDGER_COLUMNS: tuple[str, ...] = ("key", "etag", "sha256", "processed_at")
LABELS_REQUIRED = ("file", "label")
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


# ---------------------------------------------------------------- data/intake, read side


def intake_dir_for(paths: Paths) -> Path:
    return paths.data / INTAKE_DIR


def ensure_intake_dir(path: Path) -> Path:
    """Create `path/images/` and a header-only `path/cases.csv` (the state before any intake)."""
    (path / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    cases = path / CASES_FILE
    if not cases.exists() or cases.stat().st_size == 0:
        _append_csv(cases, CASES_COLUMNS, [])
    return path


def scan_cases(intake_dir: Path, adapter: DatasetAdapter) -> ScanResult:
    """Accepted intake cases as ingest candidates (source_path `intake/<file>`, image_id = sha256)."""
    cases = intake_dir / CASES_FILE
    if not cases.is_file():
        return ScanResult()
    table = read_csv_table(cases, f"{INTAKE_DIR}/{CASES_FILE}", CASES_REQUIRED)
    result = ScanResult(quarantine=list(table.problems))
    for row in table.rows:
        values = row.values
        rel, path = f"{INTAKE_DIR}/{values['file']}", intake_dir / values["file"]
        if not path.is_file():
            detail = f"{CASES_FILE} line {row.line}: {values['file']!r} is missing"
            result.quarantine.append(
                QuarantineEntry(rel, SourceReason.MISSING_IMAGE, detail, values["sha256"], values["label"])
            )
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
        result.candidates.append(Candidate(rel, path, values["label"], group, values["sha256"], "", metadata))
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


# ---------------------------------------------------------------- one drop, wherever it lives


@dataclass(frozen=True)
class DropFile:
    """One file offered by a drop."""

    name: str  # relative to the drop, NFC, POSIX: what labels.csv `file` names
    path: Path  # where its bytes are readable now (the drop, or a staged S3 object)
    origin: str  # how the quarantine names it: drop-relative path or s3://bucket/key


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

    def to_summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": len(self.accepted),
            "quarantined": len(self.quarantined),
            "by_reason": dict(Counter(str(e.reason) for e in self.quarantined)),
            "pending": self.pending,
            "processed_dir": self.processed_dir,
        }


def _nfc(name: str) -> str:
    """macOS writes decomposed unicode names; compare names in one normal form."""
    return unicodedata.normalize("NFC", name.strip().replace("\\", "/").removeprefix("./"))


def _evaluate_drop(
    files: Mapping[str, DropFile],
    labels: DropFile | None,
    adapter: DatasetAdapter,
    bounds: CaseBounds,
    rows_persist: bool,
    done: frozenset[str] = frozenset(),
) -> tuple[list[_Checked], IntakeResult]:
    """Check every labels.csv row against its file (rows for `done` files are skipped). No writes."""
    result = IntakeResult(source="")
    if labels is None:
        result.pending = sorted(files)
        return [], result
    try:
        table = read_csv_table(labels.path, labels.origin, LABELS_REQUIRED)
    except CsvFormatError as exc:
        result.quarantined.append(QuarantineEntry(labels.origin, SourceReason.MALFORMED_CSV, str(exc)))
        result.pending = sorted(files)
        return [], result
    result.quarantined.extend(table.problems)
    checked: list[_Checked] = []
    used: set[str] = set()
    for row in table.rows:
        name = _nfc(row.values["file"])
        drop_file = files.get(name)
        if drop_file is None and name in done:
            continue
        if drop_file is None:
            _missing_file(result, labels, row, name, rows_persist)
            continue
        used.add(name)
        outcome = _check_row(row, drop_file, adapter, bounds)
        if isinstance(outcome, _Checked):
            checked.append(outcome)
        else:
            result.quarantined.append(outcome)
    result.pending.extend(sorted(set(files) - used))
    result.processed = sorted(used)
    return checked, result


def _missing_file(result: IntakeResult, labels: DropFile, row: CsvRow, name: str, rows_persist: bool) -> None:
    """A row naming no file: pending where labels.csv stays (S3), quarantined where it moves away."""
    if rows_persist:
        result.pending.append(f"{name} (listed in {LABELS_FILE}, not arrived)")
        return
    detail = f"line {row.line}: {name!r} is not in the drop"
    result.quarantined.append(
        QuarantineEntry(labels.origin, SourceReason.MISSING_IMAGE, detail, label=row.values["label"])
    )


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
    quarantine = [_duplicate_entry(rej) for rej in duplicates]
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


def _duplicate_entry(rej: Rejected[_Checked]) -> QuarantineEntry:
    item = rej.item
    others = ", ".join(f"{o.file.origin} [{o.label}]" for o in rej.related)
    detail = f"line {item.row.line}: same bytes as {others}" + (
        " (kept)" if rej.reason == SourceReason.DUPLICATE else ""
    )
    return QuarantineEntry(item.file.origin, rej.reason, detail, item.info.sha256, item.label)


def _store_case(item: _Checked, intake_dir: Path, received_at: str) -> dict[str, str]:
    ext = FORMAT_EXTENSIONS.get(item.info.format, item.info.format.lower() or "bin")
    rel = f"{IMAGES_DIR}/{item.info.sha256}.{ext}"
    dest = intake_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(item.file.path, dest)
    return {
        "file": rel,
        "label": item.label,
        "group_id": item.group_id,
        **{
            col: _cell(item.metadata.get(col, item.row.values.get(col, "")))
            for col in METADATA_COLUMNS
        },
        "sha256": item.info.sha256,
        "received_at": received_at,
    }


def _cell(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


def _append_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows (a header first when the file is new): intake files only ever grow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _run_drop(
    files: Mapping[str, DropFile],
    labels: DropFile | None,
    adapter: DatasetAdapter,
    intake_dir: Path,
    manifest_path: Path | None,
    bounds: CaseBounds,
    received_at: str,
    rows_persist: bool,
    done: frozenset[str] = frozenset(),
) -> IntakeResult:
    """Evaluate, accept and record one drop; the caller then moves or ledgers what was processed."""
    ensure_intake_dir(intake_dir)
    checked, result = _evaluate_drop(files, labels, adapter, bounds, rows_persist, done)
    cases, rejected = _accept(checked, known_shas(intake_dir, manifest_path), intake_dir, received_at)
    result.accepted = cases
    result.quarantined.extend(rejected)
    _append_csv(intake_dir / CASES_FILE, CASES_COLUMNS, cases)
    _append_csv(
        intake_dir / QUARANTINE_FILE,
        QUARANTINE_LOG_COLUMNS,
        [asdict(e) | {"received_at": received_at} for e in result.quarantined],
    )
    return result


# ---------------------------------------------------------------- drop folder


def _folder_files(drop: Path) -> tuple[dict[str, DropFile], DropFile | None]:
    files: dict[str, DropFile] = {}
    labels: DropFile | None = None
    for path in list_files(drop):
        rel = relative(path, drop)
        if rel.split("/", 1)[0] == PROCESSED_DIR:
            continue
        entry = DropFile(_nfc(rel), path, rel)
        if rel == LABELS_FILE:
            labels = entry
        else:
            files[entry.name] = entry
    return files, labels


def _move_processed(drop: Path, moved: Iterable[DropFile], stamp: str) -> Path:
    """Move handled files under processed/<stamp>/, keeping their relative paths."""
    target = drop / PROCESSED_DIR / stamp
    suffix = 0
    while target.exists():
        suffix += 1
        target = drop / PROCESSED_DIR / f"{stamp}-{suffix}"
    for item in moved:
        dest = target / item.origin
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(item.path, dest)
    return target


def intake_folder(
    drop: Path,
    intake_dir: Path,
    adapter: DatasetAdapter,
    manifest_path: Path | None,
    bounds: CaseBounds,
    now: datetime,
) -> IntakeResult:
    files, labels = _folder_files(drop)
    result = _run_drop(
        files, labels, adapter, intake_dir, manifest_path, bounds, _iso(now), rows_persist=False
    )
    result.source = str(drop)
    if labels is not None:
        moved = [files[name] for name in result.processed] + [labels]
        result.processed_dir = str(_move_processed(drop, moved, now.strftime("%Y%m%dT%H%M%SZ")))
    return result


# ---------------------------------------------------------------- S3 prefix


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
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
) -> IntakeResult:
    bucket, prefix = parse_s3_uri(uri)
    client = s3_client(endpoint_url)
    with tempfile.TemporaryDirectory(prefix="medscan-intake-") as tmp:
        staged = _stage_s3(client, bucket, prefix, _read_ledger(intake_dir), Path(tmp))
        result = _run_drop(
            staged.files,
            staged.labels,
            adapter,
            intake_dir,
            manifest_path,
            bounds,
            _iso(now),
            rows_persist=True,
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
    _append_csv(intake_dir / S3_LEDGER_FILE, LEDGER_COLUMNS, ledger)
    result.source = uri
    return result


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
) -> IntakeResult:
    """Take in one drop (a folder, or an `s3://bucket/prefix` URI) for data set `adapter_name`.

    `manifest_path` (data/manifest.parquet) adds its sha256s to those already accepted.
    """
    adapter = get_adapter(adapter_name)
    moment = now or datetime.now(timezone.utc)
    if isinstance(drop, str) and drop.startswith("s3://"):
        return intake_s3(drop, intake_dir, adapter, manifest_path, bounds, moment, endpoint_url)
    drop = Path(drop)
    if not drop.is_dir():
        raise FileNotFoundError(f"drop folder {drop} does not exist")
    return intake_folder(drop, intake_dir, adapter, manifest_path, bounds, moment)


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
    intake_dir = resolve(root, args.intake_dir) if args.intake_dir else intake_dir_for(paths)
    if args.init:
        print(json.dumps({"intake_dir": str(ensure_intake_dir(intake_dir))}))
        return 0
    adapter_name = args.dataset or params.get("dataset", {}).get("name")
    if not adapter_name:
        raise SystemExit("no --dataset given and no params.yaml dataset.name")
    result = intake(
        args.s3 or args.drop,
        intake_dir,
        adapter_name,
        paths.manifest,
        bounds=CaseBounds.from_params(params),
        endpoint_url=args.endpoint_url,
    )
    if args.dvc_add:
        dvc_add(intake_dir, root)
    print(json.dumps(result.to_summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
