"""Safe image probing and normalisation: every stored image is an 8-bit RGB PNG of bounded size.

Sources hand us anything: empty files, text named `.jpg`, truncated downloads, CMYK JPEGs, 16-bit
PNGs, palette images with transparency, and files whose header claims billions of pixels. This
module decides, for one file, "accepted, and here is its normalised copy" or "rejected, and here is
a machine-readable reason". It never lets a bad file crash the run: every failure is an
`ImageRejected` carrying a reason code from `ImageReason`.

The stored copy is content-addressed by the sha256 of the ORIGINAL bytes, so the same source file
always maps to the same `data/images/<sha256>.png`, whichever data set or intake drop it came from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError


class ImageReason(StrEnum):
    """Why one file was kept out (the `reason` column of the quarantine)."""

    UNREADABLE_FILE = "unreadable_file"  # the OS could not read it
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"  # no image format recognised the bytes
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"  # a side over bounds.max_side (a scan strip, a stitched panorama)
    TRUNCATED_IMAGE = "truncated_image"
    CORRUPT_IMAGE = "corrupt_image"  # recognised, but the pixel data does not decode
    UNSUPPORTED_MODE = "unsupported_mode"  # decoded, but no sane conversion to RGB exists


class ImageRejected(Exception):
    """A file that must not enter the data set; `reason` is an `ImageReason` value."""

    def __init__(self, reason: ImageReason, detail: str = "", sha256: str = "") -> None:
        detail = stable_detail(detail)
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail
        self.sha256 = sha256

    def __reduce__(self) -> tuple[Any, ...]:
        """Keep the fields when the exception crosses a process-pool boundary."""
        return (type(self), (self.reason, self.detail, self.sha256))


# PIL names the in-memory buffer in its messages (`<_io.BytesIO object at 0x7f...>`): an address
# that differs on every run would make two ingests of the same input write different quarantines.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def stable_detail(text: str) -> str:
    """A rejection detail without memory addresses, so the same input gives the same bytes."""
    return _OBJECT_REPR.sub("the file", text)


@dataclass(frozen=True)
class ImageLimits:
    """What a usable image is: built by `pipelines.bounds.CaseBounds.image_limits` from params.yaml
    `bounds:` (sizes) and `ingest.store_max_side` (the normalised copy). Defaults equal params.yaml."""

    store_max_side: int = 256
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_side: int = 20_000


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records about an accepted image."""

    sha256: str  # of the original bytes
    width: int  # original size, as stored in the file
    height: int
    mode: str  # original PIL mode, e.g. RGB, L, CMYK, I;16
    format: str  # detected format, e.g. JPEG, PNG (never trust the extension)
    stored_path: Path | None  # normalised PNG, or None when only probing
    stored_size: tuple[int, int]
    frames: int = 1  # frames in the file (GIF, TIFF, MPO); only the first is the case


# Formats that carry high bit depths with no palette: scale to 8 bits instead of clipping.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# PNG encoding dominates ingest time. Measured here (CPU ms per image, KiB per file):
#   PIL default (zlib level 6): HAM 9.6 ms 33 KiB
#   level 1:                    HAM 2.3 ms 37 KiB, DermNet 4.2 ms 65 KiB, malaria 1.1 ms 14.5 KiB
#   level 1 + Z_RLE (chosen):   HAM 2.1 ms 34 KiB, DermNet 2.8 ms 68 KiB, malaria 0.9 ms 13.1 KiB
PNG_SAVE_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# Bump when a change here alters the bytes of a normalised copy: it invalidates the ingest cache.
# 2: the cache index records `frames` (the stored bytes are those of version 1).
NORMALISATION_VERSION = 2


