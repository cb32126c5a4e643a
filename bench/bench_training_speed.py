"""Input and training throughput, side by side in one process: the published malaria recipe
(Keras ``ImageDataGenerator`` with rotation/zoom/shift/flip, reflect fill, fed to ``model.fit``)
against the project's cached, batch-augmented tf.data pipeline, on the same cells and model.

    python -m bench.bench_training_speed            # 3,000 cells at 128 px, median of 3 repeats

(a) input: images/s of one augmented pass (no model), the generator vs pipelines.data (warm
    cache; the cold first pass is reported too) and, for scale, pipelines.data with the opt-in
    interpolating geometry (the old default).
(b) training: images/s of one `fit` epoch of malaria_cnn (pipelines/zoo), batch 32, Adam, after a
    short warm-up that traces the step; variants of the project pipeline as listed in VARIANTS.
Repeats are interleaved (generator, then each variant, then again) so load from other processes
hits all of them alike. Writes bench/results/training_speed.{json,md}. Skips cleanly (exit 0)
when the malaria cells are absent.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
CELLS = Path(os.environ.get("MEDSCAN_SHARED_DATA", PROJECT.parent / "shared" / "data")) / "malaria" / "cell_images"
RESULTS = PROJECT / "bench" / "results"
CLASSES = ("Parasitized", "Uninfected")
# The project's recipe as configs/malaria.yaml sets it (exact geometry + colour/stain).
RECIPE = {"flip": True, "rot90": True, "hue": 0.03, "saturation": 0.2, "brightness": 0.1, "contrast": 0.1}
SLOW = {**RECIPE, "rotation": 20 / 360, "zoom": 0.05, "shift": 0.05}
# Training variants of the project pipeline: name -> (compile options, mixed-precision policy).
VARIANTS = {
    "pipeline": ({}, None),
    "pipeline_xla": ({"jit_compile": True}, None),
    "pipeline_spe8": ({"steps_per_execution": 8}, None),
    "pipeline_bf16": ({}, "mixed_bfloat16"),
}
DEFAULT_VARIANTS = ["pipeline", "pipeline_spe8", "pipeline_bf16"]  # XLA: see --variants pipeline_xla


def pick_cells(n: int, seed: int = 0):
    """`n` cells, half per class, drawn reproducibly from the native layout."""
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASSES:
        files = sorted((CELLS / label).glob("*.png"))
        for f in rng.choice(files, size=min(n // 2, len(files)), replace=False):
            rows.append({"path": f"{label}/{f.name}", "filename": str(f), "label": label, "class": label})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def generator(frame, size: int, batch: int):
    """The published recipe's input: ImageDataGenerator.flow_from_dataframe (decodes every epoch)."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator
    gen = ImageDataGenerator(rotation_range=20, zoom_range=0.05, width_shift_range=0.05,
                             height_shift_range=0.05, horizontal_flip=True, vertical_flip=True,
                             fill_mode="reflect")
    return gen.flow_from_dataframe(frame, x_col="filename", y_col="class", classes=list(CLASSES),
                                   target_size=(size, size), batch_size=batch, class_mode="categorical",
                                   shuffle=True, seed=0, validate_filenames=False)


def pipeline(frame, size: int, batch: int, augment: dict):
    from pipelines.data import make_dataset
    return make_dataset(frame, CELLS, list(CLASSES), size, batch, training=True, augment=augment, seed=0)


def timed_pass(batches, n_batches: int | None = None) -> tuple[float, int]:
    """Seconds and images for one pass over an iterable of (x, y) batches."""
    started, images = time.perf_counter(), 0
    for i, (x, _) in enumerate(batches):
        images += len(x["image"] if isinstance(x, dict) else x)
        if n_batches is not None and i + 1 >= n_batches:
            break
    return time.perf_counter() - started, images


