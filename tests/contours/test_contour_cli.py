"""The contour-tool commands on tiny NIfTI files: mask + JSON summary with the volume; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import delineo.cli.contours  # noqa: F401  (registers the commands until cli/__init__ imports it)
from delineo.cli import main

SPACING = (2.0, 2.0, 3.0)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = (-10.0, 20.0, -30.0)
VOXEL_CC = 2 * 2 * 3 / 1000


def write(path: Path, mask: np.ndarray, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(path))
    return path


def box(lo, hi, shape=(10, 10, 8)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj) > 0


@pytest.fixture
def masks(tmp_path) -> dict[str, Path]:
    return {
        "a": write(tmp_path / "A.nii.gz", box((2, 2, 2), (6, 6, 5))),  # 48 voxels
        "b": write(tmp_path / "B.nii.gz", box((4, 4, 3), (8, 8, 6))),  # 48 voxels, 2*2*2 = 8 shared
    }


def summary(out: Path) -> dict:
    return json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())


def test_margin_expand_and_contract(masks, tmp_path):
    out = tmp_path / "out" / "A_5mm.nii.gz"
    assert main(["margin", str(masks["a"]), "--mm", "2,2,0", "-o", str(out)]) == 0
    grown = read(out)
    # one 2 mm voxel on each side in x and y (not the (2, 2) mm = 2.8 mm diagonals), none in z
    assert grown.sum() == (4 * 4 + 4 * 4) * 3
    s = summary(out)
    assert s["roi_name"] == "A_5mm" and s["operation"] == "expand"
    assert s["volume_cc"] == pytest.approx(grown.sum() * VOXEL_CC)
    assert s["parameters"]["margin_mm"] == [2.0, 2.0, 0.0]
    assert s["inputs"][0]["volume_cc"] == pytest.approx(48 * VOXEL_CC)
    assert np.allclose(nib.load(str(out)).affine, AFFINE)

    out2 = tmp_path / "A_minus.nii.gz"
    assert main(["margin", str(masks["a"]), "--mm", "2", "--contract", "-o", str(out2), "--name", "A-2"]) == 0
    assert read(out2).sum() == 2 * 2 * 3
    assert summary(out2)["roi_name"] == "A-2" and summary(out2)["operation"] == "contract"


@pytest.mark.parametrize("op, count", [("union", 88), ("intersect", 8), ("subtract", 40)])
def test_boolean(masks, tmp_path, op, count):
    out = tmp_path / f"{op}.nii.gz"
    assert main(["boolean", op, str(masks["a"]), str(masks["b"]), "-o", str(out)]) == 0
    assert read(out).sum() == count
    s = summary(out)
    assert s["operation"] == op and s["volume_cc"] == pytest.approx(count * VOXEL_CC)
    assert [i["path"] for i in s["inputs"]] == [str(masks["a"]), str(masks["b"])]


def test_ring_and_remove_islands(masks, tmp_path):
    out = tmp_path / "ring.nii.gz"
    assert main(["ring", str(masks["a"]), "--outer-mm", "3", "-o", str(out)]) == 0
    # 3 mm around a 4x4x3 box of 2x2x3 mm voxels: a layer on each face (2 mm, 3 mm) and the xy edges
    # ((2, 2) mm = 2.8 mm), not the xz / yz edges ((2, 3) mm = 3.6 mm) nor corners
    ring_voxels = 2 * 4 * 3 + 2 * 4 * 3 + 2 * 4 * 4 + 4 * 3
    assert read(out).sum() == ring_voxels
    assert summary(out)["volume_cc"] == pytest.approx(ring_voxels * VOXEL_CC)

    island = box((2, 2, 2), (6, 6, 5))
    island[9, 9, 7] = True
    src = write(tmp_path / "islands.nii.gz", island)
    out = tmp_path / "clean.nii.gz"
    assert main(["remove-islands", str(src), "--min-cc", "0.1", "-o", str(out)]) == 0
    assert read(out).sum() == 48
    assert summary(out)["parameters"] == {"min_cc": 0.1, "connectivity": 26}


def test_errors_are_one_line_exit_2(masks, tmp_path, capsys):
    other = write(tmp_path / "C.nii.gz", box((2, 2, 2), (6, 6, 5)), affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    out = tmp_path / "x.nii.gz"
    assert main(["boolean", "union", str(masks["a"]), str(other), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "C.nii.gz" in err and "does not match" in err and len(err.strip().splitlines()) == 1
    small = write(tmp_path / "D.nii.gz", np.zeros((4, 4, 4), bool))
    assert main(["boolean", "subtract", str(masks["a"]), str(small), "-o", str(out)]) == 2
    assert "D.nii.gz" in capsys.readouterr().err
    assert main(["boolean", "xor", str(masks["a"]), str(masks["b"]), "-o", str(out)]) == 2
    assert main(["margin", str(masks["a"]), "--mm", "5,5", "-o", str(out)]) == 2
    assert main(["margin", str(tmp_path / "missing.nii.gz"), "--mm", "5", "-o", str(out)]) == 2
    nonbinary = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.uint8).reshape(4, 4, 4), AFFINE), str(nonbinary))
    assert main(["ring", str(nonbinary), "--outer-mm", "5", "-o", str(out)]) == 2
    assert "not binary" in capsys.readouterr().err
    assert not out.exists()
