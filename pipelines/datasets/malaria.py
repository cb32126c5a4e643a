"""NIH malaria thin-smear cell crops: `cell_images/Parasitized|Uninfected/*.png`.

File names start with the slide/patient the cell was cut from
(`C100P61ThinF_IMG_20150918_144104_cell_162.png` -> `C100P61ThinF`). Cells of one patient look
alike, so that prefix is the group: a split that cuts it leaks patients into the test set.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.datasets.base import DatasetAdapter, ScanResult, scan_class_folders, unread_entries

CELL_IMAGES = "cell_images"
PATIENT_SEPARATOR = "_IMG_"


def cell_images_dir(root: Path) -> Path:
    """The folder holding the class folders: `root`, `root/cell_images`, or the Kaggle zip's
    doubly nested `root/cell_images/cell_images`."""
    base = root
    while (base / CELL_IMAGES).is_dir():
        base = base / CELL_IMAGES
    return base


class MalariaAdapter(DatasetAdapter):
    """Two classes; one group per slide/patient."""

    name = "malaria"
    classes = ("Parasitized", "Uninfected")
    display_names = {"Parasitized": "Parasitized cell", "Uninfected": "Uninfected cell"}

    # Top-level entries of the root that are the layout's (beside cell_images/), not stray files.
    root_entries: tuple[str, ...] = (CELL_IMAGES,)

    def _scan(self, root: Path) -> ScanResult:
        base = cell_images_dir(root)
        result = scan_class_folders(self, root, base)
        if base != root:  # a root holding cell_images/: anything beside it is accounted for
            why = f"only {CELL_IMAGES}/ is read"
            result = unread_entries(root, self.root_entries, why).merge(result)
        return result

    def group_id_for(self, file_name: str) -> str:
        """Text before `_IMG_`; the whole stem when a name does not follow the convention."""
        stem = Path(file_name).stem
        prefix, separator, _ = stem.partition(PATIENT_SEPARATOR)
        return prefix if separator and prefix else stem
