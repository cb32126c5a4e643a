"""Keras applications (MobileNet, EfficientNet, ResNet, DenseNet, Inception-ResNet) as backbones.

The application is built on the model's own ``image`` input (``input_tensor=``), so its layers
sit flat in the final model under their usual Keras names: Grad-CAM can reach any of them,
ImageNet ``.h5`` files match them by name, and the ``.keras`` file needs nothing custom beyond
the two medscan layers. Each backbone gets the preprocessing it was trained with, inside the
model, so every model takes raw [0, 255] pixels:

    backbone            preprocessing (in the model)            min input (weights=None)
    MobileNetV2         ImageNetPreprocess "tf": [-1, 1]        32
    MobileNetV3Small    built into the application ([-1, 1])    32
    MobileNetV3Large    built into the application ([-1, 1])    32
    EfficientNetB0      built into the application              32
    ResNet50            ImageNetPreprocess "caffe": BGR - mean  32
    DenseNet121/201     ImageNetPreprocess "torch": mean/std    32
    InceptionResNetV2   ImageNetPreprocess "tf": [-1, 1]        75

``weights``: ``None`` trains from scratch; ``"imagenet"`` is handed to Keras, which downloads
(or reuses ``~/.keras/models/``); a path loads that file into the backbone after building it
with ``weights=None``:

- legacy ``.h5``/``.hdf5`` (the format of Keras's ImageNet files, with or without top):
  matched by layer name, layers whose shapes differ are skipped (``by_name=True,
  skip_mismatch=True``, the only by-name loading Keras 3 offers);
- ``.weights.h5`` / ``.keras`` (Keras 3 formats): matched by structure (layer order and
  type, Keras 3 has no by-name mode for them) with ``skip_mismatch=True``; write one from a
  trained model with ``feature_extractor(model).save_weights("backbone.weights.h5")``.

Loading that matches no variable at all raises instead of silently training from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from pipelines.config import project_root, resolve
from pipelines.zoo import heads

log = logging.getLogger(__name__)

# ImageNet statistics used by keras.applications.imagenet_utils.preprocess_input.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="medscan")
class ImageNetPreprocess(layers.Layer):
    """In-model copy of ``keras.applications.imagenet_utils.preprocess_input`` for RGB [0, 255].

    Modes: "tf" scales to [-1, 1]; "torch" scales to [0, 1] then normalises with the ImageNet
    mean/std; "caffe" flips RGB to BGR and subtracts the ImageNet BGR mean. Keeping it in the
    model means serving and evaluation cannot forget it.
    """

    MODES = ("tf", "torch", "caffe")

    def __init__(self, mode: str = "tf", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImageNetPreprocess mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        mean = ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        return ops.flip(x, axis=-1) - mean

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


# backbone name -> (constructor, preprocessing mode or None when the application has its own,
#                   minimum input side with weights=None, accepts `alpha`)
BACKBONES: dict[str, tuple[Callable[..., keras.Model], str | None, int, bool]] = {
    "MobileNetV2": (keras.applications.MobileNetV2, "tf", 32, True),
    "MobileNetV3Small": (keras.applications.MobileNetV3Small, None, 32, True),
    "MobileNetV3Large": (keras.applications.MobileNetV3Large, None, 32, True),
    "EfficientNetB0": (keras.applications.EfficientNetB0, None, 32, False),
    "ResNet50": (keras.applications.ResNet50, "caffe", 32, False),
    "DenseNet121": (keras.applications.DenseNet121, "torch", 32, False),
    "DenseNet201": (keras.applications.DenseNet201, "torch", 32, False),
    "InceptionResNetV2": (keras.applications.InceptionResNetV2, "tf", 75, False),
}


def min_input_size(backbone: str) -> int:
    """Smallest square side the backbone accepts when built without ImageNet weights."""
    return BACKBONES[backbone][2]


def _load_weights_file(backbone: keras.Model, path: Path) -> None:
    """Load a weights file into a freshly built backbone; raise if nothing in it matched."""
    if not path.is_file():
        raise FileNotFoundError(f"keras_app weights file not found: {path}")
    before = [np.array(v) for v in backbone.weights]
    name = path.name.lower()
    if name.endswith((".weights.h5", ".weights.json", ".keras")):
        backbone.load_weights(str(path), skip_mismatch=True)
    elif name.endswith((".h5", ".hdf5")):
        backbone.load_weights(str(path), by_name=True, skip_mismatch=True)
    else:
        raise ValueError(
            f"keras_app weights file {path} must end in .h5/.hdf5 (legacy, by name) or "
            ".weights.h5/.keras (Keras 3, by structure)"
        )
    changed = sum(
        not np.array_equal(b, np.array(v)) for b, v in zip(before, backbone.weights, strict=True)
    )
    if changed == 0:
        raise ValueError(
            f"no weights in {path} matched backbone {backbone.name!r}: wrong backbone, "
            "input layout or file?"
        )
    log.info("loaded %d of %d backbone variables from %s", changed, len(before), path)


def _set_trainable(
    backbone: keras.Model, trainable_backbone: bool, fine_tune_last: int | None
) -> None:
    """Freeze the backbone, or all but its last ``fine_tune_last`` layers.

    BatchNormalization layers stay frozen when fine-tuning part of the backbone: in Keras 3 a
    frozen BN layer runs in inference mode, so small medical batches do not wreck the
    pretrained statistics (the Keras transfer-learning guide's advice).
    """
    if trainable_backbone and fine_tune_last is None:
        return
    for layer in backbone.layers:
        layer.trainable = False
    if fine_tune_last:
        for layer in backbone.layers[-fine_tune_last:]:
            if not isinstance(layer, layers.BatchNormalization):
                layer.trainable = True


def build(
    *,
    backbone: str,
    weights: str | None = None,
    alpha: float | None = None,
    trainable_backbone: bool = True,
    fine_tune_last: int | None = None,
    dense_units: int = 0,
    dropout: float = 0.2,
) -> heads.Body:
    """Backbone (no top) -> features -> [soft attention + flatten | global average pool] -> top.

    ``alpha`` is the MobileNet width multiplier (MobileNet backbones only). ``trainable_backbone:
    false`` freezes the backbone (feature extraction); ``fine_tune_last: N`` trains only its
    last N layers (BatchNorm excluded). ``dense_units > 0`` adds a hidden Dense layer.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"keras_app backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    constructor, preprocess_mode, min_side, takes_alpha = BACKBONES[backbone]
    if alpha is not None and not takes_alpha:
        raise ValueError(
            f"keras_app option alpha only applies to MobileNet backbones, not {backbone}"
        )
    if fine_tune_last is not None and (not trainable_backbone or fine_tune_last < 0):
        raise ValueError("fine_tune_last needs trainable_backbone: true and a value >= 0")
    kwargs: dict[str, Any] = {} if alpha is None else {"alpha": alpha}
    weights_file = None if weights in (None, "imagenet") else resolve(project_root(), weights)

    def stack(x: keras.KerasTensor) -> keras.KerasTensor:
        input_shape = tuple(x.shape[1:])
        if weights is None and min(input_shape[:2]) < min_side:
            raise ValueError(
                f"{backbone} needs inputs of at least {min_side}x{min_side}, got {input_shape}"
            )
        # Built on the model's own tensor, so the application's layers sit flat in the model.
        base = constructor(
            include_top=False,
            weights=None if weights_file else weights,
            input_tensor=x,
            input_shape=input_shape,
            **kwargs,
        )
        if weights_file is not None:
            _load_weights_file(base, weights_file)
        _set_trainable(base, trainable_backbone, fine_tune_last)
        return base.output

    preprocess = (
        heads.identity
        if preprocess_mode is None
        else ImageNetPreprocess(preprocess_mode, name="preprocess")
    )
    return heads.Body(name=f"keras_app_{backbone}", stack=stack, preprocess=preprocess,
                      pool=layers.GlobalAveragePooling2D(name="avg_pool"),
                      top=heads.dense_top(dense_units, dropout))
