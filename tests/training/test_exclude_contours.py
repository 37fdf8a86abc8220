"""Agreement selection from an audit: the least-agreeing training contours leave the loss."""

from __future__ import annotations

import csv

import pytest
import torch

from delineo.errors import ConfigError, InputError
from delineo.training.loop import exclude_audited_contours


def _items(n: int):
    return [{"case": f"c{i}", "present": torch.tensor([True, i % 2 == 0])} for i in range(n)]


def _audit(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rank", "case", "agreement_A", "agreement_B"])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def test_lowest_agreement_per_structure_is_left_out(tmp_path):
    items = _items(10)
    rows = [{"rank": i, "case": f"c{i}", "agreement_A": 0.9 - 0.05 * i, "agreement_B": (0.1 * i if i % 2 == 0 else "")} for i in range(10)]
    audit = _audit(tmp_path / "audit.csv", rows)
    rec = exclude_audited_contours(items, ["A", "B"], {"audit": str(audit), "fraction": 0.2})
    # A: 10 contoured, the 2 lowest agreements (c9, c8); B: 5 contoured (even cases), round(1.0) = 1: c0
    assert rec["contours"] == {"A": ["c9", "c8"], "B": ["c0"]}
    present = {it["case"]: it["present"].tolist() for it in items}
    assert present["c9"] == [False, False] and present["c8"] == [False, True] and present["c0"] == [True, False]
    assert sum(p[0] for p in present.values()) == 8 and sum(p[1] for p in present.values()) == 4


def test_bad_audit_files_are_named(tmp_path):
    with pytest.raises(InputError, match="audit.csv"):
        exclude_audited_contours(_items(2), ["A"], {"audit": str(tmp_path / "audit.csv")})
    other = _audit(tmp_path / "other.csv", [{"rank": 1, "case": "c0", "agreement_A": 0.5, "agreement_B": 0.5}])
    with pytest.raises(InputError, match="not an audit of these structures"):
        exclude_audited_contours(_items(2), ["Z"], {"audit": str(other)})
    with pytest.raises(ConfigError, match="fraction"):
        exclude_audited_contours(_items(2), ["A"], {"audit": str(other), "fraction": 1.5})


def test_absent_structures_can_be_trained_as_empty():
    """``data.absent_is_empty``: a missing dose level is 'none', not 'unknown'; other structures keep 'unknown'."""
    from delineo.training.loop import mark_absent_as_empty

    items = [{"case": f"c{i}", "present": torch.tensor([True, i % 2 == 0, i % 3 == 0])} for i in range(6)]
    counts = mark_absent_as_empty(items, ["A", "B", "C"], ["B"])
    assert counts == {"B": 3}
    assert all(bool(it["present"][1]) for it in items)
    assert [bool(it["present"][2]) for it in items] == [True, False, False, True, False, False]  # C untouched
    with pytest.raises(ConfigError, match="Z"):
        mark_absent_as_empty(items, ["A", "B", "C"], ["Z"])
