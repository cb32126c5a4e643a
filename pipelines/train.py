"""Train stage: one architecture from the zoo on the train split, early-stopped on val.

Writes models/<arch>/ (model.keras, history.json, train_info.json, contract.json) and one MLflow
child run under the pipeline's parent run with params, per-epoch metrics and those files. The
MLflow model itself (the pyfunc, pipelines/pyfunc.py) is logged by evaluate, once the contract
carries the calibration fitted on validation: what promote registers is the calibrated model.
A `warm_start` candidate (pipelines/warm_start.py) takes the same path from the registry
champion's weights.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from pipelines import finetune, tracking, warm_start
from pipelines.candidate import save_candidate
from pipelines.cli import run_arch_stage
from pipelines.config import ARTIFACT_DIR, Paths
from pipelines.contract import from_train_info
from pipelines.contract import save as save_contract
from pipelines.data import make_dataset, steps_per_epoch
from pipelines.datasets import get_adapter
from pipelines.errors import ConfigError
from pipelines.features import encode_metadata, metadata_layout
from pipelines.fingerprint import training_fingerprint, write_fingerprint
from pipelines.losses import class_weights, make_loss
from pipelines.manifest import read_labels, read_splits
from pipelines.schedules import learning_rate
from pipelines.zoo import build_model, split_image_size

log = logging.getLogger(__name__)


def model_inputs_info(dataset: str, use_metadata: bool) -> dict[str, Any]:
    """How metadata is encoded for this data set (saved with the model so serving matches)."""
    adapter = get_adapter(dataset)
    columns = list(adapter.metadata_columns) if use_metadata else []
    values = {k: list(v) for k, v in adapter.categorical_values.items() if k in columns}
    return {"metadata_columns": columns, "categorical_values": values,
            "metadata_features": metadata_layout(columns, values)}


def split_inputs(frame: pd.DataFrame, info: Mapping[str, Any]) -> np.ndarray | None:
    """The training rows' metadata matrix (None for an image-only model). Not inference.metadata_for:
    that one checks rows against a finished model's contract, which does not exist yet here, and
    ingest has already bounded these rows."""
    if not info["metadata_columns"]:
        return None
    return encode_metadata(frame, info["metadata_columns"], info["categorical_values"])


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics and the learning rate to the active MLflow run."""

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)


def flat_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in values.items()}


