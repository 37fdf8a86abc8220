"""`delineo contour DICOM_DIR -o OUT` and api.contour on DICOM input: engine outputs plus rtstruct.dcm and seg.dcm."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pydicom

from delineo import api
from delineo.cli import main
from delineo.dicom.rtstruct import read_rtstruct, roi_types
from delineo.dicom.series import read_series
from delineo.dicom.write_ct import write_ct_series
from delineo.data.io import read_image

from .conftest import phantom


def test_cli_contour_dicom_folder(ct_dir, tmp_path, tiny_ct_model, capsys):
    out = tmp_path / "out"
    rc = main(["contour", str(ct_dir), "-o", str(out), "--model", str(tiny_ct_model), "--device", "cpu"])
    assert rc in (0, None), capsys.readouterr().err
    assert "RT Structure Set" in capsys.readouterr().out
    for f in ("rtstruct.dcm", "seg.dcm", "summary.json", "segmentations/PTV70.nii.gz", "segmentations/Mandible.nii.gz"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    series = read_series(ct_dir)
    assert summary["series_instance_uid"] == series.series_instance_uid
    assert {"rtstruct", "seg"} <= set(summary["seconds"])
    # the NIfTI masks are on the series grid (RAS affine of the series) and match the structure set
    mask = read_image(out / "segmentations" / "PTV70.nii.gz")
    np.testing.assert_allclose(mask.affine, series.image.affine, atol=1e-4)
    back = read_rtstruct(out / "rtstruct.dcm", series)
    inter = np.logical_and(back["PTV70"], mask.array > 0).sum()
    assert 2 * inter / (back["PTV70"].sum() + (mask.array > 0).sum()) >= 0.95
    assert roi_types(out / "rtstruct.dcm") == {"PTV70": "PTV", "Mandible": "ORGAN"}
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_instance_uid


def test_api_contour_zip_with_series_choice_and_progress(ct_dir, tmp_path, tiny_ct_model):
    write_ct_series(phantom()[0], ct_dir / "second", series_uid="1.2.826.0.1.3680043.9.9999.1")
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in ct_dir.rglob("*.dcm"):
            zf.write(f, f.relative_to(ct_dir))
    stages = []
    summary = api.contour(z, tmp_path / "out", model=str(tiny_ct_model), device="cpu", overview=False,
                          series_uid="1.2.826.0.1.3680043.9.9999.1", progress=lambda s, f: stages.append((s, f)))
    assert summary["series_instance_uid"] == "1.2.826.0.1.3680043.9.9999.1"
    names = [s for s, _ in stages]
    assert names[0] == "read" and names[-1] == "done" and names.index("rtstruct") < names.index("seg")
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions)
    rt = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == "1.2.826.0.1.3680043.9.9999.1"


def test_cli_bad_dicom_is_one_line_naming_the_file(ct_dir, tmp_path, tiny_ct_model, capsys):
    sorted(ct_dir.glob("*.dcm"))[5].unlink()
    rc = main(["contour", str(ct_dir), "-o", str(tmp_path / "out"), "--model", str(tiny_ct_model), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing slice" in err and "CT_0006.dcm" in err and "Traceback" not in err
    # an unknown --series-uid: the error lists the series found
    write_ct_series(phantom()[0], tmp_path / "other", series_uid="1.2.826.0.1.3680043.9.9999.2")
    rc = main(["contour", str(tmp_path / "other"), "-o", str(tmp_path / "o2"), "--model", str(tiny_ct_model), "--device", "cpu",
               "--series-uid", "9.9.9"])
    err = capsys.readouterr().err
    assert rc == 2 and "no series 9.9.9" in err and "1.2.826.0.1.3680043.9.9999.2" in err
