"""Write an :class:`~delineo.data.io.Image` (HU, RAS affine) as a CT Image Storage series.

For users who have NIfTI only and need a series their planning system can take, and for the
tests and the round-trip benchmark, which build real DICOM from the NIfTI cases. Each slice
``k`` of the array becomes one instance; the image plane (position, orientation, spacing) is
taken from the affine, converted to LPS.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from delineo.data.io import Image
from delineo.dicom.series import CT_IMAGE_STORAGE, LPS_TO_RAS, new_instance
from delineo.errors import InputError


def write_ct_series(
    image: Image,
    out_dir: str | Path,
    *,
    patient_name: str = "Anonymous^",
    patient_id: str = "ANON",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_position: str = "HFS",
) -> list[Path]:
    """Write ``image`` (3D, HU) as ``out_dir/CT_<k>.dcm``; returns the paths in slice order.

    The geometry (Image Position/Orientation Patient) comes from the affine alone;
    ``patient_position`` (``HFS``, ``FFS`` ...) is recorded as given: to write a feet-first series as a
    scanner does, pass an image whose affine has the columns running to the patient's right."""
    if image.array.ndim != 3:
        raise InputError(None, f"a CT series needs a 3D image, got shape {image.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lps = np.linalg.inv(LPS_TO_RAS) @ image.affine
    col_dir, row_dir = lps[:3, 0], lps[:3, 1]
    col_mm, row_mm = float(np.linalg.norm(col_dir)), float(np.linalg.norm(row_dir))
    iop = [*(col_dir / col_mm), *(row_dir / row_mm)]
    slice_mm = float(np.linalg.norm(lps[:3, 2]))
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    hu = np.clip(np.rint(image.array), -32768, 32767).astype(np.int16)
    paths = []
    for k in range(hu.shape[2]):
        ds = new_instance(CT_IMAGE_STORAGE)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = date, time, date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "delineo"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description
        ds.PatientPosition = patient_position
        ds.Laterality = ""
        ds.AcquisitionNumber = 1
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
        ds.PixelSpacing = [row_mm, col_mm]
        ds.SliceThickness = slice_mm
        ds.KVP = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = out_dir / f"CT_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