def run(arch: str, paths: Paths, params: Mapping[str, Any]) -> dict[str, Any]:
    """Train `arch`, write models/<arch>/, log to MLflow; returns train_info (or the skipped marker).
    Reads params `train`, `augment`, `evaluate.tta`, `zoo.<arch>` and the data set's name."""
    train_params, dataset = params["train"], params["dataset"]["name"]
    if arch not in (params.get("zoo") or {}):
        raise ConfigError(f"no zoo entry {arch!r} in params.yaml; known: {sorted(params.get('zoo') or {})}")
    classes = read_labels(paths.labels)
    start = warm_start.resolve(arch, paths, params, classes)  # None: an ordinary zoo architecture
    if isinstance(start, warm_start.Skip):
        return warm_start.write_skipped(paths, arch, start.reason)
    if start is None:
        spec, size = split_image_size(params["zoo"][arch], int(train_params["image_size"]))
        info = model_inputs_info(dataset, bool(train_params["use_metadata"]))
    else:
        train_params, spec, size, info = start.train_params, start.spec, start.image_size, start.inputs_info
    keras.utils.set_random_seed(int(train_params["seed"]))
    frames = read_splits(paths)
    batch = int(train_params["batch_size"])

    sampling = str(train_params.get("sampling", "natural"))

    def dataset_for(split: str, training: bool):
        return make_dataset(frames[split], paths.root, classes, size, batch,
                            metadata=split_inputs(frames[split], info), training=training,
                            augment=params["augment"] if training else None, seed=int(train_params["seed"]),
                            sampling=sampling if training else "natural")

    train_ds, val_ds = dataset_for("train", True), dataset_for("val", False)
    steps = steps_per_epoch(len(frames["train"]), batch)
    y_train = frames["train"]["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    # Balanced sampling already equalises the classes the model sees; weighting on top would
    # square the correction, so class weights apply to natural sampling only.
    weighted = bool(train_params["class_weighting"]) and sampling == "natural"
    weights = class_weights(y_train, len(classes)) if weighted else None
    schedule = learning_rate(train_params, steps)

    # mixed_bfloat16: bf16 compute, float32 weights and softmax (zoo heads); the policy is saved
    # with every layer, so evaluate and serve run the model the way it was trained.
    keras.mixed_precision.set_global_policy(train_params.get("mixed_precision") or "float32")
    model = start.model if start else build_model(spec, (size, size, 3), len(classes),
                                                  len(info["metadata_features"]))
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=make_loss(train_params["loss"], gamma=float(train_params.get("focal_gamma", 2.0)),
                                 label_smoothing=float(train_params.get("label_smoothing", 0.0))),
                  metrics=["accuracy"], jit_compile=bool(train_params.get("jit_compile", False)),
                  steps_per_execution=int(train_params.get("steps_per_execution", 1)))

    experiment = tracking.configure(paths, dataset)
    key, run_name, named = tracking.execution(dataset, tracking.file_digest(paths.splits), params)
    parent = tracking.parent_run_id(experiment, key, run_name=run_name, arch=arch, named=named)
    out = paths.model_dir(arch)
    out.mkdir(parents=True, exist_ok=True)
    with mlflow.start_run(experiment_id=experiment, run_name=arch, parent_run_id=parent) as run:
        mlflow.set_tags({"medscan.arch": arch, "medscan.builder": spec["builder"],
                         "medscan.dataset": dataset})
        if start:
            warm_start.record(start, paths, arch)
        mlflow.log_params({**flat_params("train", train_params), **flat_params("augment", params["augment"]),
                           **flat_params("zoo", spec), "dataset": dataset, "arch": arch,
                           **{f"split.{k}_size": len(v) for k, v in frames.items()},
                           "num_classes": len(classes), "params_count": model.count_params()})
        tracking.log_split_datasets(frames, dataset, paths.splits)
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(train_params["early_stopping_patience"]),
                                          restore_best_weights=True),
            MlflowEpochLogger(),
        ]
        if isinstance(schedule, float):  # a plateau rule cannot rewrite a schedule
            callbacks.insert(1, keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=float(train_params["reduce_lr_factor"]),
                patience=int(train_params["reduce_lr_patience"]), min_lr=float(train_params.get("min_lr", 1e-6))))
        started = time.perf_counter()
        # A warm start continues the champion as it was saved (its frozen layers stay frozen):
        # no second head-only phase.
        history = finetune.fit(model, {} if start else spec, train_ds, validation_data=val_ds,
                               epochs=int(train_params["epochs"]), class_weight=weights, callbacks=callbacks, verbose=2,
                               shuffle=False,  # train_ds shuffles itself (pipelines.data); Keras warns otherwise
                               steps_per_epoch=steps if sampling == "balanced" else None)
        seconds = time.perf_counter() - started
        hist = {k: [float(x) for x in v] for k, v in history.history.items()}
        best_epoch = int(np.argmin(hist["val_loss"])) if hist.get("val_loss") else len(hist["loss"]) - 1
        train_info = {
            "arch": arch, "builder": spec["builder"], "spec": dict(spec), "dataset": dataset,
            "classes": classes, "image_size": size, **info,
            "run_id": run.info.run_id, "parent_run_id": parent,
            "train_seconds": round(seconds, 2), "epochs_run": len(hist["loss"]),
            "best_epoch": best_epoch + 1, "class_weights": {classes[k]: v for k, v in (weights or {}).items()},
            "split_sizes": {k: len(v) for k, v in frames.items()},
            "sampling": sampling, "tta": str(params.get("evaluate", {}).get("tta", "none")),
        }
        mlflow.log_metrics({"train_seconds": seconds, "epochs_run": len(hist["loss"])})
        save_candidate(paths, arch, model, hist, train_info)
        contract = save_contract(from_train_info(train_info, params), paths.contract(arch))
        mlflow.log_artifact(str(contract), artifact_path=ARTIFACT_DIR)
        # sha256 of every train+val image: the promotion gate never compares on these.
        fingerprint = write_fingerprint(paths.train_fingerprint(arch), training_fingerprint(frames))
        mlflow.log_artifact(str(fingerprint), artifact_path=ARTIFACT_DIR)
    return train_info


def main(argv: list[str] | None = None) -> None:
    if done := run_arch_stage("train", "Train one architecture (params.yaml zoo entry).", run, argv):
        arch, info = done
        log.info("trained %s: %d epochs in %.1f s (run %s)", arch, info["epochs_run"],
                 info["train_seconds"], info["run_id"])


if __name__ == "__main__":
    main()
