"""DVC stage `ingest`: a data set in its native layout (plus accepted intake cases) -> the manifest.

Writes, relative to the project root:
  data/images/<sha256>.png   normalised RGB copies, exactly one per manifest row (stale ones removed)
  data/manifest.parquet      manifest.CORE_COLUMNS, then the adapter's metadata columns
  data/quarantine.csv        everything offered that did not make it, with a reason
  data/ignored.csv           what the source holds that is not a case (unread folders, stray files,
                             links to folders, FIFOs, frames after the first), with a reason
  data/labels.json           classes present, in the adapter's canonical order

Every candidate ends in the manifest or the quarantine, everything else the source holds in the
ignored list: nothing is silently lost. A symlink leaving the data root is quarantined, never read.
An intake case whose file is not the sha256 cases.csv claims is quarantined `sha256_mismatch`. Each case is
held to params.yaml `bounds:` (pipelines.bounds): an impossible age or image size is quarantined
here with its reason, so one bad delivery never fails the validate stage for everybody.

Incremental: normalised copies are kept in a git-ignored cache keyed by sha256 and a digest of the
normalisation params (pipelines.image_cache explains why a cache and not `persist: true`). Every
source file is hashed; only those the cache lacks are decoded. The outputs are byte-identical to a
cold run: the cache holds exactly the bytes a cold run stores, and the bounds are re-checked.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pandas as pd
from tqdm import tqdm

from pipelines.bounds import CaseBounds, screen_candidates
from pipelines.cases import scan_cases
from pipelines.cli import run_stage
from pipelines.config import Paths, resolve
from pipelines.datasets import DatasetAdapter, get_adapter
from pipelines.datasets.base import Candidate, IgnoreReason, Rejected, SourceReason, resolve_duplicates
from pipelines.errors import ConfigError
from pipelines.image_cache import ImageCache, reuse_or_normalize
from pipelines.images import ImageInfo, ImageLimits, ImageRejected, stored_name
from pipelines.manifest import (
    CORE_COLUMNS,
    IgnoredEntry,
    QuarantineEntry,
    write_ignored,
    write_labels,
    write_manifest,
    write_quarantine,
)

log = logging.getLogger(__name__)

Outcome = ImageInfo | ImageRejected
Accepted = tuple[Candidate, ImageInfo]


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run did; `line()` is the log line, `to_dict()` feeds benches and reports."""

    adapter: str
    candidates: int
    accepted: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    ignored: int = 0  # entries of data/ignored.csv
    ignored_by_reason: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    decode_seconds: float = 0.0
    workers: int = 1
    decoded: int = 0  # images decoded and normalised this run
    reused: int = 0  # images taken from the ingest cache instead (hashed, never decoded)

    @property
    def images_per_s(self) -> float:
        """Candidates hashed (and decoded or reused) per second of that phase."""
        return self.candidates / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def line(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.by_reason.items())) or "none"
        ignored = ", ".join(f"{k}={v}" for k, v in sorted(self.ignored_by_reason.items())) or "none"
        return (
            f"ingest {self.adapter}: {self.accepted} accepted, {self.quarantined} quarantined ({reasons}), "
            f"{self.ignored} ignored ({ignored}); "
            f"{self.candidates} images hashed ({self.decoded} decoded, {self.reused} reused from the cache) "
            f"at {self.images_per_s:.1f} images/s with {self.workers} worker(s), {self.seconds:.1f} s in all"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"images_per_s": round(self.images_per_s, 2)}


