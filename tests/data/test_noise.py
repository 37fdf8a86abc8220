"""Synthetic label noise: seeded, the right fraction, erosion shrinks and dilation grows."""

from __future__ import annotations

import numpy as np
import pytest

from delineo.data.noise import corrupt_labels, corrupt_mask
from delineo.metrics.segmentation import dice


def sample(i, shape=(24, 24)):
    lab = np.zeros((2, *shape), np.uint8)
    lab[0, 4 + i % 3 : 14 + i % 3, 5:15] = 1
    lab[1, 12:20, 10 + i % 2 : 20 + i % 2] = 1
    return lab


@pytest.fixture
def batch():
    cases = [f"c{i}" for i in range(10)]
    labels = [sample(i) for i in range(10)]
    present = [np.array([True, True]) for _ in range(10)]
    present[3] = np.array([True, False])
    labels[3][1] = 0
    return cases, labels, present


def test_deterministic_for_a_seed(batch):
    cases, labels, present = batch
    a, ra = corrupt_labels(cases, labels, present, 0.5, (1, 3), seed=7)
    b, rb = corrupt_labels(cases, labels, present, 0.5, (1, 3), seed=7)
    assert ra == rb
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # and independent of the order the samples were loaded in
    perm = [9, 2, 5, 0, 1, 8, 3, 7, 4, 6]
    c, rc = corrupt_labels([cases[i] for i in perm], [labels[i] for i in perm], [present[i] for i in perm], 0.5, (1, 3), seed=7)
    assert [r.case for r in rc] == [cases[i] for i in perm]
    for j, i in enumerate(perm):
        assert rc[j] == ra[i]
        np.testing.assert_array_equal(c[j], a[i])
    # another seed picks differently
    _, rd = corrupt_labels(cases, labels, present, 0.5, (1, 3), seed=8)
    assert rd != ra


@pytest.mark.parametrize("fraction, n", [(0.0, 0), (0.25, 2), (0.35, 4), (0.5, 5), (1.0, 10)])
def test_corrupts_round_fraction_times_n(batch, fraction, n):
    cases, labels, present = batch
    out, records = corrupt_labels(cases, labels, present, fraction, (1, 2), seed=0)
    assert len(out) == len(records) == 10
    assert sum(r.corrupted for r in records) == n  # round(0.25*10)=2 (half to even), round(3.5)=4
    for lab, new, rec in zip(labels, out, records):
        assert new.shape == lab.shape
        assert rec.corrupted == (not np.array_equal(new, lab))
        if not rec.corrupted:
            assert rec.operations == ["none", "none"] and rec.dice_vs_clean == [1.0, 1.0]


def test_records_match_the_labels(batch):
    cases, labels, present = batch
    out, records = corrupt_labels(cases, labels, present, 1.0, (1, 3), seed=1)
    for lab, new, rec, pres in zip(labels, out, records, present):
        assert rec.corrupted
        for c in range(2):
            if not pres[c]:
                assert rec.operations[c] == "none"  # unknown structures are left alone
                np.testing.assert_array_equal(new[c], lab[c])
                continue
            op, r = rec.operations[c].split(":")
            assert op in ("erode", "dilate") and 1 <= int(r) <= 3
            assert rec.dice_vs_clean[c] == pytest.approx(dice(new[c], lab[c]))
            assert rec.dice_vs_clean[c] < 1.0
            if op == "erode":
                assert new[c].sum() < lab[c].sum() and not (new[c] & ~lab[c].astype(bool)).any()
            else:
                assert new[c].sum() > lab[c].sum() and not (lab[c].astype(bool) & ~new[c].astype(bool)).any()


def test_invalid_fraction(batch):
    with pytest.raises(ValueError):
        corrupt_labels(*batch, fraction=1.5, radius=(1, 2))


def test_corrupt_mask_by_hand_2d_and_3d():
    m = np.zeros((11, 11), bool)
    m[3:8, 3:8] = True  # 5x5 square
    eroded = corrupt_mask(m, 1, dilate=False)
    assert eroded.sum() == 9 and eroded[4:7, 4:7].all()  # 3x3 left
    dilated = corrupt_mask(m, 1, dilate=True)
    assert dilated.sum() == 25 + 4 * 5  # a disc of radius 1 (cross) adds one row/column per side
    assert corrupt_mask(m, 3, dilate=False).sum() == 0
    v = np.zeros((9, 9, 9), bool)
    v[4, 4, 4] = True
    assert corrupt_mask(v, 1, dilate=True).sum() == 7  # ball(1) is the 6-neighbourhood + centre
    assert corrupt_mask(v, 2, dilate=True).sum() > 7
