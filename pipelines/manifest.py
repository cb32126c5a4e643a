"""The manifest: one row per accepted image, the table every stage after ingest reads.

Also the quarantine list: one row per rejected input, with a machine-readable reason and a
human-readable detail, so nothing a source offered is ever silently lost.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipelines.config import Paths

# Columns every manifest has, in order. Metadata columns follow where a data set has them.
CORE_COLUMNS: tuple[str, ...] = (
    "image_id",     # stable id from the source (HAM image_id, file stem, ...)
    "path",         # normalised copy, relative to the project root: data/images/<sha256>.png
    "source_path",  # original file, relative to the data set root
    "sha256",       # of the original bytes
    "label",        # class name, one of labels.json
    "group_id",     # lesion_id / patient prefix / file stem: splits never cut a group
    "width",        # original size in pixels
    "height",
    "source",       # data set adapter name
    "split_hint",   # split given by the distribution (DermNet train/test) or empty
)
METADATA_COLUMNS: tuple[str, ...] = ("age", "sex", "localization")

QUARANTINE_COLUMNS: tuple[str, ...] = ("source_path", "reason", "detail", "sha256", "label")
# What a source holds that is not a case at all (an unread folder, a FIFO, a GIF's later frames):
# listed with a reason in data/ignored.csv, so nothing is dropped without a trace.
IGNORED_COLUMNS: tuple[str, ...] = ("source_path", "reason", "detail")

# The split stage's names, in the order every report lists them. Here, not in the split stage, because
# train, evaluate and promote read the splits too and stages never import stages.
TRAIN, VAL, TEST = "train", "val", "test"
SPLITS: tuple[str, ...] = (TRAIN, VAL, TEST)


@dataclass(frozen=True)
class QuarantineEntry:
    """One input kept out of the data set, and why."""

    source_path: str
    reason: str          # short code, e.g. corrupt_image, unknown_label, conflicting_duplicate
    detail: str = ""
    sha256: str = ""
    label: str = ""


@dataclass(frozen=True)
class IgnoredEntry:
    """Something a source holds that is not offered as a case, and why it was left alone."""

    source_path: str
    reason: str          # e.g. unread_folder, stray_file, symlinked_dir, special_file, extra_frames
    detail: str = ""


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def write_quarantine(entries: list[QuarantineEntry], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(e) for e in entries], columns=list(QUARANTINE_COLUMNS))
    frame.to_csv(path, index=False)


def write_ignored(entries: list[IgnoredEntry], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(e) for e in entries], columns=list(IGNORED_COLUMNS))
    frame.to_csv(path, index=False)


def read_quarantine(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=list(QUARANTINE_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_labels(classes: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"classes": classes}, indent=2) + "\n", encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    return list(json.loads(path.read_text(encoding="utf-8"))["classes"])


def read_splits(paths: Paths) -> dict[str, pd.DataFrame]:
    """The split stage's output as one frame per split (row order is the manifest's)."""
    frame = read_manifest(paths.splits)
    return {s: frame[frame["split"] == s].reset_index(drop=True) for s in SPLITS}
