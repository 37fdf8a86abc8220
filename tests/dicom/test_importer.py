"""``delineo import-dicom`` on what a clinic's export holds: duplicate names, empty ROIs, contours off the
slices, structure sets without their CT's frame of reference, several structure sets for one CT."""

from __future__ import annotations

import numpy as np
import pydicom

from delineo.cli import main
from delineo.data.io import read_image
from delineo.dicom.importer import import_dicom, summary_line
from delineo.dicom.rtstruct import write_rtstruct
from delineo.dicom.series import read_series

from .conftest import phantom


def _masks():
    return phantom()[1]


def test_two_rois_mapped_to_one_name_are_refused_naming_both_or_merged_on_request(tmp_path, ct_dir):
    series = read_series(ct_dir)
    m = _masks()
    left = np.zeros_like(m["Mandible"])
    left[15:18, 3:6, 2:5] = True
    write_rtstruct(series, {"PTV_7000": m["PTV70"], "Parotid_L": left, "Parotid_R": m["Mandible"]}, ct_dir / "rt.dcm")
    roi_map = {"ptv_7000": "PTV70", "Parotid_L": "Parotids", "Parotid_R": "Parotids"}
    report = import_dicom(ct_dir, tmp_path / "a", roi_map=roi_map, progress=False)
    (c,) = report["cases"]
    assert c["structures"] == ["PTV70"]
    assert any("'Parotid_L' (ROI 2) and 'Parotid_R' (ROI 3)" in n and n.startswith("Parotids:") for n in c["not_imported"]), c
    assert not (tmp_path / "a" / c["case"] / "segmentations" / "Parotids.nii.gz").exists()  # unknown, not a guess
    merged = import_dicom(ct_dir, tmp_path / "b", roi_map=roi_map, progress=False, merge=True)["cases"][0]
    got = read_image(tmp_path / "b" / merged["case"] / "segmentations" / "Parotids.nii.gz").array > 0
    np.testing.assert_array_equal(got, left | m["Mandible"])


def test_the_same_roi_name_twice_is_refused(tmp_path, ct_dir):
    series = read_series(ct_dir)
    path = write_rtstruct(series, {"PTV70": _masks()["PTV70"], "Old": _masks()["Mandible"]}, ct_dir / "rt.dcm")
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[1].ROIName = "PTV70"
    ds.save_as(path)
    c = import_dicom(ct_dir, tmp_path / "out", progress=False)["cases"][0]
    assert c["structures"] == [] and "'PTV70' (ROI 1) and 'PTV70' (ROI 2)" in c["not_imported"][0]


def test_an_roi_without_contour_data_is_not_written_and_is_listed(tmp_path, ct_dir):
    series = read_series(ct_dir)
    m = _masks()
    write_rtstruct(series, {"PTV70": m["PTV70"], "Bolus": np.zeros_like(m["PTV70"])}, ct_dir / "rt.dcm")
    c = import_dicom(ct_dir, tmp_path / "out", progress=False)["cases"][0]
    assert c["structures"] == ["PTV70"] and c["not_imported"] == ["'Bolus' has no contour data"]
    assert not (tmp_path / "out" / c["case"] / "segmentations" / "Bolus.nii.gz").exists()


def _shift_contours(path, dz_mm):
    ds = pydicom.dcmread(path)
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            xyz = np.asarray(c.ContourData, float).reshape(-1, 3)
            xyz[:, 2] += dz_mm
            c.ContourData = [f"{v:.4f}" for v in xyz.ravel()]
    ds.save_as(path)


def test_contours_between_ct_slices_within_a_tenth_of_the_spacing_or_a_clear_error(tmp_path, ct_dir):
    series = read_series(ct_dir)  # slices 3 mm apart
    path = write_rtstruct(series, {"PTV70": _masks()["PTV70"]}, ct_dir / "rt.dcm")
    _shift_contours(path, 0.2)  # rounding in a planning system: accepted, on the nearest slice
    c = import_dicom(ct_dir, tmp_path / "a", progress=False)["cases"][0]
    got = read_image(tmp_path / "a" / c["case"] / "segmentations" / "PTV70.nii.gz").array > 0
    np.testing.assert_array_equal(got, _masks()["PTV70"])
    _shift_contours(path, 1.3)  # 1.5 mm in all: half way between slices
    report = import_dicom(ct_dir, tmp_path / "b", progress=False)
    assert report["cases"] == []
    reason = report["skipped"][0]["reason"]
    assert reason.startswith(str(path)) and "lies between CT slices (1.50 mm from the nearest; tolerance 0.30 mm" in reason, reason