def ingest(
    adapter_name: str,
    source_root: Path,
    paths: Paths,
    params: Mapping[str, Any],
    intake_dir: Path | None = None,
    bounds: CaseBounds = CaseBounds(),
) -> IngestSummary:
    """Scan, bound-check, decode (what the cache lacks), deduplicate and write the manifest.

    `params` is the `ingest` section, `bounds` the `bounds` section (CaseBounds.from_params).
    """
    started = time.perf_counter()
    moved = sorted(set(params) & {"min_side", "max_side", "max_pixels"})
    if moved:
        raise ConfigError(f"params.yaml ingest: {moved} moved to the `bounds:` section (one definition)")
    adapter = get_adapter(adapter_name)
    scan = adapter.scan(Path(source_root))
    if intake_dir is not None:
        scan = scan.merge(scan_cases(intake_dir, adapter))
    in_bounds, out_of_bounds = screen_candidates(scan.candidates, bounds)
    candidates = sorted(in_bounds, key=lambda c: c.source_path)
    workers = max(1, int(params.get("workers", 1)))
    limits = bounds.image_limits(params.get("store_max_side", ImageLimits.store_max_side))
    cache = ImageCache(paths.ingest_cache, limits)
    known = cache.load()
    decode_started = time.perf_counter()
    outcomes = decode_all(candidates, cache.dir, limits, workers, known)
    decode_seconds = time.perf_counter() - decode_started
    accepted, rejected = split_outcomes(candidates, outcomes)
    fresh = [o for o in outcomes if isinstance(o, ImageInfo) and o.sha256 not in known]
    cache.record(fresh, known)
    quarantine = sorted(
        scan.quarantine + out_of_bounds + rejected, key=lambda e: (e.source_path, e.reason, e.detail)
    )
    ignored = sorted(scan.ignored + extra_frames(accepted), key=lambda e: (e.source_path, e.reason, e.detail))
    classes = write_outputs(adapter, accepted, quarantine, paths, cache, ignored)
    reused = sum(1 for o in outcomes if isinstance(o, ImageInfo) and o.sha256 in known)
    summary = IngestSummary(
        adapter=adapter.name,
        candidates=len(candidates),
        accepted=len(accepted),
        quarantined=len(quarantine),
        by_reason=dict(Counter(str(e.reason) for e in quarantine)),
        ignored=len(ignored),
        ignored_by_reason=dict(Counter(str(e.reason) for e in ignored)),
        classes=classes,
        seconds=time.perf_counter() - started,
        decode_seconds=decode_seconds,
        workers=workers,
        decoded=len(candidates) - reused,
        reused=reused,
    )
    log.info(summary.line())
    return summary


def decode_all(
    candidates: Sequence[Candidate],
    out_dir: Path,
    limits: ImageLimits,
    workers: int,
    known: Mapping[str, ImageInfo] | None = None,
) -> list[Outcome]:
    """Hash every candidate and normalise it into `out_dir` unless `known` (sha256 -> ImageInfo of
    an earlier normalisation) has it; in order; a process pool when workers > 1."""
    jobs = [(c.path, out_dir, limits) for c in candidates]
    bar = tqdm(total=len(jobs), desc="ingest", unit="img", file=sys.stderr, mininterval=1.0, leave=False)
    with bar:
        return list(_tick(_run_jobs(jobs, workers, dict(known or {})), bar))


# The cache index each worker looks hits up in: set once per process by the pool initializer
# (passing it with every job would pickle it thousands of times).
_KNOWN: dict[str, ImageInfo] = {}


def _set_known(known: dict[str, ImageInfo]) -> None:
    global _KNOWN
    _KNOWN = known


