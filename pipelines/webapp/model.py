"""The web app's only door to the model: every model call of pipelines.webapp goes through here.

Built on the model contract and the one input path (pipelines.contract, pipelines.model_inputs):
the champion comes from `pipelines.serve.Predictor.champion`; an upload becomes model inputs with
`image_pixels` (ingest's normalisation, then training's resize) and `metadata_matrix` (the field
checks and training's encoding); scores are calibrated with the contract's temperature and read
by `answers`, whose "uncertain: refer" uses the contract's validation-chosen abstention threshold.
A model whose contract has no calibrated threshold (registered before calibration existed) uses
`serve.abstain_below_uncalibrated` from params instead, set here once for the whole app.

Speed: concurrent uploads are scored together by a micro-batcher that waits at most
`serve.batch_window_ms` for company, calling the batch path (`predict_inputs` over a stacked
batch, each row with its own metadata) through one traced `tf.function` of the model (an eager
Keras call or `model.predict` costs milliseconds per call). Decoding happens on the request
threads, so uploads are decoded in parallel and only the model call is serialised.
"""
from __future__ import annotations

import functools
import io
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.calibration import apply_temperature
from pipelines.contract import ModelContract
from pipelines.images import normalized_pixels
from pipelines.model_inputs import (InvalidInput, answers, check_age, check_category, image_pixels,
                                    metadata_matrix, model_inputs, predict_inputs)

__all__ = ["InvalidInput", "MicroBatcher", "ModelAdapter", "Prediction", "Prepared"]


@dataclass(frozen=True)
class Prepared:
    """One upload ready for the model: pixels at model size, the checked metadata (encoded in the
    batch, memoised per distinct record), the original bytes (for the heat map) and the
    detected format (intake file name)."""

    pixels: np.ndarray            # uint8 [S, S, 3] (model_inputs.image_pixels)
    metadata: Mapping[str, Any]   # checked values (parse_metadata)
    image: bytes
    image_format: str             # JPEG, PNG, ... as detected, never from the file name


