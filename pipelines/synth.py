"""Embedded demo data: small synthetic data sets in the three native layouts.

The images are generated, not real: each class has its own visual signature (colour, size,
border irregularity, texture) with enough per-image randomness that a small CNN must learn
something, yet learns it in minutes on two CPU cores. The same adapters that read the real
distributions read these folders, so the demo exercises the whole pipeline unchanged.
Class lists come from the adapters (pipelines.datasets), the one place they live.
"""
from __future__ import annotations

import argparse
import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.cli import setup_logging
from pipelines.config import load_params, project_root, resolve

log = logging.getLogger(__name__)

SKIN = np.array([222.0, 178.0, 150.0])


@dataclass(frozen=True)
class LesionLook:
    """Visual signature of one synthetic class."""

    colour: tuple[float, float, float]
    radius: tuple[float, float]      # fraction of the image's short side
    irregularity: float              # amplitude of border harmonics
    texture: str                     # dots | stripes | ring | speckle | lobules | plain | multi


# Loosely inspired by the dermatoscopic look of each HAM10000 class; only the signal matters.
HAM_LOOKS: dict[str, LesionLook] = {
    "akiec": LesionLook((205, 105, 100), (0.22, 0.34), 0.10, "speckle"),
    "bcc": LesionLook((226, 160, 170), (0.20, 0.32), 0.06, "dots"),
    "bkl": LesionLook((170, 120, 80), (0.24, 0.36), 0.08, "stripes"),
    "df": LesionLook((135, 90, 70), (0.12, 0.20), 0.03, "ring"),
    "mel": LesionLook((70, 45, 40), (0.26, 0.40), 0.28, "multi"),
    "nv": LesionLook((125, 80, 55), (0.18, 0.30), 0.03, "plain"),
    "vasc": LesionLook((150, 40, 80), (0.14, 0.24), 0.05, "lobules"),
}
# Relative class frequency (nv dominates, as in the real data) to exercise class weighting.
HAM_FREQUENCY = {"akiec": 1.0, "bcc": 1.0, "bkl": 1.0, "df": 0.8, "mel": 1.0, "nv": 2.5, "vasc": 0.8}
HAM_LOCALIZATION_BIAS = {"akiec": "face", "bcc": "back", "bkl": "trunk", "df": "lower extremity",
                         "mel": "back", "nv": "trunk", "vasc": "abdomen"}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative pattern in roughly [0.6, 1.3] that only the lesion carries."""
    h, w = yy.shape
    if kind == "dots":
        pattern = np.ones((h, w), np.float32)
        for _ in range(rng.integers(4, 9)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.0, 2.2)
            pattern[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.45
        return pattern
    if kind == "stripes":
        angle, freq = rng.uniform(0, np.pi), rng.uniform(0.5, 0.8)
        return 1.0 + 0.22 * np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    if kind == "speckle":
        return 1.0 + 0.25 * rng.standard_normal((h, w)).astype(np.float32)
    if kind == "lobules":
        return 1.0 + 0.2 * np.sin(0.9 * xx) * np.sin(0.9 * yy)
    if kind == "multi":
        blotch = np.zeros((h, w), np.float32)
        for _ in range(rng.integers(2, 5)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 8)
            blotch += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        return 0.7 + 0.8 * np.clip(blotch, 0, 1)
    return np.ones((h, w), np.float32)


def lesion_image(look: LesionLook, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One dermatoscopy-like RGB image (uint8) of a lesion with the given signature."""
    yy, xx = _grid(h, w)
    short = min(h, w)
    cy, cx = h / 2 + rng.normal(0, short * 0.06), w / 2 + rng.normal(0, short * 0.06)
    radius = rng.uniform(*look.radius) * short
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = sum(rng.uniform(0, look.irregularity) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
                 for k in (2, 3, 5, 7))
    stretch = rng.uniform(0.8, 1.2)
    dist = np.sqrt(((yy - cy) * stretch) ** 2 + ((xx - cx) / stretch) ** 2)
    edge = radius * (1 + wobble)
    mask = 1 / (1 + np.exp((dist - edge) / max(short * 0.02, 0.6)))  # soft border
    if look.texture == "ring":
        mask = mask * (0.55 + 0.45 * np.exp(-(dist / max(radius * 0.45, 1)) ** 2))

    skin = SKIN * rng.uniform(0.85, 1.08) + rng.normal(0, 6, 3)
    colour = np.array(look.colour) * rng.uniform(0.85, 1.15) + rng.normal(0, 10, 3)
    tex = _texture(look.texture, yy, xx, rng)[..., None]
    img = skin * (1 - mask[..., None]) + np.clip(colour * tex, 0, 255) * mask[..., None]
    img += rng.normal(0, 7, img.shape)  # sensor noise
    vignette = 1 - 0.25 * ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (short ** 2 / 2)
    img *= vignette[..., None] * rng.uniform(0.9, 1.1)
    return np.clip(img, 0, 255).astype(np.uint8)


