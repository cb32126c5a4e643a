"""The embedded demo data: deterministic, in each native layout, and read cleanly by the adapters."""
import hashlib

from pipelines.datasets import get_adapter
from pipelines.synth import make_all


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layouts_are_read_by_the_real_adapters(tmp_path):
    counts = make_all(tmp_path / "demo", per_class=6, size=24, seed=1)
    for name, made in counts.items():
        scan = get_adapter(name).scan(tmp_path / "demo" / name)
        assert len(scan.candidates) == made and not scan.quarantine, name
        labels = {c.label for c in scan.candidates}
        assert labels == set(get_adapter(name).classes), name


def test_generation_is_deterministic(tmp_path):
    make_all(tmp_path / "a", per_class=4, size=16, seed=3)
    make_all(tmp_path / "b", per_class=4, size=16, seed=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_ham_lesions_have_several_images_and_metadata(tmp_path):
    make_all(tmp_path / "d", per_class=10, size=16, seed=0)
    scan = get_adapter("ham10000").scan(tmp_path / "d" / "ham10000")
    groups = [c.group_id for c in scan.candidates]
    assert len(set(groups)) < len(groups)
    assert all(c.metadata.get("sex") in ("male", "female") for c in scan.candidates)
