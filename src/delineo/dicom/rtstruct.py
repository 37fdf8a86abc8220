"""RT Structure Set: write masks as closed planar contours referencing a CT series, and read them back.

Built on pydicom directly. The maintained alternative, rt-utils, pulls in OpenCV for its
contour tracing, fixes the RT ROI Interpreted Type, and reads masks back with its own
conventions; we need PTV/ORGAN types from the model card and a reader that is independent of
the writer's tracing (scikit-image's marching squares out, polygon filling in).

Contours: on every slice, :func:`skimage.measure.find_contours` traces the 0.5 iso-line of
the mask (outer boundaries and holes, each island separately); points are mapped through the
series' voxel -> LPS affine, so they lie in the slice plane in patient coordinates. Holes are
written as separate contours; readers fill with the even-odd rule (as planning systems do).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from skimage.draw import polygon as fill_polygon
from skimage.measure import find_contours

from delineo import __version__
from delineo.contours.colors import structure_color
from delineo.dicom.series import CTSeries, new_instance
from delineo.errors import InputError

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: copied from the CT into the structure set (Patient and General Study modules)
PATIENT_STUDY_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)


def slice_contours(mask_2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``[(n, 2) (i, j) voxel coordinates]`` of a 2D mask ``(i, j)``; holes included."""
    padded = np.pad(mask_2d.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = c - 1.0
        if len(c) >= 4 and np.allclose(c[0], c[-1]):
            c = c[:-1]  # closed: the last point repeats the first, CLOSED_PLANAR implies it
        if len(c) >= 3:
            out.append(c)
    return out


def write_rtstruct(
    series: CTSeries,
    masks: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    roi_types: Mapping[str, str] | None = None,
    label: str = "delineo",
    description: str = "",
    roi_descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Write an RT Structure Set for ``masks`` (``{roi_name: bool (i, j, k)}`` on ``series.image``'s grid).

    roi_types: RT ROI Interpreted Type per ROI (``PTV``, ``CTV``, ``GTV``, ``ORGAN``; default ORGAN).
    roi_descriptions: text per ROI for its ROI Description (planning systems show it), e.g. the
    failed anatomy checks or the quality estimate.
    """
    ref = series.datasets[0]
    series.check_masks(masks)
    now = _dt.datetime.now()
    ds = new_instance(RT_STRUCTURE_SET_STORAGE)
    ds.SpecificCharacterSet = ref.get("SpecificCharacterSet", "ISO_IR 100")
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for key in PATIENT_STUDY_KEYS:
        setattr(ds, key, ref.get(key, ""))
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "delineo"
    ds.ManufacturerModelName = "delineo"
    ds.SoftwareVersions = __version__
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 900
    ds.SeriesDescription = description or f"{label} auto-contours"
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "")
    ds.ApprovalStatus = "UNAPPROVED"  # auto-contours: a clinician reviews and approves them

    contour_images = []
    for d in series.datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = d.SOPClassUID
        item.ReferencedSOPInstanceUID = d.SOPInstanceUID
        contour_images.append(item)
    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_instance_uid
    rt_series.ContourImageSequence = DicomSequence(contour_images)
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as used by TPSs)
    rt_study.ReferencedSOPInstanceUID = series.study_instance_uid
    rt_study.RTReferencedSeriesSequence = DicomSequence([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = DicomSequence([rt_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    roi_seq, contour_seq, obs_seq = [], [], []
    types = dict(roi_types or {})
    for number, (name, mask) in enumerate(masks.items(), 1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        if roi_descriptions and roi_descriptions.get(name):
            roi.ROIDescription = str(roi_descriptions[name])[:1024]
        roi_seq.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = [int(v) for v in structure_color(name, number - 1)]
        rc.ReferencedROINumber = number
        contours = []
        for k in np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(0)):
            for c in slice_contours(mask[:, :, k]):
                ijk = np.column_stack([c, np.full(len(c), k), np.ones(len(c))])
                xyz = (series.lps_affine @ ijk.T).T[:, :3]
                item = Dataset()
                img = Dataset()
                img.ReferencedSOPClassUID = series.datasets[k].SOPClassUID
                img.ReferencedSOPInstanceUID = series.datasets[k].SOPInstanceUID
                item.ContourImageSequence = DicomSequence([img])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(xyz)
                item.ContourData = [f"{v:.3f}" for v in xyz.ravel()]
                contours.append(item)
        if contours:
            rc.ContourSequence = DicomSequence(contours)
        contour_seq.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = types.get(name, "ORGAN")
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = DicomSequence(roi_seq)
    ds.ROIContourSequence = DicomSequence(contour_seq)
    ds.RTROIObservationsSequence = DicomSequence(obs_seq)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_rtstruct(path: str | Path, series: CTSeries) -> dict[str, np.ndarray]:
    """Rasterise an RT Structure Set on ``series``' grid -> ``{roi_name: bool (i, j, k)}``.

    Each closed planar contour is mapped to voxel coordinates and filled (pixel centres inside
    the polygon); contours of one ROI on one slice combine by the even-odd rule, so holes work.
    ROIs without contours come back empty. Contours off the series' slices are refused.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InputError(path, "not an RT Structure Set")
    shape = series.image.shape
    to_voxel = np.linalg.inv(series.lps_affine)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    masks = {name: np.zeros(shape, bool) for name in names.values()}
    for rc in ds.get("ROIContourSequence", []):
        name = names.get(int(rc.ReferencedROINumber))
        if name is None:
            continue
        for c in rc.get("ContourSequence", []):
            xyz = np.asarray(c.ContourData, float).reshape(-1, 3)
            ijk = (to_voxel @ np.column_stack([xyz, np.ones(len(xyz))]).T).T[:, :3]
            k = int(round(float(np.mean(ijk[:, 2]))))
            if not (0 <= k < shape[2]) or np.max(np.abs(ijk[:, 2] - k)) > 0.1:
                raise InputError(path, f"ROI {name!r}: a contour does not lie on a slice of the series")
            rr, cc = fill_polygon(ijk[:, 0], ijk[:, 1], shape[:2])
            layer = np.zeros(shape[:2], bool)
            layer[rr, cc] = True
            masks[name][:, :, k] ^= layer
    return masks


def roi_types(path: str | Path) -> dict[str, str]:
    """RT ROI Interpreted Type per ROI name of a structure set file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    return {names[int(o.ReferencedROINumber)]: str(o.get("RTROIInterpretedType", "")) for o in ds.get("RTROIObservationsSequence", [])
            if int(o.ReferencedROINumber) in names}
