"""Model zoo: one builder per family, all behind ``build_model(spec, input_shape, num_classes)``.

A family's ``build`` returns only its body (:class:`~pipelines.zoo.heads.Body`, like the
``stack_fn`` of Keras applications); :func:`build_model` alone creates the inputs and adds the
head, once for every family. A ``zoo:`` entry in params.yaml names a family (``builder``) and
its options, which are the keyword-only parameters of the family's ``build`` plus the head
options in :data:`~pipelines.zoo.heads.HEAD_OPTIONS` (checked here, so a typo in params.yaml
fails loudly instead of being ignored), the transfer-learning options in
:data:`FINE_TUNE_OPTIONS` (read by :mod:`pipelines.finetune`, never by a builder) and
``image_size`` (:func:`split_image_size`). Every model follows the contract in
:mod:`pipelines.zoo.heads`: raw [0, 255] ``image`` input (+ ``metadata`` when
``metadata_dim > 0``), preprocessing inside, ``features`` layer, float32 softmax ``probs``.

Importing this package registers the custom layers (``medscan>SoftAttention``,
``medscan>ImageNetPreprocess``), which ``keras.models.load_model`` needs; :func:`load_model`
does that import for you.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras

from pipelines.zoo import (
    alexnet,
    custom_cnn,
    efficientnet_lite,
    googlenet,
    heads,
    keras_apps,
    lenet,
    malaria_cnn,
)
from pipelines.zoo.heads import (
    ATTENTION_LAYER,
    FEATURES_LAYER,
    HEAD_OPTIONS,
    IMAGE_INPUT,
    METADATA_INPUT,
    PROBS_LAYER,
    Body,
    SoftAttention,
    attention_map_model,
    feature_extractor,
)
from pipelines.zoo.keras_apps import BACKBONES, ImageNetPreprocess, min_input_size

Builder = Callable[..., Body]

BUILDERS: dict[str, Builder] = {
    "custom_cnn": custom_cnn.build,
    "malaria_cnn": malaria_cnn.build,
    "lenet5": lenet.build,
    "alexnet_small": alexnet.build,
    "googlenet_small": googlenet.build,
    "keras_app": keras_apps.build,
    "efficientnet_lite": efficientnet_lite.build,
}

# Options any zoo entry may carry for two-phase transfer learning (pipelines.finetune).
FINE_TUNE_OPTIONS: tuple[str, ...] = ("head_epochs", "unfreeze_blocks", "fine_tune_lr_factor")

__all__ = [
    "ATTENTION_LAYER",
    "BACKBONES",
    "BUILDERS",
    "Body",
    "FEATURES_LAYER",
    "FINE_TUNE_OPTIONS",
    "HEAD_OPTIONS",
    "IMAGE_INPUT",
    "METADATA_INPUT",
    "PROBS_LAYER",
    "ImageNetPreprocess",
    "SoftAttention",
    "attention_map_model",
    "build_model",
    "builder_options",
    "feature_extractor",
    "heads",
    "load_model",
    "min_input_size",
    "split_image_size",
]


def builder_options(builder: str) -> dict[str, Any]:
    """Options an entry of this family accepts and their defaults (``inspect.Parameter.empty``
    if required): the family's keyword-only ``build`` parameters, then the head options."""
    if builder not in BUILDERS:
        raise ValueError(f"unknown zoo builder {builder!r}; known builders: {sorted(BUILDERS)}")
    params = inspect.signature(BUILDERS[builder]).parameters.values()
    own = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {**own, **HEAD_OPTIONS}


def split_image_size(spec: Mapping[str, Any], default: int) -> tuple[dict[str, Any], int]:
    """The zoo entry without its ``image_size`` key, and that training image size.

    An entry may set `image_size` to override `train.image_size` (InceptionResNetV2 needs >= 75,
    the malaria CNN was designed for 128); :func:`build_model` never sees that key.
    """
    options = dict(spec)
    return options, int(options.pop("image_size", default))


def build_model(
    spec: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    num_classes: int,
    metadata_dim: int = 0,
    *,
    name: str | None = None,
) -> keras.Model:
    """Build the model a ``zoo:`` entry describes; ``name`` (e.g. the zoo key) names the model.

    The family builds its body from its own options; the inputs and the head (with the head
    options, defaults from :data:`HEAD_OPTIONS`) are added here, the same for every family.
    """
    if "builder" not in spec:
        raise ValueError(
            f"zoo entry needs a 'builder' key (one of {sorted(BUILDERS)}); got {dict(spec)}"
        )
    options = {k: v for k, v in spec.items() if k != "builder" and k not in FINE_TUNE_OPTIONS}
    builder = spec["builder"]
    allowed = builder_options(builder)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"zoo builder {builder!r} does not accept option(s) {unknown}; "
            f"allowed: {sorted(allowed)}"
        )
    missing = sorted(
        k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in options
    )
    if missing:
        raise ValueError(f"zoo builder {builder!r} requires option(s) {missing}")
    head = {k: options.pop(k, default) for k, default in HEAD_OPTIONS.items()}
    body = BUILDERS[builder](**options)
    image, metadata = heads.model_inputs(tuple(input_shape), int(metadata_dim))
    return heads.head(image, metadata, body, num_classes=int(num_classes),
                      name=name or body.name, **head)


def load_model(path: str | Path, *, compile: bool = True) -> keras.Model:
    """``keras.models.load_model`` with the zoo's layers, medscan losses and schedules registered."""
    from pipelines import finetune, losses  # noqa: F401  (register ScaledSchedule, the losses)

    return keras.models.load_model(path, compile=compile)
