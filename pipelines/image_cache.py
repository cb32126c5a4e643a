"""A local, git-ignored cache of normalised images, so ingest decodes only images it never saw.

Why a cache beside the DVC output rather than `persist: true` on data/images: `dvc repro` deletes
a stage's outs before it runs, and with `persist` the store would instead be whatever the last run
left there, from any branch, data set or params; DVC's checkout and run-cache would then restore
or keep files the current params never produced. Here data/images stays an ordinary output that
ingest rebuilds completely on every run, and what is reused is looked up by content:

  .cache/ingest/<digest>/<sha256>.png   the exact bytes a full run stores (copied, never re-encoded)
  .cache/ingest/<digest>/index.jsonl    one line per cached image: original width/height, mode,
                                        format, stored size (what the manifest and bounds need)

`<digest>` (images.normalisation_digest) covers store_max_side, the PNG encoder options, the
Pillow and numpy versions and images.NORMALISATION_VERSION, so a change to any of them starts an
empty cache instead of reusing copies made another way. The size bounds are not in the key: a hit
is re-checked against today's bounds from its recorded size, and a hit that fails them is decoded
afresh, so its quarantine entry is word for word what a full run writes. Rejected images are not
cached: they are few, and most are refused from the header alone.

Every source file is still read and hashed (the sha256 is the key, and it is how a changed file is
noticed); what is skipped is the decode and the PNG encode. Deleting .cache/ingest is always safe:
the next ingest is a full one. Old digests are never pruned automatically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipelines.images import (
    ImageInfo,
    ImageLimits,
    ImageRejected,
    normalisation_digest,
    read_source,
    sha256_hex,
    size_problem,
    stored_name,
    try_normalize,
)

log = logging.getLogger(__name__)

INDEX_FILE = "index.jsonl"


class ImageCache:
    """The cache folder for one normalisation (one digest)."""

    def __init__(self, root: Path, limits: ImageLimits) -> None:
        self.dir = Path(root) / normalisation_digest(limits.store_max_side)

    @property
    def index_path(self) -> Path:
        return self.dir / INDEX_FILE

    def load(self) -> dict[str, ImageInfo]:
        """sha256 -> ImageInfo of every cached image whose PNG is still there.

        A line cut short by a crash, or naming a deleted PNG, is skipped: that image is a miss.
        """
        known: dict[str, ImageInfo] = {}
        if not self.index_path.is_file():
            return known
        for line in self.index_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                sha = rec["sha256"]
                stored = (int(rec["stored_width"]), int(rec["stored_height"]))
                info = ImageInfo(sha, int(rec["width"]), int(rec["height"]), rec["mode"], rec["format"],
                                 self.dir / stored_name(sha), stored, int(rec["frames"]))
            except (ValueError, KeyError, TypeError):
                continue
            known[info.sha256] = info
        present = {p.name for p in self.dir.iterdir()} if self.dir.is_dir() else set()
        return {sha: info for sha, info in known.items() if stored_name(sha) in present}

    def record(self, infos: Iterable[ImageInfo], known: Mapping[str, ImageInfo]) -> int:
        """Append index lines for freshly normalised images (PNG first, then its line). Returns how many."""
        fresh: dict[str, ImageInfo] = {}
        for info in infos:
            if info.sha256 not in known:
                fresh.setdefault(info.sha256, info)
        if not fresh:
            return 0
        lines = "".join(
            json.dumps({
                "sha256": i.sha256, "width": i.width, "height": i.height, "mode": i.mode,
                "format": i.format, "stored_width": i.stored_size[0], "stored_height": i.stored_size[1], "frames": i.frames,
            }) + "\n"
            for i in fresh.values()
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.index_path, "a", encoding="utf-8") as fh:
            fh.write(lines)
        return len(fresh)

    def materialise(self, shas: Iterable[str], dest: Path) -> None:
        """Put the cached PNGs of `shas` into `dest` (data/images), replacing what is there.

        Hard links where the file system allows (the store is content-addressed and never written
        in place, so sharing the inode is safe and a delivery's retrain writes no image bytes
        again); a copy across devices or where links are refused.
        """
        dest.mkdir(parents=True, exist_ok=True)
        for sha in shas:
            name = stored_name(sha)
            target = dest / name
            if target.exists() and os.path.samefile(self.dir / name, target):
                continue   # linked by an earlier run (a rename onto the same inode would do nothing)
            tmp = dest / f".tmp-{name}"
            tmp.unlink(missing_ok=True)
            try:
                os.link(self.dir / name, tmp)
            except OSError:
                shutil.copyfile(self.dir / name, tmp)
            os.replace(tmp, target)


def reuse_or_normalize(
    src: Path, out_dir: Path, limits: ImageLimits, known: Mapping[str, ImageInfo]
) -> ImageInfo | ImageRejected:
    """The cached ImageInfo when these bytes were normalised before and still fit the bounds;
    otherwise a full `try_normalize` into `out_dir`. The file is read once either way."""
    if not known:
        return try_normalize(src, out_dir, limits)
    try:
        data = read_source(src)
    except ImageRejected as exc:
        return exc
    hit = known.get(sha256_hex(data)) if data else None
    if hit is not None and size_problem(hit.width, hit.height, limits) is None:
        return hit
    return try_normalize(data, out_dir, limits)
