import numpy as np
import pandas as pd
from PIL import Image

from pipelines.data import make_dataset


def _frame(tmp_path, n=6):
    rows = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 14, 3), 20 * i, np.uint8)).save(path)
        rows.append({"path": path.name, "label": "a" if i % 2 else "b"})
    return pd.DataFrame(rows)


def test_batches_have_images_metadata_and_onehot_labels(tmp_path):
    frame = _frame(tmp_path)
    meta = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = make_dataset(frame, tmp_path, ["a", "b"], 8, 4, metadata=meta)
    x, y = next(iter(ds))
    assert set(x) == {"image", "metadata"}  # the cached channel mean never reaches the model
    assert x["image"].shape == (4, 8, 8, 3) and x["metadata"].shape == (4, 2)
    np.testing.assert_allclose(y.numpy()[0], [0, 1])
    assert float(x["image"][1].numpy().mean()) == 20.0  # order kept, pixels in [0, 255]


def test_augmentation_only_when_training(tmp_path):
    frame = _frame(tmp_path)
    frame["path"] = [p for p in frame["path"]]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(tmp_path / "0.png")
    aug = {"flip": True, "rotation": 0.2, "zoom": 0.2, "shift": 0.2, "brightness": 0.2, "contrast": 0.2}
    plain = [next(iter(make_dataset(frame, tmp_path, ["a", "b"], 8, 6, augment=aug)))[0]["image"].numpy()
             for _ in range(2)]
    np.testing.assert_array_equal(plain[0], plain[1])
    trained = make_dataset(frame, tmp_path, ["a", "b"], 8, 6, training=True, augment=aug, seed=1)
    first = np.sort(next(iter(trained))[0]["image"].numpy().ravel())
    assert not np.allclose(first, np.sort(plain[0].ravel()))


def test_unlabelled_dataset_for_prediction(tmp_path):
    ds = make_dataset(_frame(tmp_path), tmp_path, ["a", "b"], 8, 4, with_labels=False)
    batch = next(iter(ds))
    assert set(batch) == {"image"}


# --- the fast recipe: exact geometry, colour/stain, balanced sampling -------------------------
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines.data import (  # noqa: E402
    apply_augmentation, augment_batch, colour_matrices, draw_augmentation, random_symmetry,
    steps_per_epoch, symmetries,
)

RECIPE = {"flip": True, "rot90": True, "hue": 0.05, "saturation": 0.3, "brightness": 0.2, "contrast": 0.3}
SEED = tf.constant([3, 4], tf.int64)


def _batch(n=16, size=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_augment_batch_keeps_shape_dtype_and_range():
    x = _batch()
    out = augment_batch(tf.constant(x), RECIPE, SEED).numpy()
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.allclose(out, x)
    again = augment_batch(tf.constant(x), RECIPE, SEED).numpy()
    np.testing.assert_array_equal(out, again)  # stateless: same seed, same batch
    # All off: only the cast to float32.
    np.testing.assert_array_equal(augment_batch(tf.constant(x), {}, SEED).numpy(), x.astype(np.float32))


def test_cached_channel_mean_gives_the_same_batch_as_computing_it():
    x = _batch()
    mean = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])
    np.testing.assert_allclose(augment_batch(tf.constant(x), RECIPE, SEED, mean).numpy(),
                               augment_batch(tf.constant(x), RECIPE, SEED).numpy(), atol=1e-3)


def test_compiled_pixel_work_gives_the_same_transforms_as_eager():
    # make_dataset compiles apply_augmentation with XLA and draws outside it: same seed, same batch.
    x = tf.constant(_batch())
    draws = draw_augmentation(RECIPE, SEED, tf.shape(x)[0])
    compiled = tf.function(lambda images, d: apply_augmentation(images, RECIPE, d), jit_compile=True)
    np.testing.assert_allclose(compiled(x, draws).numpy(), augment_batch(x, RECIPE, SEED).numpy(), atol=1e-3)


def test_training_batches_carry_only_model_features(tmp_path):
    frame = _frame(tmp_path)
    for sampling in ("natural", "balanced"):
        ds = make_dataset(frame, tmp_path, ["a", "b"], 8, 4, training=True, augment=RECIPE,
                          sampling=sampling)
        x, _ = next(iter(ds))
        assert set(x) == {"image"}


@pytest.mark.parametrize("kind,views", [("flips", 4), ("rot90", 4), ("d4", 8)])
def test_random_symmetry_is_exact_and_draws_every_view(kind, views):
    x = _batch(n=64)
    out = random_symmetry(tf.constant(x), kind, SEED).numpy()
    candidates = [v(tf.constant(x)).numpy() for v in symmetries(kind)]
    assert len(candidates) == views
    hits = []
    for i in range(len(x)):  # every output image is exactly one view of its own input
        same = [j for j, c in enumerate(candidates) if np.array_equal(out[i], c[i])]
        assert same, f"image {i} is not an exact {kind} view of its input"
        hits.append(same[0])
        assert sorted(out[i].ravel().tolist()) == sorted(x[i].ravel().tolist())  # no pixel lost
    assert set(hits) == set(range(views))  # 64 draws: every view turns up