def test_a_frame_of_reference_that_is_not_the_cts_is_refused_naming_the_file(tmp_path, ct_dir):
    series = read_series(ct_dir)
    path = write_rtstruct(series, {"PTV70": _masks()["PTV70"]}, ct_dir / "rt.dcm")
    ds = pydicom.dcmread(path)
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(path)
    report = import_dicom(ct_dir, tmp_path / "out", progress=False)
    assert report["cases"] == [] and report["skipped"][0]["reason"].startswith(str(path))
    assert "frame of reference (1.2.3.4) is not the CT series'" in report["skipped"][0]["reason"]


def test_without_a_referenced_series_the_ct_with_its_frame_of_reference_is_used(tmp_path, ct_dir):
    series = read_series(ct_dir)
    path = write_rtstruct(series, {"PTV70": _masks()["PTV70"]}, ct_dir / "rt.dcm")
    ds = pydicom.dcmread(path)
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    ds.save_as(path)
    report = import_dicom(ct_dir, tmp_path / "out", progress=False)
    assert report["cases"][0]["structures"] == ["PTV70"] and report["cases"][0]["ct_series"] == series.series_instance_uid
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    ds.save_as(path)
    report = import_dicom(ct_dir, tmp_path / "out2", progress=False)
    assert report["skipped"][0]["reason"].startswith(str(path))
    assert "references no CT series, and no CT series in" in report["skipped"][0]["reason"]


def test_several_structure_sets_for_one_ct_are_one_case_each_named_by_label(tmp_path, ct_dir):
    series = read_series(ct_dir)
    m = _masks()
    write_rtstruct(series, {"PTV70": m["PTV70"]}, ct_dir / "rt_a.dcm", label="Dr A")
    write_rtstruct(series, {"PTV70": m["PTV70"], "Mandible": m["Mandible"]}, ct_dir / "rt_b.dcm", label="Dr B")
    report = import_dicom(ct_dir, tmp_path / "out", progress=False)
    assert sorted(c["case"] for c in report["cases"]) == ["P123_Dr_A", "P123_Dr_B"]
    assert {c["structure_set"] for c in report["cases"]} == {"Dr A", "Dr B"}


def test_the_summary_lists_each_case_with_volumes(tmp_path, ct_dir, capsys):
    series = read_series(ct_dir)
    m = _masks()
    write_rtstruct(series, {"PTV70": m["PTV70"], "Mandible": m["Mandible"], "Bolus": np.zeros_like(m["PTV70"])}, ct_dir / "rt.dcm")
    rc = main(["import-dicom", str(ct_dir), str(tmp_path / "out")])
    assert rc in (0, None)
    out = capsys.readouterr().out
    voxel_cc = 2.0 * 2.5 * 3.0 / 1000
    expected = (f"P123: Mandible {m['Mandible'].sum() * voxel_cc:.1f} cc, PTV70 {m['PTV70'].sum() * voxel_cc:.1f} cc; "
                "not imported: 'Bolus' has no contour data")
    assert expected in out, out
    assert summary_line({"case": "x", "structures": []}) == "x: no structures imported"


def test_a_contour_outside_the_series_is_refused(tmp_path, ct_dir):
    series = read_series(ct_dir)
    path = write_rtstruct(series, {"PTV70": _masks()["PTV70"]}, ct_dir / "rt.dcm")
    _shift_contours(path, 60.0)
    reason = import_dicom(ct_dir, tmp_path / "out", progress=False)["skipped"][0]["reason"]
    assert "is outside the CT series (slices from -40.00 to -7.00 mm)" in reason, reason