def normalisation_digest(store_max_side: int) -> str:
    """Short digest of everything that decides the bytes of a normalised copy, for cache keys.

    The size bounds are left out on purpose: they decide acceptance, not the bytes, and are
    re-checked on every run from the recorded original size.
    """
    facts = {
        "version": NORMALISATION_VERSION,
        "store_max_side": int(store_max_side),
        "png": {k: int(v) for k, v in sorted(PNG_SAVE_OPTIONS.items())},
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
    return sha256_hex(json.dumps(facts, sort_keys=True).encode())[:16]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_source(src: Path | bytes) -> bytes:
    """Read once: the bytes are both hashed and decoded, so the two always agree."""
    if isinstance(src, bytes):
        return src
    try:
        # O_NOFOLLOW: a symlink is never read through (scans hand over real paths); O_NONBLOCK:
        # opening a FIFO returns at once, and fstat then refuses it before any read could block.
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageRejected(ImageReason.UNREADABLE_FILE, f"{type(exc).__name__}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRejected(ImageReason.UNREADABLE_FILE, "not a regular file: never read")
        try:
            return fh.read()
        except OSError as exc:
            raise ImageRejected(ImageReason.UNREADABLE_FILE, f"{type(exc).__name__}: {exc.strerror}") from exc


def stored_name(sha256: str) -> str:
    """File name of the normalised copy: content-addressed by the original bytes."""
    return f"{sha256}.png"


def normalize_image(
    src: Path | bytes,
    out_dir: Path | None = None,
    limits: ImageLimits = ImageLimits(),
) -> ImageInfo:
    """Validate one image and, when `out_dir` is given, write its normalised RGB PNG there.

    Raises ImageRejected (with a reason code) for anything unusable; never anything else for bad
    input. The size check happens on the header, before any pixel is decoded, so a bomb costs
    nothing; `img.load()` then forces a full decode so truncated files are caught here, not in
    the middle of training.
    """
    sha, img, (width, height), frames, rgb = _normalised(src, limits)
    stored = _write_png(rgb, out_dir / stored_name(sha)) if out_dir is not None else None
    return ImageInfo(sha, width, height, img.mode, img.format or "", stored, rgb.size, frames)


def normalized_pixels(src: Path | bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """The pixels [H, W, 3] uint8 of the normalised copy `normalize_image` would store, in memory.

    Serving feeds uploads through this, so a model sees exactly what ingest stored for training
    (PNG is lossless: decoding the stored copy gives these same bytes). Raises ImageRejected.
    """
    return np.asarray(_normalised(src, limits)[4], dtype=np.uint8)


def _normalised(src: Path | bytes, limits: ImageLimits
                ) -> tuple[str, Image.Image, tuple[int, int], int, Image.Image]:
    """(sha256 of the original bytes, the opened original, its size as stored in the file (before
    a JPEG draft shrinks it), its frame count, its normalised RGB copy)."""
    data = read_source(src)
    if not data:
        raise ImageRejected(ImageReason.EMPTY_FILE, "0 bytes")
    sha = sha256_hex(data)
    try:
        img = _open_checked(data, limits)
        size = img.size
        frames = max(1, int(getattr(img, "n_frames", 1) or 1))
        _decode(img, limits)
        rgb = _upright(_downsize(_to_rgb(img), limits.store_max_side), _orientation(img))
    except ImageRejected as exc:
        exc.sha256 = sha
        raise
    return sha, img, size, frames, rgb


def try_normalize(
    src: Path | bytes, out_dir: Path | None = None, limits: ImageLimits = ImageLimits()
) -> ImageInfo | ImageRejected:
    """`normalize_image` that returns the rejection instead of raising, for loops and worker pools.

    A decoder bug on one odd file (PIL raising something unexpected) also becomes a rejection
    (`corrupt_image`), so one file can never stop a run.
    """
    try:
        return normalize_image(src, out_dir, limits)
    except ImageRejected as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - see docstring
        return ImageRejected(ImageReason.CORRUPT_IMAGE, f"unexpected {type(exc).__name__}: {exc}")


def _open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Parse the header only and reject bombs and slivers before decoding any pixel."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # PIL's own guard, for formats we never look into
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(ImageReason.DECOMPRESSION_BOMB, str(exc)) from exc
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(ImageReason.NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # a format was recognised, but its header is cut short or broken
        raise _decode_failure(exc) from exc
    problem = size_problem(*img.size, limits)
    if problem is not None:
        raise problem
    return img


def size_problem(width: int, height: int, limits: ImageLimits) -> ImageRejected | None:
    """The one size check (header of a new file, or the recorded size of a cached one)."""
    if width * height > limits.max_pixels:
        return ImageRejected(
            ImageReason.DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height} pixels > bounds.max_pixels {limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        return ImageRejected(ImageReason.TOO_SMALL, f"{width}x{height} < bounds.min_side {limits.min_side}")
    if max(width, height) > limits.max_side:
        return ImageRejected(ImageReason.TOO_LARGE, f"{width}x{height} > bounds.max_side {limits.max_side}")
    return None


def _decode(img: Image.Image, limits: ImageLimits) -> None:
    """Decode every pixel now; JPEGs are decoded at a reduced scale when they will be shrunk."""
    if img.format == "JPEG":
        img.draft(None, _target_size(img.size, limits.store_max_side))
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(ImageReason.DECOMPRESSION_BOMB, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise _decode_failure(exc) from exc


def _decode_failure(exc: BaseException) -> ImageRejected:
    """PIL reports a file cut short as OSError('... truncated ...') or EOFError; the rest is corrupt."""
    truncated = "truncat" in str(exc).lower() or isinstance(exc, EOFError)
    reason = ImageReason.TRUNCATED_IMAGE if truncated else ImageReason.CORRUPT_IMAGE
    return ImageRejected(reason, f"{type(exc).__name__}: {exc}")


# EXIF orientation tag value -> the transpose that makes the picture upright (as ImageOps does).
_EXIF_ORIENTATION = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """Camera photos (DermNet, intake) may carry an EXIF rotation; a broken EXIF counts as none."""
    try:
        return _UPRIGHT.get(img.getexif().get(_EXIF_ORIENTATION))
    except Exception:  # noqa: BLE001 - EXIF is advisory; the pixels already decoded fine
        return None


def _upright(img: Image.Image, transpose: Image.Transpose | None) -> Image.Image:
    """Rotate after downsizing: same result, a fraction of the work on large photos."""
    return img if transpose is None else img.transpose(transpose)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB instead of rejecting it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        return _scale_to_8bit(np.asarray(img), 65535.0)
    if mode == "F":
        return _stretch_to_8bit(np.asarray(img, dtype=np.float64))
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        return _composite_on_white(img.convert("RGBA"))
    try:
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ImageRejected(ImageReason.UNSUPPORTED_MODE, f"mode {mode}: {exc}") from exc


def _scale_to_8bit(pixels: np.ndarray, full_scale: float) -> Image.Image:
    """16-bit grey: map the nominal range 0..65535 to 0..255 (PIL's own convert clips at 255)."""
    scaled = np.clip(pixels.astype(np.float64), 0, full_scale) * (255.0 / full_scale)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L").convert("RGB")


def _stretch_to_8bit(pixels: np.ndarray) -> Image.Image:
    """Float images have no nominal range: stretch min..max (a constant image becomes black)."""
    finite = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    span = high - low if high > low else 1.0
    return Image.fromarray(np.rint((finite - low) * (255.0 / span)).astype(np.uint8), "L").convert("RGB")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Transparent pixels become white, as a viewer would show them, not black."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downsize(img: Image.Image, max_side: int) -> Image.Image:
    target = _target_size(img.size, max_side)
    return img if target == img.size else img.resize(target, Image.Resampling.LANCZOS)


def _write_png(img: Image.Image, dest: Path) -> Path:
    """Write atomically: parallel workers may store the same bytes (duplicates) at once."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, "PNG", **PNG_SAVE_OPTIONS)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
