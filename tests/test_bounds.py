"""pipelines.bounds: the one definition of a usable case, and its params.yaml section."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from pipelines.bounds import BoundReason, CaseBounds, screen_candidates
from pipelines.datasets import get_adapter
from pipelines.datasets.base import Candidate
from pipelines.images import ImageLimits

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def test_defaults_equal_params_yaml_so_there_is_one_set_of_numbers():
    params = yaml.safe_load(PARAMS_YAML.read_text())
    assert CaseBounds.from_params(params) == CaseBounds()
    limits = CaseBounds().image_limits(params["ingest"]["store_max_side"])
    assert limits == ImageLimits()  # images' own defaults (used by serve) agree too


def test_bounds_left_ingest_and_validate_sections():
    params = yaml.safe_load(PARAMS_YAML.read_text())
    for section in ("ingest", "validate"):
        assert not set(params[section]) & {"min_side", "max_side", "max_pixels", "age_range"}, section


def test_from_params_reads_the_section_and_refuses_typos_and_empty_ranges():
    bounds = CaseBounds.from_params({"bounds": {"max_side": 500, "age_range": [1, 99]}})
    assert bounds == CaseBounds(max_side=500, age_range=(1.0, 99.0))
    assert bounds.image_limits(64) == ImageLimits(store_max_side=64, max_pixels=40_000_000, min_side=8, max_side=500)
    with pytest.raises(ValueError, match="max_sides"):
        CaseBounds.from_params({"bounds": {"max_sides": 5}})
    with pytest.raises(ValueError, match="empty range"):
        CaseBounds.from_params({"bounds": {"age_range": [90, 10]}})


@pytest.mark.parametrize(
    ("age", "problem"),
    [(0.0, None), (120.0, None), (45.0, None), (math.nan, None), (500.0, "age 500 outside"),
     (-3.0, "age -3 outside"), (120.5, "age 120.5 outside")],
)
def test_age_range_is_inclusive_and_missing_age_is_allowed(age, problem):
    found = CaseBounds().metadata_problem({"age": age, "sex": "male"})
    if problem is None:
        assert found is None
    else:
        assert found[0] == BoundReason.AGE_OUT_OF_RANGE and found[1].startswith(problem)
        assert "bounds.age_range [0, 120]" in found[1]


def test_screen_candidates_quarantines_with_reason_and_keeps_order():
    cands = [
        Candidate(f"images/{i}.jpg", Path(f"/x/{i}.jpg"), "mel", f"L{i}", str(i), "", {"age": age})
        for i, age in enumerate([30.0, 500.0, math.nan, -3.0])
    ]
    kept, quarantine = screen_candidates(cands, CaseBounds())
    assert [c.image_id for c in kept] == ["0", "2"]
    assert [(e.source_path, e.reason, e.label) for e in quarantine] == [
        ("images/1.jpg", "age_out_of_range", "mel"), ("images/3.jpg", "age_out_of_range", "mel")]


def test_suite_parameters_carry_the_same_numbers_and_the_adapter_value_sets():
    adapter = get_adapter("ham10000")
    values = CaseBounds(max_side=999).suite_parameters(adapter.categorical_values)
    assert (values["min_side"], values["max_side"], values["age_min"], values["age_max"]) == (8, 999, 0.0, 120.0)
    assert values["sex_values"] == ["female", "male", "unknown"]
    assert set(values["localization_values"]) == set(adapter.categorical_values["localization"])
