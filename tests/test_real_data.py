"""The adapters on the real data copies in ../shared/data (skipped where that folder is absent).

Each test scans the whole data set (cheap: no decoding) and checks the counts documented in
shared/data/README.md, then hashes and decodes an evenly spread sample through the same code
ingest uses. bench/bench_ingest.py runs the full sets.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from pipelines.datasets import get_adapter
from pipelines.datasets.base import ScanResult
from pipelines.images import ImageLimits
from pipelines.ingest import decode_all, split_outcomes

SHARED_DATA = Path(
    os.environ.get("MEDSCAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
SAMPLE = int(os.environ.get("MEDSCAN_REAL_SAMPLE", "200"))

pytestmark = pytest.mark.real_data


def scan(name: str, folder: str) -> ScanResult:
    root = SHARED_DATA / folder
    if not root.is_dir():
        pytest.skip(f"no real data at {root}")
    return get_adapter(name).scan(root)


def decode_sample(result: ScanResult, tmp_path: Path) -> None:
    """Every sampled real image decodes; only exact copies may be held back (as duplicates)."""
    step = max(1, len(result.candidates) // SAMPLE)
    sample = sorted(result.candidates, key=lambda c: c.source_path)[::step][:SAMPLE]
    outcomes = decode_all(sample, tmp_path / "images", ImageLimits(), workers=1)
    accepted, quarantine = split_outcomes(sample, outcomes)
    assert {e.reason for e in quarantine} <= {"duplicate"}, quarantine[:3]
    assert len(accepted) + len(quarantine) == len(sample)
    assert len(list((tmp_path / "images").iterdir())) == len({info.sha256 for _, info in accepted})


def test_ham10000_copy(tmp_path):
    result = scan("ham10000", "ham10000")
    assert result.quarantine == []
    assert Counter(c.label for c in result.candidates) == {
        "nv": 5706,
        "mel": 952,
        "bkl": 926,
        "bcc": 440,
        "akiec": 286,
        "vasc": 124,
        "df": 101,
    }
    assert len({c.group_id for c in result.candidates}) == 6350
    assert {c.metadata["sex"] for c in result.candidates} <= set(
        get_adapter("ham10000").categorical_values["sex"]
    )
    decode_sample(result, tmp_path)


def test_malaria_copy(tmp_path):
    result = scan("malaria", "malaria")
    assert result.quarantine == []
    assert Counter(c.label for c in result.candidates) == {"Parasitized": 5008, "Uninfected": 4502}
    assert len({c.group_id for c in result.candidates}) == 66  # slides, not cells
    decode_sample(result, tmp_path)


def test_dermnet_copy(tmp_path):
    result = scan("dermnet", "dermnet")
    assert result.quarantine == []
    assert Counter(c.split_hint for c in result.candidates) == {"train": 2589, "test": 646}
    assert {c.label for c in result.candidates} == {
        "Eczema Photos",
        "Psoriasis pictures Lichen Planus and related diseases",
        "Tinea Ringworm Candidiasis and other Fungal Infections",
    }
    decode_sample(result, tmp_path)
