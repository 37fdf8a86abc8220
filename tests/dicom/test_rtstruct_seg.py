"""RT Structure Set and DICOM SEG: written for a series, valid by dciodvfy, read back to the masks."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from delineo.dicom.rtstruct import read_rtstruct, roi_types, write_rtstruct
from delineo.dicom.seg import read_seg, write_seg
from delineo.dicom.series import read_series
from delineo.errors import InputError
from delineo.metrics.segmentation import dice

from system_tools import dcmtk

from .conftest import needs, phantom


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run([dcmtk("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_rtstruct_references_the_series_and_round_trips(ct_dir, tmp_path):
    series = read_series(ct_dir)
    _, masks = phantom()
    path = write_rtstruct(series, masks, tmp_path / "rtstruct.dcm", roi_types={"PTV70": "PTV", "Mandible": "ORGAN"})
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.PatientID == "P123" and ds.StudyInstanceUID == series.study_instance_uid
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_of_reference_uid
    ref_series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == series.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence} == set(series.sop_instance_uids)
    assert roi_types(path) == {"Mandible": "ORGAN", "PTV70": "PTV"}
    for rc in ds.ROIContourSequence:
        assert len(rc.ROIDisplayColor) == 3
        for c in rc.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            uid = c.ContourImageSequence[0].ReferencedSOPInstanceUID
            k = series.sop_instance_uids.index(uid)
            z = np.asarray(c.ContourData, float).reshape(-1, 3)[:, 2]
            assert np.allclose(z, float(series.datasets[k].ImagePositionPatient[2]))  # on its slice's plane
    # patient coordinates worked out by hand from the NIfTI affine (RAS), not through the reader's
    # affine: the bone block, voxels i 8..13, j 6..11, k 4..8, is traced along its voxels' outer
    # edges (i 7.5..13.5, j 5.5..11.5), each vertex 0.01 voxel inside (EDGE_INSET: i 7.51..13.49, j 5.51..11.49);
    # RAS x = -2 i + 50, y = -2.5 j + 30, z = 3 k - 40; LPS = (-x, -y, z)
    bone = next(rc for rc in ds.ROIContourSequence
                if rc.ReferencedROINumber == next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == "Mandible"))
    pts = np.concatenate([np.asarray(c.ContourData, float).reshape(-1, 3) for c in bone.ContourSequence])
    np.testing.assert_allclose([pts[:, 0].min(), pts[:, 0].max()], [-34.98, -23.02], atol=1e-3)
    np.testing.assert_allclose([pts[:, 1].min(), pts[:, 1].max()], [-16.225, -1.275], atol=1e-3)
    np.testing.assert_allclose(sorted(set(np.round(pts[:, 2], 3))), [-28.0, -25.0, -22.0, -19.0, -16.0])
    back = read_rtstruct(path, series)
    for name, mask in masks.items():
        np.testing.assert_array_equal(back[name], mask, err_msg=name)  # delineo's own round trip is exact
    # the ring's hole survives (even-odd filling)
    assert not back["PTV70"][12, 10, 5] and back["PTV70"][4, 4, 5]


@needs("dciodvfy")
def test_rtstruct_and_seg_pass_dciodvfy(ct_dir, tmp_path):
    series = read_series(ct_dir)
    _, masks = phantom()
    rt = write_rtstruct(series, masks, tmp_path / "rtstruct.dcm", roi_types={"PTV70": "PTV"})
    seg = write_seg(series, masks, tmp_path / "seg.dcm", roi_types={"PTV70": "PTV"}, model_name="test")
    assert dciodvfy_errors(rt) == []
    assert dciodvfy_errors(seg) == []


def test_seg_round_trip_and_labels(ct_dir, tmp_path):
    series = read_series(ct_dir)
    _, masks = phantom()
    path = write_seg(series, masks, tmp_path / "seg.dcm", roi_types={"PTV70": "PTV"})
    back = read_seg(path, series)
    assert set(back) == set(masks)
    for name in masks:
        np.testing.assert_array_equal(back[name], masks[name])
    ds = pydicom.dcmread(path)
    segs = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert segs["PTV70"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "228793007"  # planning target volume
    assert segs["Mandible"].SegmentAlgorithmType == "AUTOMATIC"


def test_masks_of_the_wrong_shape_are_refused(ct_dir, tmp_path):
    series = read_series(ct_dir)
    with pytest.raises(InputError, match="shape"):
        write_rtstruct(series, {"x": np.zeros((2, 2, 2), bool)}, tmp_path / "r.dcm")


def test_not_a_structure_set(ct_dir):
    series = read_series(ct_dir)
    with pytest.raises(InputError, match="not an RT Structure Set"):
        read_rtstruct(sorted(ct_dir.glob("*.dcm"))[0], series)


@pytest.mark.data
def test_openkbp_masks_survive_the_structure_set(real_data, tmp_path):
    """A real case: NIfTI masks -> CT series + RTSTRUCT -> masks, Dice >= 0.95 per structure."""
    from delineo.data.datasets import open_dataset
    from delineo.data.io import Image
    from delineo.dicom.write_ct import write_ct_series

    root = real_data("openkbp/validation")
    names = ["PTV70", "Brainstem", "SpinalCord", "Mandible"]
    s = open_dataset(root, names, None)[0]
    write_ct_series(Image(s["image"][0], s["affine"]), tmp_path / "ct")
    series = read_series(tmp_path / "ct")
    # the series sorts slices along +z; map the NIfTI masks onto its grid through the affines
    flip = np.rint(np.linalg.inv(s["affine"]) @ series.image.affine).astype(int)
    masks = {}
    for c, n in enumerate(names):
        if s["present"][c]:
            m = s["label"][c].astype(bool)
            masks[n] = m[:, :, ::-1] if flip[2, 2] < 0 else m
    rt = write_rtstruct(series, masks, tmp_path / "rt.dcm")
    back = read_rtstruct(rt, series)
    for n, m in masks.items():
        np.testing.assert_array_equal(back[n], m, err_msg=n)  # exact: Dice 1.0
