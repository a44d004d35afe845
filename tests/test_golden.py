"""Outputs on every real scene stay what they were: the GeoPackages compared with stored summaries.

The summaries in ``tests/golden`` were written by ``python -m tests.golden``
from the code before the redesign; a change of output must be deliberate and
rewrite them in the same commit.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import SCENES, real_scene
from tests.golden import CASES, assert_same, golden_path, run_case, summarise


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_output_matches_golden(case, tmp_path):
    real_scene(CASES[case][0])
    gpkg = run_case(case, SCENES, tmp_path / f"{case}.gpkg")
    assert_same(summarise(gpkg), json.loads(golden_path(case).read_text()), case)


def test_golden_comparison_catches_a_changed_probability():
    expected = json.loads(golden_path("borneo").read_text())
    changed = json.loads(golden_path("borneo").read_text())
    column = next(c for c in changed["chips"]["values"] if c.startswith("p_"))
    changed["chips"]["values"][column][0] += 2e-6
    with pytest.raises(AssertionError, match=column):
        assert_same(changed, expected)
