"""pipelines.summary: the champion line, and a clear NO CHAMPION block with the gate's reason."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines import summary as s
from pipelines.config import Paths

PARAMS = {"dataset": {"name": "ham10000", "root": "data/demo/ham10000"}, "demo": {"out": "data/demo",
          "images_per_class": 40}, "train": {"epochs": 3, "image_size": 64}, "promote": {"floor": 0.4}}


def _promotion(**changes: Any) -> dict[str, Any]:
    base = {"model_name": "medscan-ham10000", "metric": "balanced_accuracy", "candidate_arch": "cnn_medium",
            "candidate_version": 1, "candidate_score": 0.31234567, "candidate_val_score": 0.29876,
            "floor": 0.4, "blessed": 0, "champion_after": None, "champion_before": None,
            "reason": "no champion yet: floor only: refused: balanced_accuracy 0.3123 is below the floor 0.4000",
            "checks": [{"name": "floor", "passed": False,
                        "detail": "balanced_accuracy 0.3123 is below the floor 0.4000"}]}
    return {**base, **changes}


def test_no_champion_says_why_and_which_settings() -> None:
    lines = s.no_champion_lines(_promotion(), PARAMS)
    text = "\n".join(lines)
    assert lines[0].strip().startswith("NO CHAMPION")
    assert "why: balanced_accuracy 0.3123 is below the floor 0.4000" in text
    assert "test balanced_accuracy 0.312 (validation 0.299)" in text  # rounded, never 0.31234567
    assert "demo.images_per_class 40, train.epochs 3, train.image_size 64, promote.floor 0.4" in text
    assert s.champion_lines(_promotion())[1] == "  champion alias -> none (see NO CHAMPION below)"


def test_real_data_settings_leave_out_the_demo_knob() -> None:
    params = {**PARAMS, "dataset": {"name": "ham10000", "root": "/data/ham10000"}}
    assert "demo.images_per_class" not in "\n".join(s.no_champion_lines(_promotion(), params))


def test_a_champion_prints_no_explanation() -> None:
    blessed = _promotion(blessed=1, champion_after=1, reason="no champion yet: floor only: ok", checks=[])
    assert s.no_champion_lines(blessed, PARAMS) == []
    assert s.champion_lines(blessed)[1].startswith("  champion alias -> version 1  (load: models:/")
    kept = _promotion(candidate_version=3, champion_after=2)
    assert "version 2 (unchanged: version 3 was not blessed)" in s.champion_lines(kept)[1]


def test_main_exits_nonzero_without_a_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    paths = Paths(tmp_path)
    for path, doc in ((paths.promotion, _promotion()),
                      (paths.compare_dir / "compare.json", {"ranking": ["cnn_medium"]}),
                      (paths.split_report, {"sizes": [10, 5, 5], "overlapping_groups": 0}),
                      (paths.eval_report("cnn_medium"), {
                          "test": {"accuracy": 0.3, "balanced_accuracy": 0.31, "f1_macro": 0.2,
                                   "roc_auc_macro_ovr": None},
                          "baseline": {"accuracy": 0.3, "balanced_accuracy": 0.14}})):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    monkeypatch.setattr(s, "project_root", lambda: tmp_path)
    monkeypatch.setattr(s, "load_params", lambda root: PARAMS)
    with pytest.raises(SystemExit) as exit_info:
        s.main()
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "demo defaults" in out.rstrip().splitlines()[-1]  # the explanation ends it
    assert "NO CHAMPION" in out and "macro ROC-AUC nan" in out
