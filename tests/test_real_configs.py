"""configs/<dataset>.yaml and scripts/real.py: the derived overrides give valid params (no training)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from pipelines.data import augment_batch

PROJECT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("real", PROJECT / "scripts" / "real.py")
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)

PARAMS = yaml.safe_load((PROJECT / "params.yaml").read_text())


@pytest.mark.parametrize("dataset", real.DATASETS)
def test_config_overrides_give_valid_params(dataset, tmp_path):
    config = real.load_config(dataset)
    flat = real.derive(config, tmp_path, {"train.epochs": 3})
    params = real.apply(PARAMS, flat)
    assert params["dataset"] == {"name": dataset, "root": str(tmp_path.resolve())}
    assert params["train"]["epochs"] == 3  # --set wins over the config
    assert params["demo"]["images_per_class"] == 5
    # Every override names a knob params.yaml already has (a typo would be a silent no-op).
    unknown = [k for k in flat if not real._has(PARAMS, k)]
    assert unknown == [], unknown
    # Sections keep params.yaml's types (a list stays a list, a number a number).
    for key, value in flat.items():
        if real._has(PARAMS, key) and key != "dataset.root":
            node = PARAMS
            for part in key.split("."):
                node = node[part]
            if node is not None and value is not None:
                assert isinstance(value, type(node)) or {type(value), type(node)} <= {int, float}, key
    found = real.problems(params)
    assert found == []
    augment_batch(__import__("tensorflow").zeros((2, 8, 8, 3)), params["augment"],
                  __import__("tensorflow").constant([0, 1], "int64"))
    assert params["evaluate"]["tta"] in ("flips", "d4")


def test_dermnet_config_allows_a_subset_of_classes():
    assert real.load_config("dermnet")["params"]["validate"]["require_all_classes"] is False
    assert real.load_config("malaria")["params"]["train"]["image_size"] >= 128


def test_set_args_use_hydra_syntax_and_mark_new_keys():
    args = real.set_args({"train": {"epochs": 3}, "architectures": ["a"]},
                         {"train.epochs": 5, "train.sampling": "balanced", "architectures": ["x", "y"],
                          "dataset.root": "/data/with space/it's", "train.mixed_precision": None,
                          "augment.flip": True, "train.min_lr": 1e-06})
    assert args[::2] == ["-S"] * 7
    assert args[1::2] == ["train.epochs=5", "+train.sampling='balanced'", "architectures=['x','y']",
                          "+dataset.root='/data/with space/it\\'s'", "+train.mixed_precision=null",
                          "+augment.flip=true", "+train.min_lr=1e-06"]


def test_problems_are_reported_with_reasons(tmp_path):
    flat = real.derive(real.load_config("malaria"), tmp_path / "missing",
                       {"architectures": ["nope"], "train.lr_schedule": "step", "evaluate.tta": "x"})
    found = "\n".join(real.problems(real.apply(PARAMS, flat)))
    for text in ("'nope' has no zoo entry", "unknown lr_schedule", "evaluate.tta", "is not a folder"):
        assert text in found


def test_dry_run_prints_the_dvc_command(tmp_path, capsys):
    assert real.main(["malaria", "--data", str(tmp_path), "--set", "architectures=[malaria_cnn]",
                      "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dvc exp run --name real-malaria-") and "train.image_size=128" in out
    assert real.main(["malaria", "--data", str(tmp_path / "none"), "--dry-run"]) == 2
