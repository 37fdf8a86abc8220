"""`delineo stress` inputs: synthetic or real CTs (a folder of cases), as NIfTI or DICOM zips."""

from __future__ import annotations

import io
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from delineo.errors import InputError
from delineo.service.stress import study_inputs


def test_synthetic_dicom_zips_hold_one_ct_slice_per_file():
    payloads, text = study_inputs(2, size=16, dicom=True)
    assert [name for name, _ in payloads] == ["stress0.zip", "stress1.zip"] and "DICOM zips" in text
    with zipfile.ZipFile(io.BytesIO(payloads[0][1])) as zf:
        names = zf.namelist()
        assert len(names) == 16
        ds = pydicom.dcmread(io.BytesIO(zf.read(names[0])))
    assert ds.Modality == "CT" and ds.Rows == 16 and "STRESS" in ds.PatientID
    studies = {pydicom.dcmread(io.BytesIO(zipfile.ZipFile(io.BytesIO(b)).read(zipfile.ZipFile(io.BytesIO(b)).namelist()[0]))).StudyInstanceUID
               for _, b in payloads}
    assert len(studies) == 2  # distinct studies


def test_real_cts_read_from_a_case_folder(tmp_path):
    for case in ("pt_1", "pt_2"):
        (tmp_path / case).mkdir()
        ct = np.full((12, 10, 8), -1000, np.int16)
        nib.save(nib.Nifti1Image(ct, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / case / "ct.nii.gz")
    nifti, text = study_inputs(4, ct_dir=tmp_path)
    assert len(nifti) == 2 and "2 real CTs" in text and "12x10x8" in text and "NIfTI" in text
    assert nifti[0][1] == (tmp_path / "pt_1" / "ct.nii.gz").read_bytes()
    zips, _ = study_inputs(1, ct_dir=tmp_path, dicom=True)
    assert len(zipfile.ZipFile(io.BytesIO(zips[0][1])).namelist()) == 8
    with pytest.raises(InputError, match="no <case>/ct.nii.gz"):
        study_inputs(1, ct_dir=tmp_path / "pt_1")
