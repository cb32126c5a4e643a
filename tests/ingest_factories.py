"""Tiny generated inputs for the ingest/intake tests: images in every awkward form, native layouts.

Images are a few pixels of seeded noise, so each seed gives different bytes (different sha256).
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

HAM_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def noise(size: tuple[int, int] = (16, 12), seed: int = 0, channels: int = 3) -> np.ndarray:
    width, height = size
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_bytes(
    seed: int = 0, fmt: str = "PNG", size: tuple[int, int] = (16, 12), mode: str = "RGB"
) -> bytes:
    """An encoded image of `mode` (RGB, L, RGBA, CMYK, P, I;16) with seeded content."""
    if mode == "I;16":
        pixels = noise(size, seed, 1).astype(np.uint16) * 257
        img = Image.fromarray(pixels)
    else:
        img = Image.fromarray(noise(size, seed)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims width x height pixels: 40-odd bytes, decoded never."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def ham_row(
    n: int,
    dx: str = "nv",
    lesion: str | None = None,
    age: str = "45.0",
    sex: str = "male",
    localization: str = "back",
) -> tuple[str, ...]:
    return (lesion or f"HAM_{n:07d}", f"ISIC_{n:07d}", dx, "histo", age, sex, localization)


def write_ham(
    root: Path,
    rows: Iterable[Sequence[str]],
    image_dir: str = "images",
    images: bool = True,
    encoding: str = "utf-8",
    header: Sequence[str] = HAM_HEADER,
) -> Path:
    """HAM10000 layout; each row's image (seeded by its position) is written unless images=False."""
    rows = [tuple(r) for r in rows]
    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    (root / "HAM10000_metadata.csv").write_bytes(buf.getvalue().encode(encoding))
    for seed, row in enumerate(rows):
        if images and len(row) > 1:
            write(root / image_dir / f"{row[1]}.jpg", image_bytes(seed, "JPEG"))
    return root


def write_class_folders(
    base: Path,
    counts: dict[str, int],
    fmt: str = "PNG",
    seed0: int = 0,
    name: str = "C1P1ThinF_IMG_20150101_000000_cell_{n}",
) -> list[Path]:
    """`base/<Class>/<name>.png` with distinct images; returns the files written."""
    written, seed = [], seed0
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    for label, count in counts.items():
        for n in range(count):
            written.append(write(base / label / f"{name.format(n=n)}.{ext}", image_bytes(seed, fmt)))
            seed += 1
    return written


def write_labels_csv(
    drop: Path,
    rows: Iterable[Sequence[str]],
    header: Sequence[str] = ("file", "label", "group_id", "age", "sex", "localization"),
) -> Path:
    drop.mkdir(parents=True, exist_ok=True)
    with open(drop / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return drop / "labels.csv"
