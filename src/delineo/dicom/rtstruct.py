"""RT Structure Set: write masks as closed planar contours referencing a CT series, and read them back.

Built on pydicom directly. The maintained alternative, rt-utils, pulls in OpenCV for its
contour tracing, fixes the RT ROI Interpreted Type, and reads masks back with its own
conventions; we need PTV/ORGAN types from the model card and a reader that is independent of
the writer's tracing (scikit-image's marching squares out, polygon filling in).

**Writing.** On every slice, :func:`skimage.measure.find_contours` traces the 0.5 iso-line of
the mask (outer boundaries and holes, each island separately): the polygon runs along the voxel
edges, through the midpoint between each voxel centre inside and its neighbour outside, cutting
corners diagonally. Each vertex is then moved :data:`EDGE_INSET` (1/100 of a pixel) towards the
voxel inside, so a reader that rounds vertices to the nearest pixel centre (rt-utils, any
OpenCV ``fillPoly`` reader) lands on the boundary voxel, not on a tie that numpy rounds half to
even; a planning system's polygon area changes by 1/100 of a pixel times the perimeter. Points are
mapped through the series' voxel -> LPS affine, so they lie in the slice plane in patient
coordinates. Holes are written as separate contours (even-odd rule, as planning systems read them).

**Reading** (:func:`read_rtstruct`). A pixel is in an ROI on a slice when its centre lies inside
the even-odd union of the ROI's closed contours on that slice, **or on any of those contours**
(within :data:`ON_CONTOUR_TOLERANCE`, 1/20 of a pixel). This one rule reads the three conventions
in use as the masks they were made from:

- polygons around voxel edges (delineo, plastimatch, most planning systems' exports of voxel
  masks): no pixel centre is within 0.34 pixel of them, the centres inside are the mask;
- polygons through the centres of the boundary voxels (rt-utils, platipy, OpenCV
  ``findContours``): the boundary voxels lie on the polygon, and a structure one voxel thick,
  whose polygon encloses no area, still comes back; a hole's polygon runs through the voxels
  around the hole, which stay in;
- smooth polygons drawn by hand: the pixels whose centres are inside, as a planning system fills them.

Strictly-inside filling is :func:`skimage.draw.polygon` per contour (XOR for the even-odd rule);
the on-contour test is written here (vectorised distance of the pixel centres next to each edge)
because neither skimage's nor matplotlib's point-in-polygon has a boundary band that is the same
on both sides of an edge (matplotlib's ``radius`` grows or shrinks with the winding direction).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
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


#: how far (pixels) each written vertex sits inside the voxel edge it was traced on (module docstring)
EDGE_INSET = 0.01
#: a pixel centre this close to a contour (pixels) counts as on it, hence in the ROI
ON_CONTOUR_TOLERANCE = 0.05
#: a contour this far (fraction of the slice spacing) from the nearest CT slice is refused
OFF_SLICE_TOLERANCE = 0.1


def slice_contours(mask_2d: np.ndarray, inset: float = EDGE_INSET) -> list[np.ndarray]:
    """Closed contours ``[(n, 2) (i, j) voxel coordinates]`` of a 2D mask ``(i, j)``; holes included.

    Each vertex lies on the edge between a voxel inside and one outside, ``inset`` pixels from the
    midpoint towards the voxel inside (see the module docstring)."""
    m = mask_2d.astype(bool)
    padded = np.pad(m.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = c - 1.0
        if len(c) >= 4 and np.allclose(c[0], c[-1]):
            c = c[:-1]  # closed: the last point repeats the first, CLOSED_PLANAR implies it
        if len(c) >= 3:
            out.append(_inset(c, m, inset) if inset else c)
    return out


def _inset(c: np.ndarray, mask: np.ndarray, inset: float) -> np.ndarray:
    """Move each vertex (on a voxel edge: one coordinate half-integer) ``inset`` towards the voxel inside."""
    c = c.copy()
    for axis in (0, 1):
        half = np.abs(c[:, axis] - np.floor(c[:, axis]) - 0.5) < 1e-6
        if not half.any():
            continue
        lo = np.floor(c[half]).astype(int)
        other = np.rint(c[half, 1 - axis]).astype(int)
        lo_i = lo[:, axis]
        idx = [None, None]
        idx[axis], idx[1 - axis] = lo_i, other
        inside_lo = np.zeros(len(lo_i), bool)
        ok = (lo_i >= 0) & (lo_i < mask.shape[axis]) & (other >= 0) & (other < mask.shape[1 - axis])
        sel = (idx[0][ok], idx[1][ok])
        inside_lo[ok] = mask[sel]
        c[half, axis] += np.where(inside_lo, -inset, inset)
    return c


def on_contour(points: np.ndarray, shape: tuple[int, int], tol: float = ON_CONTOUR_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``(i, j)`` within ``tol`` pixels of the closed polygon ``points`` ``(n, 2)``
    (a single point or a two-point contour included), inside ``shape``.

    Each edge is sampled every half pixel; the pixel centres around each sample (floor/ceil of
    both coordinates: every centre within ``tol`` < 0.5 of the edge is among them) are measured
    against that edge exactly."""
    a = np.asarray(points, float).reshape(-1, 2)
    b = np.roll(a, -1, axis=0)
    d = b - a
    length = np.hypot(d[:, 0], d[:, 1])
    m = np.ceil(length / 0.5).astype(int) + 1
    seg = np.repeat(np.arange(len(a)), m)
    start = np.cumsum(m) - m
    t = (np.arange(len(seg)) - start[seg]) / np.maximum(m[seg] - 1, 1)
    s = a[seg] + t[:, None] * d[seg]
    lo, hi = np.floor(s), np.ceil(s)
    cand = np.concatenate([np.column_stack([x[:, 0], y[:, 1]]) for x in (lo, hi) for y in (lo, hi)])
    seg4 = np.tile(seg, 4)
    da, dd = cand - a[seg4], d[seg4]
    den = np.einsum("ij,ij->i", dd, dd)
    u = np.clip(np.einsum("ij,ij->i", da, dd) / np.where(den > 0, den, 1.0), 0.0, 1.0)
    dist = np.hypot(*(da - u[:, None] * dd).T)
    keep = (dist <= tol) & (cand[:, 0] >= 0) & (cand[:, 1] >= 0) & (cand[:, 0] < shape[0]) & (cand[:, 1] < shape[1])
    hit = np.unique(cand[keep].astype(int), axis=0)
    return hit[:, 0], hit[:, 1]


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
    series.check_masks(masks)
    ds = _structure_set_header(series, label, description)
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(series)])

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
        contours = _roi_contours(series, mask)
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