def test_symmetry_views_are_the_expected_transforms():
    x = tf.constant(_batch(n=2, size=5))
    rot = symmetries("rot90")
    np.testing.assert_array_equal(rot[1](x).numpy(), np.rot90(x.numpy(), 1, axes=(1, 2)))
    flips = symmetries("flips")
    np.testing.assert_array_equal(flips[1](x).numpy(), x.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(flips[2](x).numpy(), x.numpy()[:, ::-1])
    d4 = {v(x).numpy().tobytes() for v in symmetries("d4")}
    assert len(d4) == 8  # eight distinct symmetries of a generic square image


def test_colour_matrix_identity_and_greys_stay_grey():
    identity = colour_matrices(tf.zeros([1]), tf.ones([1])).numpy()[0]
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-6)
    grey = np.full((1, 4, 4, 3), 100, np.uint8)
    out = augment_batch(tf.constant(grey), {"hue": 0.5, "saturation": 0.5}, SEED).numpy()
    np.testing.assert_allclose(out, 100.0, atol=1e-3)
    # Saturation 0 collapses to luma: all channels equal.
    colourful = tf.constant(_batch(n=1).astype(np.float32))
    luma = tf.einsum("bhwc,bcd->bhwd", colourful, colour_matrices(tf.zeros([1]), tf.zeros([1]))).numpy()
    np.testing.assert_allclose(luma[..., 0], luma[..., 2], atol=1e-3)


def test_brightness_and_contrast_per_image():
    x = np.stack([np.full((6, 6, 3), 100, np.uint8), np.full((6, 6, 3), 140, np.uint8)])
    out = augment_batch(tf.constant(x), {"brightness": 0.1}, SEED).numpy()
    shifts = out.reshape(2, -1).mean(1) - [100, 140]
    assert np.all(np.abs(shifts) <= 25.5 + 1e-4) and np.allclose(out.reshape(2, -1).std(1), 0, atol=1e-3)
    assert not np.isclose(shifts[0], shifts[1])  # one draw per image, not per batch
    ramp = np.tile(np.linspace(50, 200, 6, dtype=np.float32)[None, :, None, None], (1, 1, 6, 3)).astype(np.uint8)
    out = augment_batch(tf.constant(ramp), {"contrast": 0.5}, SEED).numpy()
    np.testing.assert_allclose(out.mean(), ramp.mean(), atol=1e-3)  # about the mean
    ratio = out.std() / ramp.std()
    assert 0.5 <= ratio <= 1.5 and not np.isclose(ratio, 1.0)


def test_epochs_see_fresh_transforms_but_runs_repeat(tmp_path):
    frame = _frame(tmp_path, n=8)
    rng = np.random.default_rng(1)
    for p in frame["path"]:
        Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(tmp_path / p)

    def epoch(ds):
        return np.concatenate([x["image"].numpy() for x, _ in ds])

    ds = make_dataset(frame, tmp_path, ["a", "b"], 8, 4, training=True, augment=RECIPE, seed=5)
    first, second = epoch(ds), epoch(ds)
    assert first.dtype == np.float32 and not np.allclose(first, second)
    rerun = make_dataset(frame, tmp_path, ["a", "b"], 8, 4, training=True, augment=RECIPE, seed=5)
    np.testing.assert_array_equal(epoch(rerun), first)


def test_balanced_sampling_gives_roughly_balanced_batches(tmp_path):
    rows = []
    for i in range(40):  # 30 of "a", 8 of "b", 2 of "c"
        label = "a" if i < 30 else "b" if i < 38 else "c"
        Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": label})
    frame = pd.DataFrame(rows)
    meta = np.arange(40, dtype=np.float32)[:, None]
    ds = make_dataset(frame, tmp_path, ["a", "b", "c", "d"], 6, 30, metadata=meta, training=True,
                      sampling="balanced", seed=0)
    batches = list(ds.take(20))
    y = np.concatenate([b[1].numpy() for b in batches])
    share = y.mean(0)
    np.testing.assert_allclose(share[:3], 1 / 3, atol=0.05)  # natural shares: 0.75, 0.2, 0.05
    assert share[3] == 0.0  # a class absent from training is never drawn
    # Features stay paired with their labels: image value i and metadata i come together.
    x = batches[0][0]
    np.testing.assert_allclose(x["image"].numpy()[:, 0, 0, 0], x["metadata"].numpy()[:, 0])
    assert steps_per_epoch(40, 30) == 2 and steps_per_epoch(0, 8) == 1


def test_bad_sampling_is_a_clear_error(tmp_path):
    frame = _frame(tmp_path)
    with pytest.raises(ValueError, match="unknown sampling"):
        make_dataset(frame, tmp_path, ["a", "b"], 8, 4, training=True, sampling="oversample")
    with pytest.raises(ValueError, match="training split only"):
        make_dataset(frame, tmp_path, ["a", "b"], 8, 4, sampling="balanced")

