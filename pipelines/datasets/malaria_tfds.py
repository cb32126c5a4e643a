"""The malaria data set through TensorFlow Datasets (`tfds.builder("malaria")`).

The TFDS build is downloaded and prepared once under `<root>/tfds`, then exported once to the
native layout `<root>/cell_images/<Class>/<n>.png`, which the folder adapter reads like any copy.
TFDS strips the original file names, so the slide/patient id is gone: each image is its own group.
Splits of this variant therefore cannot keep a patient's cells together; prefer the `malaria`
folder adapter on the original release when grouping matters.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from PIL import Image

from pipelines.datasets.base import ScanResult
from pipelines.datasets.malaria import CELL_IMAGES, MalariaAdapter

log = logging.getLogger(__name__)

TFDS_NAME = "malaria"
TFDS_DIR = "tfds"
EXPORT_MARKER = ".tfds_export_complete"  # a dotfile: the folder scan skips it


class MalariaTfdsAdapter(MalariaAdapter):
    """Same classes as `malaria`; groups are single images (no patient id in TFDS)."""

    name = "malaria_tfds"
    root_entries = (CELL_IMAGES, TFDS_DIR, f".{CELL_IMAGES}.partial")

    def _scan(self, root: Path) -> ScanResult:
        export_tfds(self, root)
        return super()._scan(root)

    def group_id_for(self, file_name: str) -> str:
        return Path(file_name).stem


def export_tfds(adapter: MalariaAdapter, root: Path) -> Path:
    """Write `<root>/cell_images/<Class>/<n>.png` from the TFDS build, unless already done.

    The export goes to a temporary folder that is renamed at the end, so an interrupted run
    leaves no half export behind that a later scan could mistake for the data set.
    """
    target = root / CELL_IMAGES
    if (target / EXPORT_MARKER).is_file():
        return target
    import tensorflow_datasets as tfds  # heavy (imports TensorFlow): only when exporting

    builder = tfds.builder(TFDS_NAME, data_dir=str(root / TFDS_DIR))
    builder.download_and_prepare()
    names = builder.info.features["label"].names
    staging = root / f".{CELL_IMAGES}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    count = 0
    for count, example in enumerate(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)), 1):
        raw = names[int(example["label"])]
        label_dir = staging / (adapter.canonical_label(raw) or raw)
        label_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(example["image"]).save(label_dir / f"{count - 1:06d}.png")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / EXPORT_MARKER).write_text(f"{count} images from tfds {TFDS_NAME} {builder.version}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("%s: exported %d TFDS images to %s", adapter.name, count, target)
    return target