def build(size: int, compile_options: dict, policy: str | None):
    import keras
    from pipelines.zoo import build_model
    keras.mixed_precision.set_global_policy(policy or "float32")
    keras.utils.set_random_seed(0)
    model = build_model({"builder": "malaria_cnn"}, (size, size, 3), len(CLASSES), 0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"], **compile_options)
    keras.mixed_precision.set_global_policy("float32")
    return model


def fit_epoch(model, data, steps: int | None = None) -> float:
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--input-only", action="store_true", help="measure (a) only (about a minute)")
    parser.add_argument("--out", default="training_speed", help="result file stem in bench/results")
    args = parser.parse_args()
    if not all((CELLS / c).is_dir() for c in CLASSES):
        print(f"skipped: malaria cells not found under {CELLS}")
        return
    import numpy as np
    import tensorflow as tf

    started_all = time.perf_counter()
    frame = pick_cells(args.images)
    n, size, batch = len(frame), args.image_size, args.batch_size
    steps = int(np.ceil(n / batch))
    print(f"{n} cells at {size} px, batch {batch}, {args.repeats} repeats", flush=True)

    # (a) input throughput.
    gen = generator(frame, size, batch)
    fast, slow = pipeline(frame, size, batch, RECIPE), pipeline(frame, size, batch, SLOW)
    cold_fast = timed_pass(fast)
    timed_pass(slow)  # fill slow's own cache
    inputs: dict[str, list[float]] = {"generator": [], "pipeline": [], "pipeline_slow_geometry": []}
    for r in range(args.repeats):
        seconds, images = timed_pass((gen[i] for i in range(len(gen))))
        inputs["generator"].append(images / seconds)
        seconds, images = timed_pass(fast)
        inputs["pipeline"].append(images / seconds)
        seconds, images = timed_pass(slow)
        inputs["pipeline_slow_geometry"].append(images / seconds)
        print(f"input repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in inputs.items()), flush=True)

    # (b) training throughput, same model and batch size.
    images_only = fast.map(lambda x, y: (x["image"], y))
    models = {} if args.input_only else {"published": build(size, {}, None)}
    models.update({name: build(size, *VARIANTS[name]) for name in args.variants if not args.input_only})
    data = {name: gen if name == "published" else images_only for name in models}
    for name, model in models.items():  # trace the step (not timed)
        fit_epoch(model, data[name], steps=8 if name == "published" else None)
    training: dict[str, list[float]] = {name: [] for name in models}
    for r in range(0 if args.input_only else args.repeats):
        for name, model in models.items():
            training[name].append(n / fit_epoch(model, data[name]))
        print(f"train repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in training.items()), flush=True)

    med = {k: statistics.median(v) for k, v in inputs.items()}
    tmed = {k: statistics.median(v) for k, v in training.items()}
    report = {
        "command": "python -m bench.bench_training_speed " + " ".join(sys.argv[1:]),
        "images": n, "image_size": size, "batch_size": batch, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
        "platform": platform.platform(), "tensorflow": tf.__version__,
        "recipe_augment": RECIPE, "slow_geometry_augment": SLOW,
        "generator_augment": "rotation_range=20, zoom_range=0.05, width/height_shift_range=0.05, "
                             "horizontal+vertical flip, fill_mode=reflect",
        "input_images_per_s": {"runs": inputs, "median": med,
                               "pipeline_cold_first_pass": cold_fast[1] / cold_fast[0],
                               "ratio_pipeline_vs_generator": med["pipeline"] / med["generator"]},
        "train_images_per_s": None if args.input_only else {
                               "runs": training, "median": tmed,
                               "ratio_vs_published": {k: v / tmed["published"] for k, v in tmed.items()},
                               "variants": {k: {**VARIANTS[k][0], **({"mixed_precision": VARIANTS[k][1]} if VARIANTS[k][1] else {})}
                                            for k in args.variants}},
        "steps_per_epoch": steps, "wall_seconds": round(time.perf_counter() - started_all, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (RESULTS / f"{args.out}.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


def markdown(r: dict) -> str:
    i, t = r["input_images_per_s"], r["train_images_per_s"]
    lines = [
        "# Training speed: published ImageDataGenerator recipe vs the project's tf.data pipeline",
        "",
        f"`{r['command']}`: {r['images']} NIH malaria cells at {r['image_size']} px, batch "
        f"{r['batch_size']}, median of {r['repeats']} interleaved repeats in one process, "
        f"{r['cpu_count']} CPU cores shared with other work (load average at the end "
        f"{r['load_average_at_end'][0]:.1f}), TensorFlow {r['tensorflow']}, wall {r['wall_seconds']} s.",
        "",
        f"Generator augmentation: {r['generator_augment']}. Project recipe: {r['recipe_augment']}.",
        "",
        "## (a) Augmented input, images/s (no model)",
        "",
        "| input | median | runs |",
        "| --- | ---: | --- |",
    ]
    for k, v in i["median"].items():
        lines.append(f"| {k} | {v:,.0f} | {', '.join(f'{x:,.0f}' for x in i['runs'][k])} |")
    lines += ["", f"Pipeline vs generator: **{i['ratio_pipeline_vs_generator']:.1f}x** (goal >= 10x). "
              f"The pipeline's cold first pass (decode + resize + fill the uint8 cache): "
              f"{i['pipeline_cold_first_pass']:,.0f} images/s.", ""]
    if t is None:
        return "\n".join(lines)
    lines += ["## (b) Training malaria_cnn, images/s (one fit epoch)", "",
              "| variant | compile options | median | ratio vs published | runs |",
              "| --- | --- | ---: | ---: | --- |"]
    for k, v in t["median"].items():
        opts = "ImageDataGenerator + fit" if k == "published" else (json.dumps(t["variants"].get(k, {})) or "{}")
        lines.append(f"| {k} | {opts} | {v:,.0f} | {t['ratio_vs_published'][k]:.2f}x | "
                     f"{', '.join(f'{x:,.0f}' for x in t['runs'][k])} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
