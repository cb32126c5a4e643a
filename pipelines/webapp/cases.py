"""A confirmed diagnosis becomes a labelled case in the intake drop folder, plus an audit line.

Format: README "New labelled cases (intake)": the image file and a `labels.csv` row
(file,label,group_id,age,sex,localization), so the next scheduled intake + retrain learns from it.

Writes are atomic for a reader of the drop folder: the image is written to a dot-file (which
intake ignores) and renamed; labels.csv is rewritten to a dot-file with the new row and renamed
over the old one, while an exclusive `fcntl.flock` on the drop folder itself is held: the lock
`pipelines.intake` takes for a run, so a confirmation never lands between intake's reading of
labels.csv and its moving the file to processed/ (the row would be lost), and two confirmations
never interleave. Nothing is written into the drop for the lock.

The audit log (who, when, model version, the model's prediction, the final label, the case file)
holds no patient metadata: age, sex and site go only into labels.csv, which is the case itself.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipelines.folders import FolderBusy, folder_lock, write_atomic
from pipelines.cases import FORMAT_EXTENSIONS
from pipelines.cases import LABELS_FILE as LABELS

COLUMNS = ("file", "label", "group_id", "age", "sex", "localization")
SUBFOLDER = "medscan-app"          # cases from the app, apart from other deliveries

class DropBusy(RuntimeError):
    """The drop folder stayed locked (an intake run) for longer than the caller would wait."""


@contextmanager
def intake_lock(drop: Path, timeout_s: float = 30.0) -> Iterator[None]:
    """Exclusive flock on the drop folder itself, the lock an intake run holds (see module doc)."""
    drop.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(drop, timeout_s):
            yield
    except FolderBusy:
        raise DropBusy(f"the drop folder stayed locked by an intake run for {timeout_s:g} s") from None


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_case(drop: Path, case_id: str, image: bytes, image_format: str, label: str,
               metadata: Mapping[str, Any], lock_timeout_s: float = 30.0) -> str:
    """Write the image and its labels.csv row; returns the row's `file` (relative to the drop).
    Raises DropBusy when an intake run holds the folder longer than `lock_timeout_s`."""
    rel = f"{SUBFOLDER}/{case_id}.{FORMAT_EXTENSIONS.get(image_format.upper(), 'img')}"
    row = {"file": rel, "label": label, "group_id": f"app-{case_id}",
           **{c: _cell(metadata.get(c)) for c in ("age", "sex", "localization")}}
    with intake_lock(drop, lock_timeout_s):
        write_atomic(drop / rel, image)
        labels = drop / LABELS
        old = labels.read_bytes() if labels.exists() else b""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        if not old.strip():
            writer.writeheader()
            old = b""
        elif not old.endswith(b"\n"):
            old += b"\n"
        writer.writerow(row)
        write_atomic(labels, old + out.getvalue().encode())
    return rel


def audit(log: Path, **entry: Any) -> None:
    """Append one JSON line (0600 file); the fields are the caller's, never patient metadata."""
    log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
