"""The web app's only door to the model: every model call of pipelines.webapp goes through here.

Why one module: the model contract (one input path, calibrated abstention) is being built beside
this app; at merge only this file changes. Today it is built on what exists: the registry's
champion (`pipelines.serve.Predictor.champion`), `pipelines.inference.top_k`, `pipelines.gradcam`,
the data set adapter's metadata value sets and display names, and an explicit abstention rule
from params (`serve.abstain_below`: a top probability below it means "uncertain: refer").

Speed: the model runs as one traced `tf.function` (not `model.predict`, whose per-call set-up
costs ~20 ms) and concurrent uploads are scored together by a micro-batcher that waits at most
`serve.batch_window_ms` for company. Pixels are prepared in memory (no temp PNG round trip), the
same way `pipelines.data.decode_image` prepares the training images: the upload is normalised
like ingest does it (`ingest.store_max_side`), then resized with antialiasing and rounded to uint8.
"""
from __future__ import annotations

import io
import math
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipelines.bounds import CaseBounds
from pipelines.datasets import get_adapter
from pipelines.features import encode_metadata
from pipelines.images import (ImageLimits, ImageReason, ImageRejected, _decode, _downsize, _open_checked,
                              _orientation, _to_rgb, _upright)


class InvalidField(ValueError):
    """A metadata field the model cannot use: the message names the field, never its value."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Prepared:
    """One upload ready for the model: pixels at model size, encoded metadata, the normalised
    picture (for the heat map) and the detected format (for the intake file name)."""

    pixels: np.ndarray            # uint8 [S, S, 3]
    metadata: Mapping[str, Any]   # typed values (parse_metadata); encoded per batch in _inputs
    picture: Image.Image          # the normalised RGB copy (longest side <= store_max_side)
    image_format: str             # JPEG, PNG, ... as detected, never from the file name


@dataclass(frozen=True)
class Prediction:
    top: list[dict[str, Any]]     # [{"label", "name", "probability"}], most probable first
    abstain: bool                 # True: "uncertain: refer"
    model_version: str


@dataclass
class _Job:
    prepared: Prepared
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Scores concurrent requests as one batch. One worker thread owns the model; after the first
    job it waits up to `window_s` for more, but only while `expecting()` says another request is
    on its way (being decoded), so a lone client never pays the window."""

    def __init__(self, score: Any, window_s: float, max_batch: int, expecting: Any) -> None:
        self.score, self.window_s, self.max_batch, self.expecting = score, window_s, max_batch, expecting
        self.jobs: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._run, name="medscan-batcher", daemon=True).start()

    def submit(self, prepared: Prepared) -> np.ndarray:
        job = _Job(prepared)
        self.jobs.put(job)
        return job.future.result()

    def _collect(self) -> list[_Job]:
        batch = [self.jobs.get()]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.jobs.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not self.expecting():
                break
            try:
                batch.append(self.jobs.get(timeout=min(left, 0.0005)))
            except queue.Empty:
                continue
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            try:
                probs = self.score([j.prepared for j in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                for job in batch:
                    job.future.set_exception(err)
                continue
            for job, row in zip(batch, probs):
                job.future.set_result(row)


class ModelAdapter:
    """The champion as the app needs it: fields to ask for, prediction, heat map, version."""

    def __init__(self, model: Any, info: Mapping[str, Any], version: str, params: Mapping[str, Any]) -> None:
        import tensorflow as tf

        self.model, self.info, self.version = model, info, version
        serve = params.get("serve", {})
        self.abstain_below = float(serve.get("abstain_below", 0.5))
        self.top_k = int(serve.get("top_k", 5))
        self.classes: list[str] = list(info["classes"])
        self.image_size = int(info["image_size"])
        self.metadata_columns: list[str] = list(info.get("metadata_columns") or [])
        self.categorical_values: dict[str, list[str]] = {
            k: list(v) for k, v in (info.get("categorical_values") or {}).items()}
        dataset = get_adapter(str(info.get("dataset") or params["dataset"]["name"]))
        self.display = {c: dataset.display_name(c) for c in self.classes}
        bounds = CaseBounds.from_params(params)
        self.age_range = (float(bounds.age_range[0]), float(bounds.age_range[1]))
        self.limits: ImageLimits = bounds.image_limits(int(params["ingest"]["store_max_side"]))
        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        size = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        def resize(image: tf.Tensor) -> tf.Tensor:   # = pipelines.data.decode_image after the decode
            resized = tf.image.resize(image, (size, size), antialias=True)
            return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

        self._resize = resize
        self._preparing = 0   # uploads being decoded: the batcher waits for them, not for nobody
        self._count_lock = threading.Lock()
        self.batcher = MicroBatcher(self._score, float(serve.get("batch_window_ms", 3)) / 1000.0,
                                    int(serve.get("max_batch", 32)), lambda: self._preparing > 0)

    @classmethod
    def champion(cls, params: Mapping[str, Any], paths: Any) -> "ModelAdapter":
        """The registry's champion; raises pipelines.serve.ChampionUnavailable when there is none."""
        from pipelines.serve import Predictor

        predictor = Predictor.champion(params, paths)
        return cls(predictor.model, predictor.info, predictor.version, params)

    @property
    def name(self) -> str:
        return self.version.rpartition("/")[0]

    @property
    def version_number(self) -> str:
        return self.version.rpartition("/")[2]

    # --- inputs -------------------------------------------------------------------------------
    def fields(self) -> list[dict[str, Any]]:
        """The metadata the model takes, for the upload form: age range or allowed values."""
        out = []
        for col in self.metadata_columns:
            if col == "age":
                out.append({"name": "age", "kind": "number", "min": self.age_range[0], "max": self.age_range[1]})
            else:
                out.append({"name": col, "kind": "choice", "values": self.categorical_values.get(col, [])})
        return out

    def parse_metadata(self, form: Mapping[str, str]) -> dict[str, Any]:
        """Typed metadata from form text; an empty field means unknown. Raises InvalidField."""
        meta: dict[str, Any] = {}
        for col in self.metadata_columns:
            text = (form.get(col) or "").strip()
            if col == "age":
                if not text:
                    meta[col] = math.nan
                    continue
                try:
                    age = float(text)
                except ValueError:
                    raise InvalidField("age", "age must be a number of years") from None
                low, high = self.age_range
                if not math.isfinite(age) or not low <= age <= high:
                    raise InvalidField("age", f"age must lie between {low:g} and {high:g} years")
                meta[col] = age
            else:
                allowed = self.categorical_values.get(col, [])
                value = text.lower() or "unknown"
                if value not in allowed:
                    raise InvalidField(col, f"{col} must be one of: {', '.join(allowed)}")
                meta[col] = value
        return meta

    def prepare(self, data: bytes, metadata: Mapping[str, Any]) -> Prepared:
        """Validate and normalise an upload (ImageRejected with a reason when unusable)."""
        with self._count_lock:
            self._preparing += 1
        try:
            return self._prepare(data, metadata)
        finally:
            with self._count_lock:
                self._preparing -= 1

    def _prepare(self, data: bytes, metadata: Mapping[str, Any]) -> Prepared:
        if not data:
            raise ImageRejected(ImageReason.EMPTY_FILE, "0 bytes")
        img = _open_checked(data, self.limits)
        _decode(img, self.limits)
        picture = _upright(_downsize(_to_rgb(img), self.limits.store_max_side), _orientation(img))
        pixels = self._resize(np.asarray(picture)).numpy()
        return Prepared(pixels, dict(metadata), picture, img.format or "PNG")

    def _inputs(self, batch: Sequence[Prepared]) -> dict[str, np.ndarray]:
        inputs = {"image": np.stack([p.pixels for p in batch]).astype(np.float32)}
        if self.metadata_columns:   # one frame per batch: pandas costs per call, not per row
            import pandas as pd

            frame = pd.DataFrame([{c: p.metadata.get(c) for c in self.metadata_columns} for p in batch])
            inputs["metadata"] = encode_metadata(frame, self.metadata_columns, self.categorical_values)
        return inputs

    def _score(self, batch: Sequence[Prepared]) -> np.ndarray:
        return np.asarray(self._call(self._inputs(batch)), dtype=np.float64)

    # --- outputs ------------------------------------------------------------------------------
    def predict(self, prepared: Prepared) -> Prediction:
        from pipelines.inference import top_k

        probs = self.batcher.submit(prepared)
        top = [{**t, "name": self.display[t["label"]]}
               for t in top_k(probs[None], self.classes, self.top_k)[0]]
        return Prediction(top, top[0]["probability"] < self.abstain_below, self.version)

    def heatmap_png(self, prepared: Prepared) -> bytes:
        """Grad-CAM of the predicted class over the normalised picture, as PNG bytes."""
        from pipelines.gradcam import gradcam, overlay

        heat = gradcam(self.model, self._inputs([prepared]))[0]
        blended = overlay(np.asarray(prepared.picture), heat)
        buf = io.BytesIO()
        Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(buf, "PNG")
        return buf.getvalue()
