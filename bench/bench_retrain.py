"""Retrain after a 1% delivery: warm start (fine-tune the champion) against a from-scratch retrain.

On ../shared/data/ham10000, in one process and one throw-away project:
  1. ingest the whole data set and split it once (pipelines.split.run); hold back 1% of the lesion
     groups as the 'delivery'. The other 99% keep the split they have in the full frame, which is
     what a group-keyed split guarantees (no existing image moves when cases are added);
  2. train cnn_medium from scratch on the 99% splits and register it as the champion once it
     clears promote.floor on validation, as the pipeline's gate would (next seed otherwise);
  3. with the delivery added, `--repeat` times, alternating which goes first:
     (a) a from-scratch retrain of cnn_medium, (b) the `warm_start` candidate (fine-tunes the
     champion: train.warm_start_epochs_factor x epochs at train.warm_start_lr_factor x lr).
Timed per retrain: pipelines.train.train (tf.data setup, registry download of the champion for (b),
fit, save, MLflow logging with the logged model) plus scoring the saved model on the validation
split (load + predict + balanced accuracy). Not timed: ingest, split, the TensorFlow import, and
the test-split score (reported for information only). Medians over the runs; each run uses
train.seed 42 + run index, the same seed for (a) and (b).

    python -m bench.bench_retrain --image-size 64 --epochs 10 --repeat 3
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from tests.conftest import SHARED_DATA  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
SCRATCH, WARM = "cnn_medium", "warm_start"


def balanced_accuracy(model, info: dict, frame, root: Path) -> float:
    from sklearn.metrics import balanced_accuracy_score

    from pipelines.inference import label_indices, predict_frame

    probs = predict_frame(model, info, frame, root)
    return float(balanced_accuracy_score(label_indices(frame, info["classes"]), probs.argmax(axis=1)))


def retrain(arch: str, paths, params: dict, frames: dict) -> dict[str, Any]:
    """One timed retrain: the train stage's function, then the validation score of what it saved."""
    from pipelines.inference import load_bundle
    from pipelines.train import train

    started = time.perf_counter()
    info = train(arch, paths, params)
    if "skipped" in info:
        raise SystemExit(f"{arch} was skipped: {info['skipped']}")
    model, saved = load_bundle(paths.model_dir(arch))
    val = balanced_accuracy(model, saved, frames["val"], paths.root)
    wall = time.perf_counter() - started
    test = balanced_accuracy(model, saved, frames["test"], paths.root)
    return {"arch": arch, "seed": params["train"]["seed"], "wall_seconds": round(wall, 2),
            "fit_seconds": info["train_seconds"], "epochs_run": info["epochs_run"],
            "best_epoch": info["best_epoch"], "val_balanced_accuracy": round(val, 4),
            "test_balanced_accuracy": round(test, 4)}


def setup(workdir: Path, params: dict, delivery_fraction: float, seed: int):
    """Ingest + split the whole data set; return (paths, full split frame, delivery group ids)."""
    from pipelines.config import Paths
    from pipelines.ingest import ingest
    from pipelines.manifest import read_manifest
    from pipelines.split import run as split_run

    paths = Paths(workdir)
    ingest("ham10000", SHARED_DATA / "ham10000", paths, params["ingest"])
    split_run(paths, params)
    full = read_manifest(paths.splits)
    groups = np.array(sorted(full["group_id"].unique()))
    rng = np.random.default_rng(seed)
    delivery = set(rng.choice(groups, size=max(1, round(delivery_fraction * len(groups))), replace=False))
    return paths, full, delivery


