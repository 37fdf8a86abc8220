"""benchmarks/target_components.py: its rules are the predictor's own post-processing, and its choice
follows the criterion it states (Dice kept, nothing emptied, lowest HD95, the mildest on a tie)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from delineo.inference.predictor import keep_largest_components, remove_small_components


@pytest.fixture(scope="module")
def tc():
    spec = importlib.util.spec_from_file_location(
        "target_components", Path(__file__).resolve().parents[2] / "benchmarks" / "target_components.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _summary(tc, **overrides):
    base = {"dice": 0.60, "hd95_mm": 50.0, "emptied": 0}
    out = {r: dict(base) for r in tc.RULES}
    for rule, values in overrides.items():
        out[":".join(rule.rsplit("_", 1))].update(values)  # min_cc_5 -> min_cc:5
    return out


def test_choice_follows_the_stated_criterion(tc):
    # nothing helps: no rule
    assert tc.choose(_summary(tc)) == "none"
    # the lowest HD95 among the rules that keep Dice (within 0.002) and empty nothing
    s = _summary(tc, min_cc_5={"hd95_mm": 40.0}, keep_1={"hd95_mm": 30.0, "dice": 0.597})
    assert tc.choose(s) == "min_cc:5"  # keep:1 loses 0.003 Dice
    s = _summary(tc, min_cc_50={"hd95_mm": 20.0, "emptied": 1}, keep_2={"hd95_mm": 35.0, "dice": 0.599})
    assert tc.choose(s) == "keep:2"  # min_cc:50 empties a level the reference has
    # within 0.5 mm of the best: the mildest (smaller volume before larger; more components kept first)
    s = _summary(tc, min_cc_10={"hd95_mm": 40.3}, min_cc_20={"hd95_mm": 40.0}, keep_1={"hd95_mm": 40.0})
    assert tc.choose(s) == "min_cc:10"
    s = _summary(tc, keep_1={"hd95_mm": 40.0}, keep_3={"hd95_mm": 40.4})
    assert tc.choose(s) == "keep:3"


def test_rules_are_the_predictors_post_processing(tc):
    m = np.zeros((20, 20, 20), bool)
    m[1:9, 1:9, 1:9] = True  # 512 voxels
    m[12:15, 12:15, 12:15] = True  # 27 voxels
    m[18, 18, 18] = True
    spacing = (2.0, 2.0, 3.0)  # 12 mm³ per voxel
    assert tc.apply_rule(m, "none", spacing) is m
    for v in (0.05, 0.5, 5.0):
        np.testing.assert_array_equal(tc.apply_rule(m, f"min_cc:{v:g}", spacing),
                                      remove_small_components(m[None], ["x"], {"x": v}, spacing)[0])
    assert tc.apply_rule(m, "min_cc:0.05", spacing).sum() == 512 + 27  # the single voxel (0.012 cm³) goes
    for n in (1, 2):
        np.testing.assert_array_equal(tc.apply_rule(m, f"keep:{n}", spacing), keep_largest_components(m[None], ["x"], {"x": n})[0])
    assert tc.apply_rule(m, "keep:2", spacing).sum() == 512 + 27
