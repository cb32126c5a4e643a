import numpy as np
import pandas as pd

from pipelines.features import encode_metadata, metadata_layout

VALUES = {"sex": ("male", "female", "unknown"), "localization": ("back", "face")}
COLUMNS = ("age", "sex", "localization")


def test_layout_has_unknown_slots_and_matches_encoding_width():
    layout = metadata_layout(COLUMNS, VALUES)
    assert layout == ["age", "age_missing", "sex=male", "sex=female", "sex=unknown",
                      "localization=back", "localization=face", "localization=unknown"]
    frame = pd.DataFrame({"age": [50.0], "sex": ["male"], "localization": ["back"]})
    assert encode_metadata(frame, COLUMNS, VALUES).shape == (1, len(layout))


def test_missing_and_unseen_values_are_encoded_not_dropped():
    frame = pd.DataFrame({"age": [None, 80.0], "sex": [None, "FEMALE"], "localization": ["scalp", "face"]})
    x = encode_metadata(frame, COLUMNS, VALUES)
    np.testing.assert_allclose(x[0], [0, 1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_allclose(x[1], [0.8, 0, 0, 1, 0, 0, 1, 0])


def test_no_metadata_gives_zero_width():
    assert encode_metadata(pd.DataFrame({"a": [1, 2]}), (), {}).shape == (2, 0)