def cell_image(parasitized: bool, size: int, rng: np.random.Generator) -> np.ndarray:
    """A thin-smear cell crop on black, with purple ring-form parasites when infected."""
    h = w = int(size * rng.uniform(0.8, 1.2))
    yy, xx = _grid(h, w)
    cy, cx, r = h / 2, w / 2, min(h, w) * rng.uniform(0.38, 0.46)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    cell = (dist < r).astype(np.float32)
    base = np.array([212.0, 150.0, 160.0]) * rng.uniform(0.85, 1.1)
    img = cell[..., None] * (base + rng.normal(0, 8, (h, w, 3)))
    img *= (1 - 0.18 * (dist / r) ** 2)[..., None]   # paler rim
    # Stain debris both classes share, so a single dark pixel is not the answer.
    for _ in range(rng.integers(0, 3)):
        py, px = rng.uniform(cy - r / 1.5, cy + r / 1.5, 2)
        spot = (yy - py) ** 2 + (xx - px) ** 2 < rng.uniform(0.6, 1.3) ** 2
        img[spot & (cell > 0)] = [150, 100, 130]
    if parasitized:
        for _ in range(rng.integers(1, 4)):
            angle, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, r * 0.6)
            py, px = cy + rad * np.sin(angle), cx + rad * np.cos(angle)
            ring = np.abs(np.sqrt((yy - py) ** 2 + (xx - px) ** 2) - rng.uniform(2.0, 3.5)) < 1.1
            img[ring & (cell > 0)] = [95, 40, 120] + rng.normal(0, 8, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def texture_photo(class_index: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A clinical-photo-like texture whose hue and pattern frequency encode the class."""
    h = w = size
    yy, xx = _grid(h, w)
    hue = class_index / num_classes
    colour = 150 + 80 * np.array([np.cos(2 * np.pi * hue), np.cos(2 * np.pi * (hue + 1 / 3)),
                                  np.cos(2 * np.pi * (hue + 2 / 3))])
    freq = 0.15 + 0.6 * ((class_index * 7) % num_classes) / num_classes
    angle = rng.uniform(0, np.pi)
    wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6.3))
    img = SKIN * rng.uniform(0.8, 1.1) * (1 - 0.5 * (wave[..., None] > 0.3)) \
        + colour * 0.5 * (wave[..., None] > 0.3)
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _counts(classes: tuple[str, ...], per_class: int, frequency: dict[str, float]) -> dict[str, int]:
    return {c: max(4, int(round(per_class * frequency.get(c, 1.0)))) for c in classes}


def make_ham10000(out: Path, per_class: int, size: int, seed: int) -> int:
    """HAM10000 layout: HAM10000_metadata.csv + images/<image_id>.jpg, 1-3 images per lesion."""
    from pipelines.datasets import get_adapter

    adapter = get_adapter("ham10000")
    localizations = adapter.categorical_values["localization"]
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, image_no, lesion_no = [], 0, 0
    h, w = size, int(size * 4 / 3)
    for dx, count in _counts(adapter.classes, per_class, HAM_FREQUENCY).items():
        made = 0
        while made < count:
            lesion_no += 1
            lesion_id = f"HAM_{lesion_no:07d}"
            age = float(np.clip(rng.normal(62 if dx in ("mel", "bcc", "akiec") else 45, 14), 5, 85))
            sex = rng.choice(["male", "female"])
            loc = HAM_LOCALIZATION_BIAS[dx] if rng.random() < 0.5 else rng.choice(localizations)
            for _ in range(min(int(rng.integers(1, 4)), count - made)):
                image_no += 1
                image_id = f"ISIC_{image_no:07d}"
                img = lesion_image(HAM_LOOKS[dx], h, w, rng)
                Image.fromarray(img).save(out / "images" / f"{image_id}.jpg", quality=92)
                rows.append([lesion_id, image_id, dx, "histo", round(age / 5) * 5, sex, loc])
                made += 1
    with open(out / "HAM10000_metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        writer.writerows(rows)
    return len(rows)


def make_malaria(out: Path, per_class: int, size: int, seed: int) -> int:
    """NIH layout: cell_images/<class>/<slide>_IMG_<date>_cell_<n>.png, grouped by slide."""
    from pipelines.datasets import get_adapter

    rng = np.random.default_rng(seed)
    total = 0
    for cls in get_adapter("malaria").classes:
        folder = out / "cell_images" / cls
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            slide = f"C{100 + int(rng.integers(0, 12))}P{int(rng.integers(1, 90))}ThinF"
            img = cell_image(cls == "Parasitized", size, rng)
            Image.fromarray(img).save(folder / f"{slide}_IMG_20150918_1441{n % 60:02d}_cell_{n}.png")
            total += 1
    return total


def make_dermnet(out: Path, per_class: int, size: int, seed: int) -> int:
    """DermNet layout: train/<Class>/*.jpg and test/<Class>/*.jpg (given 80/20 split)."""
    from pipelines.datasets import get_adapter

    rng = np.random.default_rng(seed)
    classes = get_adapter("dermnet").classes
    count = max(5, per_class // 3)  # 23 classes: keep the demo small
    for idx, cls in enumerate(classes):
        for n in range(count):
            split = "test" if n % 5 == 0 else "train"
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            img = texture_photo(idx, len(classes), size, rng)
            Image.fromarray(img).save(folder / f"synthetic-{idx:02d}-{n:04d}.jpg", quality=90)
    return count * len(classes)


MAKERS = {"ham10000": make_ham10000, "malaria": make_malaria, "dermnet": make_dermnet}


def make_all(out: Path, per_class: int, size: int, seed: int) -> dict[str, int]:
    """(Re)create every demo data set under `out`; returns images written per data set."""
    if out.exists():
        shutil.rmtree(out)
    return {name: make(out / name, per_class, size, seed) for name, make in MAKERS.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output folder (default: params demo.out)")
    parser.add_argument("--images-per-class", type=int)
    parser.add_argument("--image-size", type=int)
    args = parser.parse_args(argv)
    setup_logging()
    root = project_root()
    demo = load_params(root)["demo"]
    out = resolve(root, args.out or demo["out"])
    counts = make_all(out, args.images_per_class or demo["images_per_class"],
                      args.image_size or demo["image_size"], demo["seed"])
    log.info("synthetic demo data in %s: %s", out, ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
