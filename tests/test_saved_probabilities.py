"""evaluate saves the test split's probabilities; promote reads them back for the challenger."""
import numpy as np
import pandas as pd

from pipelines.inference import save_probabilities, saved_probabilities

CLASSES = ["mel", "nv"]


def _frame(paths):
    return pd.DataFrame({"path": paths, "label": ["mel"] * len(paths)})


def test_round_trip_follows_the_asked_rows_order(tmp_path):
    target = tmp_path / "reports" / "evaluate" / "m.test.parquet"
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    save_probabilities(target, _frame(["a.png", "b.png", "c.png"]), probs, CLASSES)
    back = saved_probabilities(target, _frame(["c.png", "a.png"]), CLASSES)
    np.testing.assert_allclose(back, probs[[2, 0]])


def test_absent_incomplete_or_other_classes_mean_score_again(tmp_path):
    target = tmp_path / "m.test.parquet"
    assert saved_probabilities(target, _frame(["a.png"]), CLASSES) is None
    save_probabilities(target, _frame(["a.png"]), np.array([[0.3, 0.7]]), CLASSES)
    assert saved_probabilities(target, _frame(["a.png", "new.png"]), CLASSES) is None
    assert saved_probabilities(target, _frame(["a.png"]), ["nv", "mel"]) is None


def test_a_skipped_candidate_writes_an_empty_table(tmp_path):
    target = tmp_path / "skipped.test.parquet"
    save_probabilities(target, pd.DataFrame({"path": []}), np.empty((0, 0)), [])
    assert saved_probabilities(target, _frame(["a.png"]), CLASSES) is None
    assert len(pd.read_parquet(target)) == 0
