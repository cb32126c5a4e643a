"""The body contract, inputs, soft attention, metadata branch and head shared by every family.

A family's ``build`` returns a :class:`Body` (the network up to its image vector, like the
``stack_fn`` of Keras applications); :func:`head` adds the ``features`` mark, soft attention
and the classifier once, so the contract the train/evaluate/Grad-CAM stages rely on is
written here only:

- input ``"image"``: float32 RGB pixels in [0, 255], shape ``input_shape``;
- optional input ``"metadata"``: already-encoded floats, shape ``(metadata_dim,)``;
- layer ``"features"``: the last conv feature map (H x W x C), the Grad-CAM target;
- layer ``"soft_attention"`` (attention models): outputs ``[attended, attention_map]``;
- output layer ``"probs"``: float32 softmax over the classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers, ops

IMAGE_INPUT = "image"
METADATA_INPUT = "metadata"
FEATURES_LAYER = "features"
ATTENTION_LAYER = "soft_attention"
PROBS_LAYER = "probs"

log = logging.getLogger(__name__)

# Options every zoo entry accepts, with their defaults: the head is the same for every family,
# so these are declared here once and never appear in a family's ``build`` signature.
HEAD_OPTIONS: dict[str, Any] = {
    "attention": False,
    "attention_heads": 16,
    "metadata_units": 32,
    "metadata_dropout": 0.2,
}

Stage = Callable[[keras.KerasTensor], keras.KerasTensor]


def rescale(image: keras.KerasTensor) -> keras.KerasTensor:
    """[0, 255] -> [0, 1]: the preprocessing of the families trained from scratch."""
    return layers.Rescaling(1.0 / 255, name="rescale")(image)


def identity(x: keras.KerasTensor) -> keras.KerasTensor:
    """No layer at all: for bodies whose network brings its own preprocessing, or no top."""
    return x


@dataclass(frozen=True)
class Body:
    """What a family's ``build`` returns: its network without inputs, attention or head.

    ``stack`` (Keras applications' ``stack_fn``) maps the preprocessed image to the last conv
    feature map; ``pool`` is the family's own last pooling, which soft attention replaces;
    ``top`` maps the pooled tensor (flattened first if still spatial) to the image vector.
    ``finish`` runs on the finished model, for what needs every layer in place (loading
    weights matched by layer name, freezing). A ``Body`` serves one model: its parts may hold
    layer instances, which must not be called in a second graph.
    """

    name: str
    stack: Stage
    pool: Stage
    top: Stage = identity
    preprocess: Stage = rescale
    finish: Callable[[keras.Model], None] | None = None


@keras.saving.register_keras_serializable(package="medscan")
class SoftAttention(layers.Layer):
    """Soft attention over a feature map (Datta et al., 2021, skin-lesion classification).

    The feature map F (H x W x C) is read as a H x W x C x 1 volume and convolved with K
    3D kernels of size (k, k, C) (no padding along C, 'same' spatially), giving K maps of
    H x W x 1. After a ReLU (as in the authors' code) each map is softmax-normalised over the
    H*W positions; the K maps are summed into one attention map A (H x W, summing to K), and
    the output is ``gamma * F * A`` with ``gamma`` a learnable scalar starting small, so a
    fresh layer barely perturbs the features it attends to.

    A 3D kernel that spans the whole depth C of a depth-C volume has exactly one valid depth
    position, so the 3D convolution equals a 2D convolution with C input and K output
    channels. The kernel is stored in the 3D layout (k, k, C, 1, K) and computed as that 2D
    convolution, which is much faster on CPU (tests check the two agree).

    With ``return_attention_map=True`` the layer returns ``[attended, attention_map]`` so the
    map (B x H x W) can be read for visualisation from a trained model.
    """

    def __init__(
        self,
        heads: int = 16,
        kernel_size: int = 3,
        gamma_init: float = 0.01,
        return_attention_map: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if heads < 1 or kernel_size < 1:
            raise ValueError(f"heads and kernel_size must be >= 1, got {heads}, {kernel_size}")
        self.heads = int(heads)
        self.kernel_size = int(kernel_size)
        self.gamma_init = float(gamma_init)
        self.return_attention_map = bool(return_attention_map)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"SoftAttention needs a (batch, H, W, C) input, got {input_shape}")
        channels = int(input_shape[-1])
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel_conv3d",
            shape=(k, k, channels, 1, self.heads),
            initializer="he_uniform",
        )
        self.bias = self.add_weight(name="bias_conv3d", shape=(self.heads,), initializer="zeros")
        self.gamma = self.add_weight(
            name="gamma",
            shape=(),
            initializer=keras.initializers.Constant(self.gamma_init),
        )

    def call(self, inputs: Any) -> Any:
        k, channels = self.kernel_size, self.kernel.shape[2]
        kernel_2d = ops.reshape(self.kernel, (k, k, channels, self.heads))
        logits = ops.relu(ops.conv(inputs, kernel_2d, strides=1, padding="same") + self.bias)
        shape = ops.shape(inputs)
        flat = ops.reshape(logits, (shape[0], shape[1] * shape[2], self.heads))
        # Softmax over the H*W positions, so each head sums to 1 (written out: ops.softmax warns
        # on the size-1 axis of a 1x1 map, which is legitimate here, merely uninformative).
        alpha = ops.exp(flat - ops.max(flat, axis=1, keepdims=True))
        alpha = alpha / ops.sum(alpha, axis=1, keepdims=True)
        attention_map = ops.reshape(ops.sum(alpha, axis=-1), (shape[0], shape[1], shape[2]))
        attended = self.gamma * inputs * ops.expand_dims(attention_map, -1)
        if self.return_attention_map:
            return [attended, attention_map]
        return attended

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> Any:
        if self.return_attention_map:
            return [tuple(input_shape), tuple(input_shape[:3])]
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            heads=self.heads,
            kernel_size=self.kernel_size,
            gamma_init=self.gamma_init,
            return_attention_map=self.return_attention_map,
        )
        return config


def model_inputs(
    input_shape: tuple[int, int, int], metadata_dim: int = 0
) -> tuple[keras.KerasTensor, keras.KerasTensor | None]:
    """The two named inputs of the contract; no metadata input when ``metadata_dim == 0``."""
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
    if metadata_dim < 0:
        raise ValueError(f"metadata_dim must be >= 0, got {metadata_dim}")
    image = keras.Input(shape=tuple(input_shape), name=IMAGE_INPUT, dtype="float32")
    metadata = (
        keras.Input(shape=(metadata_dim,), name=METADATA_INPUT, dtype="float32")
        if metadata_dim
        else None
    )
    return image, metadata


def mark_features(feature_map: keras.KerasTensor) -> keras.KerasTensor:
    """Name the last conv feature map so Grad-CAM and embeddings find it in every family."""
    return layers.Identity(name=FEATURES_LAYER)(feature_map)


def attention_pool(
    features: keras.KerasTensor, *, heads: int, dropout: float = 0.5
) -> keras.KerasTensor:
    """Datta et al.'s attention block: max-pooled [features, attended features], ReLU, Dropout.

    Returns a spatial tensor (H/2 x W/2 x 2C); the caller flattens or pools it. It replaces the
    last pooling of the plain network, so spatial sizes match the no-attention variant.
    """
    if features.shape[1] == 1 and features.shape[2] == 1:
        log.warning("soft attention on a 1x1 feature map is uniform; use larger inputs")
    attended, _ = SoftAttention(heads=heads, return_attention_map=True, name=ATTENTION_LAYER)(
        features
    )
    pooled_features = layers.MaxPooling2D(2, padding="same", name="attention_pool_features")(
        features
    )
    pooled_attended = layers.MaxPooling2D(2, padding="same", name="attention_pool_attended")(
        attended
    )
    x = layers.Concatenate(name="attention_concat")([pooled_features, pooled_attended])
    x = layers.Activation("relu", name="attention_relu")(x)
    return layers.Dropout(dropout, name="attention_dropout")(x)


def metadata_branch(
    metadata: keras.KerasTensor, *, units: int, dropout: float
) -> keras.KerasTensor:
    """Small Dense branch that lifts encoded age/sex/site to a few learned features."""
    x = layers.Dense(units, activation="relu", name="metadata_dense")(metadata)
    if dropout:
        x = layers.Dropout(dropout, name="metadata_dropout")(x)
    return x


def dense_top(units: int, dropout: float) -> Stage:
    """An optional hidden ReLU Dense (``head_dense``) then optional Dropout (``head_dropout``)."""

    def top(x: keras.KerasTensor) -> keras.KerasTensor:
        if units:
            x = layers.Dense(units, activation="relu", name="head_dense")(x)
        if dropout:
            x = layers.Dropout(dropout, name="head_dropout")(x)
        return x

    return top


def head(
    image: keras.KerasTensor,
    metadata: keras.KerasTensor | None,
    body: Body,
    *,
    num_classes: int,
    name: str,
    attention: bool,
    attention_heads: int,
    metadata_units: int,
    metadata_dropout: float,
) -> keras.Model:
    """The whole model: ``body`` on the image, the head options (:data:`HEAD_OPTIONS`), softmax."""
    features = mark_features(body.stack(body.preprocess(image)))
    x = attention_pool(features, heads=attention_heads) if attention else body.pool(features)
    if len(x.shape) == 4:
        x = layers.Flatten(name="flatten")(x)
    model = assemble(image, metadata, body.top(x), num_classes=num_classes, name=name,
                     metadata_units=metadata_units, metadata_dropout=metadata_dropout)
    if body.finish is not None:
        body.finish(model)
    return model


def assemble(
    image: keras.KerasTensor,
    metadata: keras.KerasTensor | None,
    image_vector: keras.KerasTensor,
    *,
    num_classes: int,
    name: str,
    metadata_units: int,
    metadata_dropout: float,
) -> keras.Model:
    """Concatenate image features with the metadata branch and end in the float32 softmax."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    # Always a list (even of one): Keras then takes, without structure warnings, a dict keyed by
    # the input names ({"image": ...[, "metadata": ...]}, what tf.data pipelines should feed to
    # every model alike), a list in this order, or a bare image tf.Tensor (image-only models).
    inputs = [image]
    x = image_vector
    if metadata is not None:
        inputs.append(metadata)
        meta = metadata_branch(metadata, units=metadata_units, dropout=metadata_dropout)
        x = layers.Concatenate(name="head_concat")([x, meta])
    # float32 output even under a mixed-precision policy: probabilities feed metrics directly.
    probs = layers.Dense(num_classes, activation="softmax", dtype="float32", name=PROBS_LAYER)(x)
    return keras.Model(inputs=inputs, outputs=probs, name=name)


def attention_map_model(model: keras.Model) -> keras.Model:
    """Model from the same inputs to ``[attention_map, probs]`` for visualising where it looks."""
    try:
        layer = model.get_layer(ATTENTION_LAYER)
    except ValueError as err:
        raise ValueError(f"model {model.name!r} has no {ATTENTION_LAYER!r} layer") from err
    return keras.Model(model.inputs, [layer.output[1], model.get_layer(PROBS_LAYER).output])


def feature_extractor(model: keras.Model) -> keras.Model:
    """Model from the image input to the ``features`` map (Grad-CAM, embeddings, backbone export).

    For ``keras_app`` models its weights file (``.save_weights("x.weights.h5")`` or legacy
    ``.save("x.h5")``) is accepted by the ``weights:`` option of another ``keras_app`` build.
    """
    return keras.Model(
        model.get_layer(IMAGE_INPUT).output,
        model.get_layer(FEATURES_LAYER).output,
        name=f"{model.name}_features",
    )
