"""DermNet clinical photos: `train/<Class>/*.jpg` and `test/<Class>/*.jpg`.

The distribution's train/test folders are the split to use, so each candidate carries its folder
as `split_hint`. DermNet has no patient ids: each image is its own group (the file stem).
Folder names are the labels; `display_names` gives short readable ones for reports.
Anything else in the root (a `validation/` or `Train/` folder: names are case-sensitive, stray
files, links) is listed in data/ignored.csv with its reason, never read.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.datasets.base import DatasetAdapter, ScanResult, scan_class_folders, unread_entries

SPLITS = ("train", "test")


class DermnetAdapter(DatasetAdapter):
    """The 23 top-level classes of the common DermNet distribution (a copy may hold fewer)."""

    name = "dermnet"
    classes = (
        "Acne and Rosacea Photos",
        "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions",
        "Atopic Dermatitis Photos",
        "Bullous Disease Photos",
        "Cellulitis Impetigo and other Bacterial Infections",
        "Eczema Photos",
        "Exanthems and Drug Eruptions",
        "Hair Loss Photos Alopecia and other Hair Diseases",
        "Herpes HPV and other STDs Photos",
        "Light Diseases and Disorders of Pigmentation",
        "Lupus and other Connective Tissue diseases",
        "Melanoma Skin Cancer Nevi and Moles",
        "Nail Fungus and other Nail Disease",
        "Poison Ivy Photos and other Contact Dermatitis",
        "Psoriasis pictures Lichen Planus and related diseases",
        "Scabies Lyme Disease and other Infestations and Bites",
        "Seborrheic Keratoses and other Benign Tumors",
        "Systemic Disease",
        "Tinea Ringworm Candidiasis and other Fungal Infections",
        "Urticaria Hives",
        "Vascular Tumors",
        "Vasculitis Photos",
        "Warts Molluscum and other Viral Infections",
    )
    display_names = dict(
        zip(
            classes,
            (
                "Acne/rosacea",
                "Actinic keratosis/BCC/malignant",
                "Atopic dermatitis",
                "Bullous disease",
                "Cellulitis/impetigo/bacterial",
                "Eczema",
                "Exanthems/drug eruptions",
                "Hair loss/alopecia",
                "Herpes/HPV/STDs",
                "Pigmentation disorders",
                "Lupus/connective tissue",
                "Melanoma/nevi/moles",
                "Nail disease",
                "Contact dermatitis",
                "Psoriasis/lichen planus",
                "Scabies/Lyme/bites",
                "Seborrheic keratoses/benign tumors",
                "Systemic disease",
                "Tinea/candidiasis/fungal",
                "Urticaria",
                "Vascular tumors",
                "Vasculitis",
                "Warts/molluscum/viral",
            ),
        )
    )

    def _scan(self, root: Path) -> ScanResult:
        present = [split for split in SPLITS if (root / split).is_dir()]
        if not present:
            raise FileNotFoundError(f"{self.name}: neither train/ nor test/ under {root}")
        why = f"only {', '.join(s + '/' for s in SPLITS)} are read (names are case-sensitive)"
        result = unread_entries(root, present, why)
        for split in present:
            result = result.merge(scan_class_folders(self, root, root / split, split_hint=split))
        return result
