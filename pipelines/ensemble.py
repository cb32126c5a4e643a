"""Ensemble candidate: one Keras model whose output is the mean of its members' probabilities.

Why one model: promote, serve and evaluate take a candidate as a model directory (model.keras +
train_info.json) and a logged MLflow model; an ensemble that is itself a functional model needs
no special case anywhere downstream, so the gate can promote it like any trained architecture.

Contract (that of :mod:`pipelines.zoo.heads`, less the ``features`` layer):

- input ``image``: raw [0, 255] float32 at the LARGEST member image size; a member trained at a
  smaller size gets a ``Resizing`` layer in front of it (bilinear with antialiasing, as
  :func:`pipelines.data.decode_image` resizes). That member then sees the image resampled twice
  (stored copy -> largest size -> its size) and not rounded to uint8, so its probabilities differ
  slightly from scoring it alone at its own size; the test split is scored this way, so the gate
  judges exactly what would be served.
- input ``metadata`` when the members use it; all members must share one encoding (they do when
  trained from one params.yaml: train_info's metadata keys are compared).
- output ``probs``: the float32 arithmetic mean of the members' softmax outputs (a ``Average``
  layer), so it is a probability vector again.
- no ``features`` layer of its own: the members sit inside as nested models (named by their
  architecture) and keep theirs. Grad-CAM (:func:`pipelines.gradcam.gradcam`, layer ``None``)
  finds the last 4-D layer, which lies inside the last member; the gradient of the mean through
  that member is 1/K of its own, and each heatmap is normalised to peak 1, so the ensemble's
  Grad-CAM is the Grad-CAM of that member (``explained_member``).

Honesty about selection: members are chosen on the VALIDATION split, so the ensemble's validation
score is slightly optimistic (it was built to score well there). The promotion gate decides on the
fair test comparison, which no choice here has seen.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from pipelines.errors import DataError
from pipelines.zoo.heads import IMAGE_INPUT, METADATA_INPUT, PROBS_LAYER

# train_info keys every member must agree on: the same outputs, fed the same metadata.
SHARED_KEYS: tuple[str, ...] = ("classes", "metadata_columns", "categorical_values", "metadata_features")
RESIZE_INTERPOLATION = "bilinear"   # pipelines.data.decode_image: tf.image.resize, antialias=True


def differences(info: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """The SHARED_KEYS on which a member's train_info differs from the reference member's."""
    return [key for key in SHARED_KEYS if info.get(key) != reference.get(key)]


def check_compatible(infos: Mapping[str, Mapping[str, Any]]) -> None:
    """Members must predict the same classes in the same order from the same metadata encoding."""
    names = list(infos)
    if len(names) < 2:
        raise DataError(f"an ensemble needs at least 2 members, got {names}")
    first = infos[names[0]]
    for name in names[1:]:
        for key in differences(infos[name], first):
            raise DataError(f"ensemble members {names[0]!r} and {name!r} differ in train_info "
                             f"{key!r}: {first.get(key)!r} vs {infos[name].get(key)!r}")


def _member_inputs(member: keras.Model) -> list[str]:
    names = [t.name for t in member.inputs]
    unknown = sorted(set(names) - {IMAGE_INPUT, METADATA_INPUT})
    if IMAGE_INPUT not in names or unknown:
        raise DataError(f"member {member.name!r} has inputs {names}; the zoo contract is "
                         f"{IMAGE_INPUT!r} (+ {METADATA_INPUT!r})")
    return names


def build_ensemble(members: Mapping[str, keras.Model], image_sizes: Mapping[str, int],
                   metadata_dim: int = 0, *, name: str = "ensemble") -> keras.Model:
    """Functional model `image` (+ `metadata`) -> mean of the members' `probs`.

    members: architecture name -> loaded model (renamed to that name inside the ensemble, so two
    members of one family do not clash); image_sizes: the size each member was trained at.
    """
    if len(members) < 2:
        raise DataError(f"an ensemble needs at least 2 members, got {list(members)}")
    size = max(int(image_sizes[arch]) for arch in members)
    image = keras.Input(shape=(size, size, 3), name=IMAGE_INPUT, dtype="float32")
    metadata = keras.Input(shape=(metadata_dim,), name=METADATA_INPUT, dtype="float32") if metadata_dim else None
    outputs = []
    for arch, member in members.items():
        wanted = _member_inputs(member)
        if (METADATA_INPUT in wanted) != (metadata is not None):
            raise DataError(f"member {arch!r} {'needs' if metadata is None else 'takes no'} metadata "
                             f"but the ensemble has metadata_dim={metadata_dim}")
        member.name = arch
        own = int(image_sizes[arch])
        x = image if own == size else keras.layers.Resizing(
            own, own, interpolation=RESIZE_INTERPOLATION, antialias=True, name=f"resize_{arch}")(image)
        feeds = {IMAGE_INPUT: x, METADATA_INPUT: metadata}
        outputs.append(member([feeds[n] for n in wanted]))
    probs = keras.layers.Average(dtype="float32", name=PROBS_LAYER)(outputs)
    inputs = [image] if metadata is None else [image, metadata]
    return keras.Model(inputs=inputs, outputs=probs, name=name)


def member_names(model: keras.Model) -> list[str]:
    """The nested member models of an ensemble, in the order they were added."""
    return [layer.name for layer in model.layers if isinstance(layer, keras.Model)]


def explained_member(model: keras.Model) -> str:
    """The member whose feature map Grad-CAM explains (the last one; see the module docstring)."""
    names = member_names(model)
    if not names:
        raise ValueError(f"{model.name} has no member models")
    return names[-1]


def union_fingerprint(fingerprints: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every image and group any member trained or early-stopped on (the gate excludes them all)."""
    import hashlib

    if not fingerprints:
        raise ValueError("no member fingerprints to unite")
    shas = sorted(set().union(*(f["sha256"] for f in fingerprints)))
    groups = sorted(set().union(*(f.get("group_ids") or () for f in fingerprints)))
    splits = sorted(set().union(*(f.get("splits") or () for f in fingerprints)))
    return {
        "format": fingerprints[0].get("format", 1),
        "splits": splits,
        "counts": {"members": len(fingerprints), "unique_images": len(shas), "groups": len(groups)},
        "digest": hashlib.sha256("\n".join(shas).encode("ascii")).hexdigest(),
        "sha256": shas,
        "group_ids": groups,
    }