def _structure_set_header(series: CTSeries, label: str, description: str) -> Dataset:
    """A new RT Structure Set instance with the CT's patient and study, its own series and the
    structure set's label, date and frame of reference (no ROIs yet)."""
    ref = series.datasets[0]
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
    return ds


def _referenced_frame(series: CTSeries) -> Dataset:
    """The Referenced Frame of Reference item: the CT's frame, study, series and every image."""
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
    return frame


def _roi_contours(series: CTSeries, mask: np.ndarray) -> list[Dataset]:
    """The Contour Sequence items of one mask (bool ``(i, j, k)`` on the series' grid): a
    CLOSED_PLANAR contour in patient LPS millimetres per outline and hole, each referencing its CT slice."""
    contours = []
    # only the slices in the structure's extent, each traced inside the structure's in-plane box
    # (slice_contours pads by a voxel: the same polygons, shifted back by the box's corner)
    i_hit, j_hit = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))
    i0, j0 = (int(i_hit[0]), int(j_hit[0])) if i_hit.size else (0, 0)
    inplane = mask[i0:int(i_hit[-1]) + 1, j0:int(j_hit[-1]) + 1] if i_hit.size else mask
    for k in np.flatnonzero(inplane.reshape(-1, mask.shape[2]).any(0)):
        for c in slice_contours(inplane[:, :, k]):
            c = c + (i0, j0)
            ijk = np.column_stack([c, np.full(len(c), k), np.ones(len(c))])
            xyz = (series.lps_affine @ ijk.T).T[:, :3]
            item = Dataset()
            img = Dataset()
            img.ReferencedSOPClassUID = series.datasets[k].SOPClassUID
            img.ReferencedSOPInstanceUID = series.datasets[k].SOPInstanceUID
            item.ContourImageSequence = DicomSequence([img])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(xyz)
            item[CONTOUR_DATA] = _decimal_strings(xyz.ravel())
            contours.append(item)
    return contours


CONTOUR_DATA = Tag(0x30060050)


def _decimal_strings(values: np.ndarray) -> RawDataElement:
    """Contour Data (DS, mm to 1/10000) as its encoded bytes: ``"x1\\y1\\z1\\x2..."`` padded to an
    even length. pydicom writes such an element as it is and decodes it when read; building a
    validated DS object per coordinate instead takes about ten times as long: the larger part of
    writing the RT Structure Set of a 512 x 512 CT. Every value
    fits DS's 16 characters (``-99999.9999`` is 11)."""
    text = "\\".join(f"{v:.4f}" for v in values.tolist()).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(CONTOUR_DATA, "DS", len(text), text, 0, False, True)

@dataclass
class StructureSetROI:
    """One ROI of a structure set as read: its number, name, mask on the series' grid, and whether
    the file had any closed contour for it (an ROI without contour data is not an empty structure)."""

    number: int
    name: str
    mask: np.ndarray
    has_contours: bool