@dataclass(frozen=True)
class Prediction:
    top: list[dict[str, Any]]     # [{"label", "name", "probability"}], most probable first (calibrated)
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

    def submit(self, prepared: Prepared) -> dict[str, Any]:
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
                results = self.score([j.prepared for j in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                for job in batch:
                    job.future.set_exception(err)
                continue
            for job, row in zip(batch, results):
                job.future.set_result(row)


class _Traced:
    """The model as one traced tf.function, callable like the model by predict_inputs."""

    def __init__(self, model: Any) -> None:
        import tensorflow as tf

        self._call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def __call__(self, inputs: Mapping[str, Any], training: bool = False) -> Any:
        return self._call(dict(inputs))


class ModelAdapter:
    """The champion as the app needs it: fields to ask for, prediction, heat map, version."""

    def __init__(self, predictor: Any, params: Mapping[str, Any]) -> None:
        """`predictor`: a pipelines.serve.Predictor (its .model, .version and .contract)."""
        serve = params.get("serve", {})
        contract: ModelContract = predictor.contract
        if contract.abstain_target_precision is None:   # no threshold was chosen on validation
            contract = replace(contract, abstain_threshold=float(serve["abstain_below_uncalibrated"]))
            predictor.contract = contract
        self.predictor = predictor
        self.top_k = int(serve.get("top_k", 5))
        self._traced = _Traced(predictor.model)
        # Checked metadata -> training's encoding, memoised: the pandas path costs ~1 ms a call and
        # uploads repeat the same few (age, sex, site) values; bounded, in memory only.
        self._encoded = functools.lru_cache(maxsize=1024)(self._encode_one)
        self._preparing = 0   # uploads being decoded: the batcher waits for them, not for nobody
        self._count_lock = threading.Lock()
        self.batcher = MicroBatcher(self._score, float(serve.get("batch_window_ms", 3)) / 1000.0,
                                    int(serve.get("max_batch", 32)), lambda: self._preparing > 0)

    @classmethod
    def champion(cls, params: Mapping[str, Any], paths: Any) -> "ModelAdapter":
        """The registry's champion; raises pipelines.serve.ChampionUnavailable when there is none."""
        from pipelines.serve import Predictor

        return cls(Predictor.champion(params, paths), params)

    @property
    def contract(self) -> ModelContract:
        return self.predictor.contract

    @property
    def version(self) -> str:
        return str(self.predictor.version)

    @property
    def name(self) -> str:
        return self.version.rpartition("/")[0]

    @property
    def version_number(self) -> str:
        return self.version.rpartition("/")[2]

    @property
    def classes(self) -> list[str]:
        return list(self.contract.classes)

    @property
    def display(self) -> dict[str, str]:
        return dict(zip(self.contract.classes, self.contract.display_names))

    @property
    def abstain_threshold(self) -> float:
        return float(self.contract.abstain_threshold)

    # --- inputs -------------------------------------------------------------------------------
    def fields(self) -> list[dict[str, Any]]:
        """The metadata the model takes, for the upload form: age range or allowed values."""
        out = []
        for col in self.contract.metadata_columns:
            if col == "age":
                low, high = self.contract.age_range
                out.append({"name": "age", "kind": "number", "min": low, "max": high})
            else:
                out.append({"name": col, "kind": "choice", "values": list(self.contract.categorical_values.get(col, ()))})
        return out

    def parse_metadata(self, form: Mapping[str, Any]) -> dict[str, Any]:
        """Checked metadata from form text or values (model_inputs' checks); empty means unknown.

        Raises InvalidInput naming the field, never quoting the value.
        """
        meta: dict[str, Any] = {}
        for col in self.contract.metadata_columns:
            if col == "age":
                meta[col] = check_age(form.get(col), self.contract.age_range)
            else:
                meta[col] = check_category(col, form.get(col), self.contract.categorical_values.get(col, ()))
        return meta

    def prepare(self, data: bytes, metadata: Mapping[str, Any]) -> Prepared:
        """Validate and normalise an upload; InvalidInput naming the field (for the image, `reason`
        is an ImageReason code) when it is unusable."""
        with self._count_lock:
            self._preparing += 1
        try:
            checked = self.parse_metadata(metadata)   # here, so a bad field never fails a whole batch
            pixels = image_pixels(self.contract, data)
            fmt = Image.open(io.BytesIO(data)).format or "PNG"   # header only: already decoded above
            return Prepared(pixels, checked, data, fmt)
        finally:
            with self._count_lock:
                self._preparing -= 1

    def _score(self, batch: Sequence[Prepared]) -> list[dict[str, Any]]:
        """The batch path: one model call for the batch, calibrated, read by `answers`."""
        inputs = {"image": np.stack([p.pixels for p in batch]).astype(np.float32)}
        columns = self.contract.metadata_columns
        if columns:
            features = np.stack([self._encoded(tuple(p.metadata.get(c) for c in columns)) for p in batch])
            if features.shape[1] > 0:
                inputs["metadata"] = features.astype(np.float32)
        probs = predict_inputs(self._traced, self.contract, inputs, batch_size=max(len(batch), 1))
        return answers(self.contract, apply_temperature(probs, self.contract.temperature), self.top_k)

    def _encode_one(self, values: tuple[Any, ...]) -> np.ndarray:
        """One checked metadata record (values in contract order) encoded as training encoded it."""
        frame = pd.DataFrame([dict(zip(self.contract.metadata_columns, values))])
        return metadata_matrix(self.contract, frame)[0]

    # --- outputs ------------------------------------------------------------------------------
    def predict(self, prepared: Prepared) -> Prediction:
        answer = self.batcher.submit(prepared)
        return Prediction(answer["top"], bool(answer["abstain"]), self.version)

    def heatmap_png(self, prepared: Prepared) -> bytes:
        """Grad-CAM of the predicted class over the normalised picture, as PNG bytes."""
        from pipelines.gradcam import gradcam, overlay

        inputs = model_inputs(self.contract, [prepared.image], [prepared.metadata])
        heat = gradcam(self.predictor.model, inputs)[0]
        picture = normalized_pixels(prepared.image, self.contract.image_limits())
        blended = overlay(picture, heat)
        buf = io.BytesIO()
        Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(buf, "PNG")
        return buf.getvalue()