def _run_jobs(
    jobs: list[tuple[Path, Path, ImageLimits]], workers: int, known: dict[str, ImageInfo]
) -> Iterator[Outcome]:
    if workers == 1 or len(jobs) < 2:
        _set_known(known)
        try:
            yield from map(_decode_job, jobs)
        finally:
            _set_known({})
        return
    chunksize = max(1, min(64, len(jobs) // (workers * 8)))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(), initializer=_set_known, initargs=(known,)
    ) as pool:
        yield from pool.map(_decode_job, jobs, chunksize=chunksize)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork starts workers in 0.15 s, spawn in 3-4 s here (it re-imports pandas and the stage).

    Forking a process that runs TensorFlow threads (after a malaria_tfds export) can deadlock,
    so spawn is used once TensorFlow is loaded.
    """
    return multiprocessing.get_context("spawn" if "tensorflow" in sys.modules else "fork")


def _tick(outcomes: Iterable[Outcome], bar: tqdm) -> Iterator[Outcome]:
    for outcome in outcomes:
        bar.update()
        yield outcome


def _decode_job(job: tuple[Path, Path, ImageLimits]) -> Outcome:
    """Worker body (a top-level function, so the pool can pickle it)."""
    return reuse_or_normalize(*job, _KNOWN)


def split_outcomes(
    candidates: Sequence[Candidate], outcomes: Sequence[Outcome]
) -> tuple[list[Accepted], list[QuarantineEntry]]:
    """Decoded images minus duplicates; rejections and duplicates become quarantine entries."""
    decoded: list[Accepted] = []
    quarantine: list[QuarantineEntry] = []
    for cand, outcome in zip(candidates, outcomes, strict=True):
        if isinstance(outcome, ImageRejected):
            quarantine.append(
                QuarantineEntry(cand.source_path, outcome.reason, outcome.detail, outcome.sha256, cand.label)
            )
        elif cand.expected_sha256 and cand.expected_sha256 != outcome.sha256:
            detail = f"the source says sha256 {cand.expected_sha256[:80]!r}, the file's is {outcome.sha256}"
            quarantine.append(
                QuarantineEntry(cand.source_path, SourceReason.SHA256_MISMATCH, detail, outcome.sha256, cand.label)
            )
        else:
            decoded.append((cand, outcome))
    kept, duplicates = resolve_duplicates(decoded, key=lambda a: a[1].sha256, label=lambda a: a[0].label)
    quarantine.extend(_duplicate_candidate_entry(rej) for rej in duplicates)
    return kept, quarantine


def extra_frames(accepted: Sequence[Accepted]) -> list[IgnoredEntry]:
    """Frames after the first of an accepted GIF/TIFF/MPO: not cases, but listed, not dropped."""
    return [
        IgnoredEntry(
            cand.source_path,
            IgnoreReason.EXTRA_FRAMES,
            f"{info.frames - 1} frame(s) after the first not used (a case is frame 0 of {info.frames})",
        )
        for cand, info in accepted
        if info.frames > 1
    ]


def _duplicate_candidate_entry(rej: Rejected[Accepted]) -> QuarantineEntry:
    """A source image whose bytes another one carries: the copy (kept one named) or a label conflict."""
    cand, info = rej.item
    if rej.reason == SourceReason.DUPLICATE:
        detail = f"same bytes as {rej.related[0][0].source_path} (kept)"
    else:
        others = ", ".join(f"{c.source_path} [{c.label}]" for c, _ in rej.related)
        detail = f"same bytes, label {cand.label!r}, as {others}"
    return QuarantineEntry(cand.source_path, rej.reason, detail, info.sha256, cand.label)


def manifest_frame(adapter: DatasetAdapter, accepted: Sequence[Accepted], paths: Paths) -> pd.DataFrame:
    """One row per accepted image, columns in contract order, types stable even when empty."""
    images_rel = paths.images.relative_to(paths.root).as_posix()
    columns = list(CORE_COLUMNS) + list(adapter.metadata_columns)
    rows = [_manifest_row(adapter, cand, info, images_rel) for cand, info in accepted]
    frame = pd.DataFrame(rows, columns=columns)
    dtypes = {c: "str" for c in columns} | {"width": "int64", "height": "int64"}
    if "age" in columns:
        dtypes["age"] = "float64"
    return frame.astype(dtypes)


def _manifest_row(
    adapter: DatasetAdapter, cand: Candidate, info: ImageInfo, images_rel: str
) -> dict[str, Any]:
    return {
        "image_id": cand.image_id,
        "path": f"{images_rel}/{stored_name(info.sha256)}",
        "source_path": cand.source_path,
        "sha256": info.sha256,
        "label": cand.label,
        "group_id": cand.group_id,
        "width": info.width,
        "height": info.height,
        "source": adapter.name,
        "split_hint": cand.split_hint,
        **{col: cand.metadata.get(col) for col in adapter.metadata_columns},
    }


def write_outputs(
    adapter: DatasetAdapter,
    accepted: Sequence[Accepted],
    quarantine: list[QuarantineEntry],
    paths: Paths,
    cache: ImageCache,
    ignored: list[IgnoredEntry] | None = None,
) -> list[str]:
    """Write manifest, quarantine, ignored list and labels; the image store becomes exactly the manifest's
    images, copied from the cache. Returns classes."""
    frame = manifest_frame(adapter, accepted, paths)
    present = set(frame["label"])
    classes = [c for c in adapter.classes if c in present]
    write_manifest(frame, paths.manifest)
    write_quarantine(quarantine, paths.quarantine)
    write_ignored(list(ignored or []), paths.ignored)
    write_labels(classes, paths.labels)
    prune_images(paths.images, {stored_name(s) for s in frame["sha256"]})
    cache.materialise(frame["sha256"], paths.images)
    if not classes:
        log.warning("ingest %s: no image accepted; see %s", adapter.name, paths.quarantine)
    return classes


def prune_images(images_dir: Path, keep: set[str]) -> int:
    """Remove files the manifest does not name, so the DVC output equals the manifest."""
    images_dir.mkdir(parents=True, exist_ok=True)
    stale = [p for p in images_dir.iterdir() if p.name not in keep]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return len(stale)


def run(paths: Paths, params: Mapping[str, Any]) -> IngestSummary:
    """The stage: params `dataset` (which adapter, where its source is), `ingest` and `bounds`; the
    intake folder's cases join when it exists."""
    dataset = params["dataset"]
    return ingest(dataset["name"], resolve(paths.root, dataset["root"]), paths, params.get("ingest", {}),
                  paths.intake if paths.intake.exists() else None, CaseBounds.from_params(params))


def main() -> int:
    """`python -m pipelines.ingest`, paths from the project root."""
    run_stage("ingest", run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