def read_structure_set(path: str | Path, series: CTSeries) -> list[StructureSetROI]:
    """Every ROI of an RT Structure Set rasterised on ``series``' grid, in file order (see the module
    docstring for the rule). Refused with the file named: not a structure set, a frame of reference
    other than the series', contours off the series' slices (beyond :data:`OFF_SLICE_TOLERANCE` of
    the slice spacing: the message gives the contour's and the nearest slice's position)."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InputError(path, "not an RT Structure Set")
    frames = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.StructureSetROISequence} - {""}
    frames |= {str(f.get("FrameOfReferenceUID", "")) for f in ds.get("ReferencedFrameOfReferenceSequence", [])} - {""}
    if frames and series.frame_of_reference_uid not in frames:
        raise InputError(path, f"the structure set's frame of reference ({', '.join(sorted(frames))}) is not the CT "
                               f"series' ({series.frame_of_reference_uid}): the contours are in another coordinate system")
    shape = series.image.shape
    to_voxel = np.linalg.inv(series.lps_affine)
    dz = float(np.linalg.norm(series.lps_affine[:3, 2]))
    rois = [StructureSetROI(int(r.ROINumber), str(r.ROIName), np.zeros(shape, bool), False)
            for r in ds.StructureSetROISequence]
    by_number = {r.number: r for r in rois}
    for rc in ds.get("ROIContourSequence", []):
        roi = by_number.get(int(rc.ReferencedROINumber))
        if roi is None:
            continue
        parity = np.zeros(shape, bool)
        for c in rc.get("ContourSequence", []):
            if str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR" or not c.get("ContourData"):
                continue  # points and open lines (markers) enclose nothing
            xyz = np.asarray(c.ContourData, float).reshape(-1, 3)
            ijk = (to_voxel @ np.column_stack([xyz, np.ones(len(xyz))]).T).T[:, :3]
            k = int(round(float(np.mean(ijk[:, 2]))))
            off = float(np.max(np.abs(ijk[:, 2] - k)))
            if not (0 <= k < shape[2]):
                z = float(np.mean(xyz @ (series.lps_affine[:3, 2] / dz)))
                raise InputError(path, f"ROI {roi.name!r}: a contour at {z:.2f} mm along the slice normal is outside the "
                                       f"CT series ({_slice_range(series)})")
            if off > OFF_SLICE_TOLERANCE:
                z = float(np.mean(xyz @ (series.lps_affine[:3, 2] / dz)))
                raise InputError(path, f"ROI {roi.name!r}: a contour at {z:.2f} mm along the slice normal lies between CT "
                                       f"slices ({off * dz:.2f} mm from the nearest; tolerance "
                                       f"{OFF_SLICE_TOLERANCE * dz:.2f} mm, a tenth of the {dz:.2f} mm spacing)")
            roi.has_contours = True
            if len(ijk) >= 3:
                rr, cc = fill_polygon(ijk[:, 0], ijk[:, 1], shape[:2])
                layer = np.zeros(shape[:2], bool)
                layer[rr, cc] = True
                parity[:, :, k] ^= layer
            ii, jj = on_contour(ijk[:, :2], shape[:2])
            roi.mask[ii, jj, k] = True
        roi.mask |= parity
    return rois


def _slice_range(series: CTSeries) -> str:
    n = series.lps_affine[:3, 2] / np.linalg.norm(series.lps_affine[:3, 2])
    first = float(series.lps_affine[:3, 3] @ n)
    last = float((series.lps_affine @ [0, 0, series.image.shape[2] - 1, 1])[:3] @ n)
    return f"slices from {first:.2f} to {last:.2f} mm"


def read_rtstruct(path: str | Path, series: CTSeries) -> dict[str, np.ndarray]:
    """Rasterise an RT Structure Set on ``series``' grid -> ``{roi_name: bool (i, j, k)}``.

    Pixel centres inside the even-odd union of an ROI's closed contours on a slice, or on one of
    them, are in (module docstring). ROIs without contours come back empty; two ROIs with one name
    come back as their union. Contours off the series' slices are refused."""
    out: dict[str, np.ndarray] = {}
    for roi in read_structure_set(path, series):
        out[roi.name] = out[roi.name] | roi.mask if roi.name in out else roi.mask
    return out


def roi_types(path: str | Path) -> dict[str, str]:
    """RT ROI Interpreted Type per ROI name of a structure set file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    return {names[int(o.ReferencedROINumber)]: str(o.get("RTROIInterpretedType", "")) for o in ds.get("RTROIObservationsSequence", [])
            if int(o.ReferencedROINumber) in names}
