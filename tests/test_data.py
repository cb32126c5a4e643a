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
