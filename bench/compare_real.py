"""Train and compare architectures on a real data set copy with the unchanged pipeline.

Runs `dvc repro` in a throw-away project copy whose params point at ../shared/data/<dataset>,
then copies the comparison report and the promotion outcome into bench/results/. Image size and
epochs are reduced to fit 2 CPU cores; the report header says which.

    python -m bench.compare_real malaria --image-size 64 --epochs 12 --archs malaria_cnn cnn_medium cnn_small
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from pipelines.config import COMPARE_MD, Paths  # noqa: E402
from pipelines.project_copy import SHARED_DATA, copy_project, set_params, venv_env  # noqa: E402

RESULTS = PROJECT / "bench" / "results"


def configure(root: Path, dataset: str, image_size: int, epochs: int, archs: list[str],
              overrides: list[str]) -> None:
    changes: dict = {"dataset": {"name": dataset, "root": str(SHARED_DATA / dataset)},
                     "train": {"image_size": image_size, "epochs": epochs}, "architectures": archs,
                     "demo": {"images_per_class": 5}}  # the demo stage still runs; keep it negligible
    for item in overrides:  # section.key=value, value parsed as YAML (like `dvc exp run -S`)
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        changes.setdefault(section, {})[key] = yaml.safe_load(value)
    set_params(root, changes)


def run(dataset: str, image_size: int, epochs: int, archs: list[str], workdir: Path,
        overrides: list[str], tag: str) -> dict:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    root = copy_project(workdir)
    configure(root, dataset, image_size, epochs, archs, overrides)
    started = time.perf_counter()
    log = RESULTS / f"compare_{tag}.log"
    with open(log, "w") as fh:
        done = subprocess.run(["dvc", "repro"], cwd=root, env=venv_env(root), stdout=fh,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dvc repro failed for {dataset}: see {log}")
    shutil.copy(Paths(root).compare_dir / COMPARE_MD, RESULTS / f"compare_{tag}.md")
    promotion = json.loads(Paths(root).promotion.read_text())
    split = json.loads((root / "reports" / "split_report.json").read_text())
    summary = {"dataset": dataset, "image_size": image_size, "max_epochs": epochs, "archs": archs,
               "overrides": overrides,
               "wall_seconds": round(wall, 1), "split": split["sizes"],
               "overlapping_groups": split["overlapping_groups"],
               "best": promotion["candidate_arch"], "metric": promotion["metric"],
               "best_score": promotion["candidate_score"],
               "test": {a: json.loads((root / "metrics" / f"{a}.json").read_text())["test"] for a in archs}}
    (RESULTS / f"compare_{tag}.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=("malaria", "ham10000", "dermnet"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--archs", nargs="+", default=["cnn_small", "cnn_medium", "malaria_cnn"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medscan-bench"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra params.yaml override, e.g. train.reduce_lr_patience=3")
    parser.add_argument("--tag", help="result file suffix (default: the data set name)")
    args = parser.parse_args()
    if not (SHARED_DATA / args.dataset).exists():
        raise SystemExit(f"{SHARED_DATA / args.dataset} is absent: nothing to benchmark")
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or args.dataset
    s = run(args.dataset, args.image_size, args.epochs, args.archs, args.workdir / tag, args.set, tag)
    for arch, t in s["test"].items():
        print(f"{args.dataset} {arch}: accuracy {t['accuracy']:.4f} balanced {t['balanced_accuracy']:.4f} "
              f"f1_macro {t['f1_macro']:.4f} auc {t['roc_auc_macro_ovr']}")
    print(f"wall {s['wall_seconds']} s, best {s['best']}")


if __name__ == "__main__":
    main()
