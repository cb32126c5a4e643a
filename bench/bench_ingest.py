"""Ingest throughput on the full real data copies, with 1 and with 2 worker processes side by side.

Each run is the unchanged `pipelines.ingest.ingest` into a throw-away project folder, so with a cold
ingest cache: every image is decoded (bench_incremental_ingest.py measures the warm case). The data set
files are read once beforehand so that both worker settings start from a warm page cache. The
machine is shared: with --repeat N the worker settings alternate N times and the table keeps each
setting's fastest run (the least disturbed); ingest.json keeps every run.
Writes bench/results/ingest.md and bench/results/ingest.json.

    python -m bench.bench_ingest                       # all three data sets, workers 1 and 2
    python -m bench.bench_ingest --datasets malaria --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from pipelines.bounds import CaseBounds  # noqa: E402
from pipelines.config import Paths, load_params  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.project_copy import SHARED_DATA  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
DATASETS = ("ham10000", "malaria", "dermnet")  # adapter name == folder name in shared/data


def warm_cache(root: Path) -> int:
    """Read every file once so the first measured run does not pay for cold disk reads."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            total += len(path.read_bytes())
    return total


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_one(dataset: str, workers: int, params: dict[str, Any], bounds: CaseBounds) -> dict[str, Any]:
    """One full ingest. CPU ms per image barely depends on what else the machine runs; images/s does."""
    with tempfile.TemporaryDirectory(prefix=f"bench-ingest-{dataset}-") as tmp:
        started, cpu = time.perf_counter(), cpu_seconds()
        summary = ingest(
            dataset, SHARED_DATA / dataset, Paths(Path(tmp)), params | {"workers": workers}, None, bounds
        )
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return summary.to_dict() | {
        "dataset": dataset,
        "wall_s": round(wall, 2),
        "cpu_ms_per_image": round(1000 * cpu / max(1, summary.candidates), 2),
        "load_after": os.getloadavg()[0],
    }


def markdown(
    rows: list[dict[str, Any]],
    params: dict[str, Any],
    load: tuple[float, float, float],
    repeat: int,
    bounds: CaseBounds,
) -> str:
    base = {r["dataset"]: r["images_per_s"] for r in rows if r["workers"] == 1}
    lines = [
        "# Ingest throughput on the real data copies",
        "",
        f"`python -m bench.bench_ingest` on {platform.node()}: {os.cpu_count()} CPU cores (shared with other "
        f"work; 1-min load average before the run {load[0]:.2f}), Python {platform.python_version()}.",
        f"Params: store_max_side={params['store_max_side']}, bounds: max_pixels={bounds.max_pixels}, "
        f"min_side={bounds.min_side}, max_side={bounds.max_side}. Files were read once beforehand (warm "
        "page cache); the ingest cache is cold (a fresh project per run).",
        "images/s = candidates hashed + decoded + stored per second of the decode phase; wall = whole "
        f"stage (scan, decode, dedup, manifest, prune). Fastest of {repeat} alternating run(s) per row.",
        "CPU ms/image = user+system CPU of the stage and its workers per image: it does not depend on "
        "the machine's other load, so 1000 / (CPU ms/image) is the images/s one idle core can reach.",
        "",
        "| data set | images | workers | accepted | quarantined (reasons) | wall s | images/s "
        "| vs 1 worker | CPU ms/image | load after |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["by_reason"].items())) or "-"
        speedup = r["images_per_s"] / base[r["dataset"]] if base.get(r["dataset"]) else float("nan")
        lines.append(
            f"| {r['dataset']} | {r['candidates']} | {r['workers']} | {r['accepted']} | {r['quarantined']} "
            f"({reasons}) | {r['wall_s']:.1f} | {r['images_per_s']:.0f} | {speedup:.2f}x "
            f"| {r['cpu_ms_per_image']:.2f} | {r['load_after']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="alternate the worker settings N times")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    all_params = load_params(PROJECT)
    params, bounds = dict(all_params["ingest"]), CaseBounds.from_params(all_params)
    load = os.getloadavg()
    rows = []
    for dataset in args.datasets:
        if not (SHARED_DATA / dataset).is_dir():
            logging.warning("skipping %s: no %s", dataset, SHARED_DATA / dataset)
            continue
        warm_cache(SHARED_DATA / dataset)
        rows.extend(bench_one(dataset, w, params, bounds) for _ in range(args.repeat) for w in args.workers)
    best = fastest(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(
        json.dumps({"params": params, "load_before": load, "runs": rows}, indent=2) + "\n"
    )
    (RESULTS / "ingest.md").write_text(markdown(best, params, load, args.repeat, bounds))
    print(markdown(best, params, load, args.repeat, bounds))
    return 0


def fastest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fastest run of each (data set, workers), in first-seen order."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["dataset"], row["workers"])
        if key not in best or row["images_per_s"] > best[key]["images_per_s"]:
            best[key] = row
    return list(best.values())


if __name__ == "__main__":
    sys.exit(main())