def write_splits(paths, frame) -> dict:
    from pipelines.manifest import write_manifest

    write_manifest(frame.reset_index(drop=True), paths.splits)
    return {s: frame[frame["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}


def champion(paths, params: dict, frames: dict, attempts: int) -> dict[str, Any]:
    """cnn_medium from scratch on the 99% splits, registered as champion once it clears
    promote.floor on its validation split (the pipeline never blesses a model under the floor),
    retrained with the next seed (+100) otherwise, at most `attempts` times."""
    from mlflow import MlflowClient

    from pipelines import registry
    from pipelines.inference import load_bundle
    from pipelines.train import train

    floor, tries = float(params["promote"]["floor"]), []
    for k in range(attempts):
        p = copy.deepcopy(params)
        p["train"]["seed"] = int(params["train"]["seed"]) + 100 * k
        started = time.perf_counter()
        info = train(SCRATCH, paths, p)
        seconds = time.perf_counter() - started
        model, saved = load_bundle(paths.model_dir(SCRATCH))
        val = balanced_accuracy(model, saved, frames["val"], paths.root)
        tries.append({"seed": p["train"]["seed"], "train_seconds": round(seconds, 1),
                      "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
                      "val_balanced_accuracy": round(val, 4), "run_id": info["run_id"]})
        print(json.dumps({"champion_attempt": tries[-1]}), file=sys.stderr, flush=True)
        if val >= floor:
            break
    client = MlflowClient()
    name = registry.model_name(params)
    version = registry.register(client, name, tries[-1]["run_id"], {"medscan.arch": SCRATCH})
    registry.set_champion(client, name, version.version)
    return {"version": str(version.version), "floor": floor, "attempts": tries,
            "cleared_floor": tries[-1]["val_balanced_accuracy"] >= floor,
            "train_seconds": tries[-1]["train_seconds"], "epochs_run": tries[-1]["epochs_run"],
            "split_sizes": info["split_sizes"]}


def champion_score(params: dict, frame, root: Path) -> float:
    """The registered champion, as the warm start downloads it, on a split of today's data."""
    from mlflow import MlflowClient

    from pipelines import registry

    name = registry.model_name(params)
    model, info = registry.load_version(name, registry.version_by_alias(MlflowClient(), name, "champion"))
    return balanced_accuracy(model, info, frame, root)


def pair_ratios(runs: list[dict]) -> list[float]:
    wall = {(r["run"], r["arch"]): r["wall_seconds"] for r in runs}
    return [wall[(i, WARM)] / wall[(i, SCRATCH)] for i in sorted({r["run"] for r in runs})]


def median(rows: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def report_md(summary: dict) -> str:
    s, w = summary["medians"][SCRATCH], summary["medians"][WARM]
    lines = [
        "# Retrain after a 1% delivery: warm start vs from scratch (HAM10000)",
        "",
        f"`{summary['command']}` on {summary['machine']}; total bench {summary['bench_seconds']:.0f} s; "
        f"1-min load average before {summary['load_before']:.2f}, after {summary['load_after']:.2f}.",
        "",
        f"Data: {summary['images']} images ingested from ../shared/data/ham10000; delivery = "
        f"{summary['delivery_groups']} lesion groups ({summary['delivery_images']} images, "
        f"{100 * summary['delivery_fraction']:.0f}% of the groups) held back, then added. The split is "
        "assigned once on the full frame (pipelines.split.run), so the 99% data keeps its split.",
        f"Champion: cnn_medium from scratch on the 99% splits {summary['champion']['split_sizes']}, "
        f"registered once its val balanced accuracy cleared promote.floor {summary['champion']['floor']} "
        f"(attempts, seed: val balanced acc / epochs run (best) / s: "
        + "; ".join(f"{t['seed']}: {t['val_balanced_accuracy']:.4f} / {t['epochs_run']} ({t['best_epoch']}) / "
                    f"{t['train_seconds']:.0f}" for t in summary["champion"]["attempts"])
        + f"; cleared: {summary['champion']['cleared_floor']}).",
        f"Params: image_size {summary['params']['image_size']}, epochs {summary['params']['epochs']} "
        f"(from scratch), warm start {summary['params']['warm_epochs']} epochs at lr "
        f"{summary['params']['warm_lr']} (factors {summary['params']['warm_start_epochs_factor']} / "
        f"{summary['params']['warm_start_lr_factor']}), batch {summary['params']['batch_size']}, the rest "
        "from params.yaml (augmentation, class weights, early stopping).",
        "",
        "Timed per retrain: `pipelines.train.train` (tf.data setup, the champion's download from the "
        "registry for the warm start, fit, save, MLflow logging and model logging) + scoring the saved "
        "model on the validation split. Not timed: ingest, split, TensorFlow import, test scoring.",
        "",
        "| run | retrain | seed | wall s (timed) | fit s | epochs (best) | val balanced acc | test balanced acc |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in summary["runs"]:
        lines.append(f"| {r['run']} | {r['arch']} | {r['seed']} | {r['wall_seconds']:.1f} | {r['fit_seconds']:.1f} | "
                     f"{r['epochs_run']} ({r['best_epoch']}) | {r['val_balanced_accuracy']:.4f} | "
                     f"{r['test_balanced_accuracy']:.4f} |")
    verdict_t = "meets" if summary["ratio"] <= 0.30 else "misses"
    verdict_v = "meets" if summary["val_gap"] <= 0.01 else "misses"
    lines += [
        "",
        f"**Medians of {summary['repeat']}:** from scratch {s['wall_seconds']:.1f} s, val balanced accuracy "
        f"{s['val_balanced_accuracy']:.4f}; warm start {w['wall_seconds']:.1f} s, val balanced accuracy "
        f"{w['val_balanced_accuracy']:.4f}.",
        "",
        f"- Wall-time ratio warm / scratch: **{summary['ratio']:.1%}** (target <= 30%: {verdict_t}).",
        "- Per run (the two retrains of a run ran back to back, under the same load): warm / scratch "
        + ", ".join(f"{x:.1%}" for x in summary["pair_ratios"])
        + f", median {statistics.median(summary['pair_ratios']):.1%}.",
        f"- Validation gap (scratch - warm, medians): **{summary['val_gap']:+.4f}** (target <= 0.01: {verdict_v}; "
        "negative means the warm start scored higher).",
        f"- The champion itself scores {summary['champion_on_new_val']:.4f} on the new validation split.",
        "- Run-to-run range of val balanced accuracy: from scratch "
        + ", ".join(f"{r['val_balanced_accuracy']:.4f}" for r in summary["runs"] if r["arch"] == SCRATCH)
        + "; warm start "
        + ", ".join(f"{r['val_balanced_accuracy']:.4f}" for r in summary["runs"] if r["arch"] == WARM) + ".",
        "",
        "Validation scores here are the early-stopping split of both retrains (and the champion "
        "early-stopped on the 99% part of it), so they are slightly optimistic for both; the gate "
        "scores the chosen candidate on the test split.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--champion-attempts", type=int, default=2,
                        help="seeds tried until the champion clears promote.floor on val")
    parser.add_argument("--delivery", type=float, default=0.01, help="fraction of lesion groups held back")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medscan-bench-retrain"))
    args = parser.parse_args()
    if not (SHARED_DATA / "ham10000").exists():
        print(f"{SHARED_DATA / 'ham10000'} is absent: nothing to benchmark")
        return
    bench_started = time.perf_counter()
    load_before = os.getloadavg()[0]
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)                   # the throw-away project's own SQLite store
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)

    from pipelines.config import load_params
    from pipelines.warm_start import fine_tune_params

    params = copy.deepcopy(load_params(PROJECT))
    params["dataset"].update(name="ham10000", root=str(SHARED_DATA / "ham10000"))
    params["train"].update(image_size=args.image_size, epochs=args.epochs, warm_start="champion")
    tuned = fine_tune_params(params["train"])

    paths, full, delivery = setup(args.workdir, params, args.delivery, seed=8)
    base = full[~full["group_id"].isin(delivery)]
    base_frames = write_splits(paths, base)
    champ = champion(paths, params, base_frames, args.champion_attempts)
    frames = write_splits(paths, full)               # the delivery arrives: same splits + new groups
    champion_new_val = champion_score(params, frames["val"], paths.root)

    runs: list[dict] = []
    for i in range(args.repeat):
        p = copy.deepcopy(params)
        p["train"]["seed"] = int(params["train"]["seed"]) + i
        order = (SCRATCH, WARM) if i % 2 == 0 else (WARM, SCRATCH)
        for arch in order:
            row = {"run": i + 1, **retrain(arch, paths, p, frames)}
            runs.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    medians = {a: {k: median([r for r in runs if r["arch"] == a], k)
                   for k in ("wall_seconds", "fit_seconds", "val_balanced_accuracy", "test_balanced_accuracy")}
               for a in (SCRATCH, WARM)}
    summary = {
        "command": "python -m bench.bench_retrain " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}",
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "images": len(full), "delivery_fraction": args.delivery, "delivery_groups": len(delivery),
        "delivery_images": int(full["group_id"].isin(delivery).sum()),
        "params": {"image_size": args.image_size, "epochs": args.epochs, "batch_size": params["train"]["batch_size"],
                   "warm_epochs": tuned["epochs"], "warm_lr": tuned["learning_rate"],
                   "warm_start_epochs_factor": params["train"]["warm_start_epochs_factor"],
                   "warm_start_lr_factor": params["train"]["warm_start_lr_factor"],
                   "learning_rate": params["train"]["learning_rate"]},
        "champion": champ, "champion_on_new_val": round(champion_new_val, 4),
        "repeat": args.repeat, "runs": runs, "medians": medians,
        "ratio": medians[WARM]["wall_seconds"] / medians[SCRATCH]["wall_seconds"],
        "val_gap": medians[SCRATCH]["val_balanced_accuracy"] - medians[WARM]["val_balanced_accuracy"],
        "pair_ratios": pair_ratios(runs),
        "bench_seconds": round(time.perf_counter() - bench_started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrain.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "retrain.md").write_text(report_md(summary), encoding="utf-8")
    print(report_md(summary))


if __name__ == "__main__":
    main()
