"""Transfer learning in two phases, as the Keras transfer-learning guide does it.

Phase 1 trains only the new head (everything after the ``features`` layer) with the pretrained
backbone frozen, so the randomly initialised head cannot send large gradients into features
it would wreck. Phase 2 unfreezes the top ``unfreeze_blocks`` blocks of the backbone and
continues at the phase-1 learning rate times ``fine_tune_lr_factor`` (0.1 by default).
BatchNormalization layers stay frozen in both phases: in Keras 3 a frozen BN layer also runs in
inference mode, so small medical batches neither update the ImageNet moving statistics nor
normalise with their own noisy batch statistics (the guide's recommendation; pretrained
``efficientnet_lite`` builds freeze them already, :func:`unfreeze_top` never unfreezes them).

Driven by three options of a ``zoo:`` entry (accepted for every family, never passed to the
builder, see :data:`pipelines.zoo.FINE_TUNE_OPTIONS`):

- ``head_epochs``: phase-1 epochs; absent or null means one ordinary ``fit`` (no phases);
- ``unfreeze_blocks``: how many blocks, counted from the top, phase 2 trains; null = all. A
  block is the layer-name prefix before the first ``_`` (``stem``, ``block0``..``block15``,
  ``top`` in ``efficientnet_lite``; ``top``, the 1x1 head conv, counts as one); 0 skips phase 2;
- ``fine_tune_lr_factor``: phase-2 learning rate / phase-1 learning rate.

Phase 2 runs the remaining ``epochs - head_epochs`` epochs, numbered on from phase 1 so per-epoch
logs stay continuous; the returned history holds both phases.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from pipelines.zoo import FINE_TUNE_OPTIONS, feature_extractor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTunePlan:
    """The two phases a zoo entry asks for."""

    head_epochs: int
    unfreeze_blocks: int | None = None
    lr_factor: float = 0.1


def plan_from_spec(spec: Mapping[str, Any]) -> FineTunePlan | None:
    """The plan in a zoo entry, or None for ordinary training; bad values raise."""
    given = {k: spec[k] for k in FINE_TUNE_OPTIONS if spec.get(k) is not None}
    if "head_epochs" not in given:
        if given:
            raise ValueError(f"zoo options {sorted(given)} need head_epochs (phase-1 epochs)")
        return None
    head_epochs = int(given["head_epochs"])
    blocks = given.get("unfreeze_blocks")
    factor = float(given.get("fine_tune_lr_factor", 0.1))
    if head_epochs < 1 or (blocks is not None and int(blocks) < 0) or not 0 < factor <= 1:
        raise ValueError(
            "fine-tuning needs head_epochs >= 1, unfreeze_blocks >= 0 (or null for all) and "
            f"0 < fine_tune_lr_factor <= 1; got {given}"
        )
    return FineTunePlan(head_epochs, None if blocks is None else int(blocks), factor)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers between the ``image`` input and the ``features`` layer, in graph order."""
    return [layer for layer in feature_extractor(model).layers
            if not isinstance(layer, keras.layers.InputLayer)]


def blocks(model: keras.Model) -> dict[str, list[keras.layers.Layer]]:
    """Backbone layers grouped by block (name prefix before the first ``_``), bottom to top."""
    groups: dict[str, list[keras.layers.Layer]] = {}
    for layer in backbone_layers(model):
        if layer.weights:
            groups.setdefault(layer.name.split("_")[0], []).append(layer)
    return groups


def freeze_backbone(model: keras.Model) -> None:
    """Phase 1: nothing up to ``features`` trains."""
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_top(model: keras.Model, n_blocks: int | None) -> list[str]:
    """Phase 2: make the top ``n_blocks`` blocks (all if None) trainable, BatchNorm excepted."""
    groups = blocks(model)
    if n_blocks is not None and n_blocks > len(groups):
        raise ValueError(
            f"unfreeze_blocks {n_blocks} > the {len(groups)} blocks of {model.name!r}: "
            f"{list(groups)}"
        )
    chosen = list(groups)[-n_blocks:] if n_blocks else (list(groups) if n_blocks is None else [])
    for name in chosen:
        for layer in groups[name]:
            if not isinstance(layer, layers.BatchNormalization):
                layer.trainable = True
    return chosen


@keras.saving.register_keras_serializable(package="medscan")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``factor`` times another schedule (phase 2 of a run that uses a schedule)."""

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule,
                 factor: float) -> None:
        self.schedule, self.factor = schedule, float(factor)

    def __call__(self, step: Any) -> Any:
        return self.factor * self.schedule(step)

    def get_config(self) -> dict[str, Any]:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "factor": self.factor}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledSchedule:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["factor"])


def _recompile(model: keras.Model, compile_config: dict[str, Any], lr_factor: float) -> None:
    """Compile again (needed after changing ``trainable``) with a fresh, rescaled optimizer."""
    compiled = keras.saving.deserialize_keras_object(compile_config)
    optimizer = compiled["optimizer"]
    if lr_factor != 1.0:
        if isinstance(optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            optimizer = optimizer.__class__.from_config(
                {**optimizer.get_config(),
                 "learning_rate": ScaledSchedule(optimizer._learning_rate, lr_factor)})
        else:
            optimizer.learning_rate = float(optimizer.learning_rate) * lr_factor
    model.compile(**{**compiled, "optimizer": optimizer})


def fit(model: keras.Model, spec: Mapping[str, Any], *args: Any, epochs: int,
        **fit_kwargs: Any) -> keras.callbacks.History:
    """``model.fit``, in two phases when the zoo entry ``spec`` asks for them (compiled model)."""
    plan = plan_from_spec(spec)
    if plan is None:
        return model.fit(*args, epochs=epochs, **fit_kwargs)
    if not model.compiled:
        raise ValueError("finetune.fit needs a compiled model (its optimizer, loss and metrics)")
    config = model.get_compile_config()
    freeze_backbone(model)
    _recompile(model, config, 1.0)
    log.info("phase 1: head only, %d epochs", min(plan.head_epochs, epochs))
    first = model.fit(*args, epochs=min(plan.head_epochs, epochs), **fit_kwargs)
    done = len(first.epoch)
    rest = epochs - plan.head_epochs
    if rest <= 0 or plan.unfreeze_blocks == 0:
        return first
    chosen = unfreeze_top(model, plan.unfreeze_blocks)
    _recompile(model, config, plan.lr_factor)
    log.info("phase 2: blocks %s at lr x %g, %d epochs", chosen, plan.lr_factor, rest)
    second = model.fit(*args, epochs=done + rest, initial_epoch=done, **fit_kwargs)
    merged = keras.callbacks.History()
    merged.set_model(model)
    merged.epoch = first.epoch + second.epoch
    merged.history = {k: list(first.history.get(k, [])) + list(v)
                      for k, v in second.history.items()}
    return merged
