"""DICOM Segmentation (SEG) of the masks, referencing the CT series, written with highdicom.

One binary segment per structure, labelled with the ROI name, coloured as in the overview and
the structure set, category "Anatomical structure" for organs at risk and "Physical object" +
"Planning target volume" for targets, algorithm type AUTOMATIC (delineo and the model name).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from delineo import __version__
from delineo.contours.colors import structure_color
from delineo.data.boxes import bounding_box
from delineo.dicom.series import CTSeries
from delineo.errors import InputError
from delineo.models.registry import TARGET_TYPES


def write_seg(
    series: CTSeries,
    masks: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    roi_types: Mapping[str, str] | None = None,
    model_name: str = "delineo",
) -> Path:
    """Write a binary DICOM SEG of ``masks`` (``{roi_name: bool (i, j, k)}`` on the series grid)."""
    if not masks:
        raise InputError(None, "no structures to write into a DICOM SEG")
    series.check_masks(masks)
    names = list(masks)
    types = dict(roi_types or {})
    algorithm = hd.AlgorithmIdentificationSequence(
        name="delineo", version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": model_name},
    )
    descriptions = []
    for number, name in enumerate(names, 1):
        target = types.get(name, "ORGAN") in TARGET_TYPES
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.PhysicalObject if target else codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.PlanningTargetVolume if target else codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor(*_to_lab(structure_color(name, number - 1))),
        ))
    # frames only for the slices where a segment is present (empty frames are omitted from the SEG
    # anyway), each segment written inside its own box into a zeroed stack: a cost proportional to
    # the structures, not the grid. pixels: (slices, rows, columns, segments), rows along j.
    boxes = {n: bounding_box(masks[n]) for n in names}
    found = [b for b in boxes.values() if b is not None]
    k0 = min((b[2].start for b in found), default=0)
    k1 = max((b[2].stop for b in found), default=1)
    pixels = np.zeros((k1 - k0, *series.image.shape[1::-1], len(names)), np.uint8)
    for s, n in enumerate(names):
        b = boxes[n]
        if b is not None:
            pixels[b[2].start - k0:b[2].stop - k0, b[1], b[0], s] = np.transpose(np.asarray(masks[n])[b], (2, 1, 0))
    seg = hd.seg.Segmentation(
        source_images=_with_type2_attributes(series.datasets[k0:k1]),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="delineo",
        manufacturer_model_name=model_name,
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"{model_name} auto-segmentation",
        omit_empty_frames=True,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


#: Type 2 attributes (present, may be empty) that highdicom copies from the source images;
#: some exports leave them out altogether
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def _with_type2_attributes(datasets):
    if all(all(k in d for k in _TYPE2) for d in datasets):
        return datasets
    out = []
    for d in datasets:
        d = copy.copy(d)  # shallow: the pixel data is shared, not copied
        for k in _TYPE2:
            if k not in d:
                setattr(d, k, "")
        out.append(d)
    return out


def _to_lab(rgb) -> tuple[float, float, float]:
    """sRGB (0-255) -> CIE L*a*b* (D65), for the SEG's Recommended Display CIELab Value."""
    c = np.asarray(rgb, float) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ c
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2]))


def read_seg(path: str | Path, series: CTSeries) -> dict[str, np.ndarray]:
    """A SEG written for ``series`` back to ``{segment_label: bool (i, j, k)}`` (frames matched by
    referenced SOP Instance UID)."""
    seg = hd.seg.segread(str(path))
    index = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    out = {}
    for number in seg.segment_numbers:
        label = seg.get_segment_description(number).segment_label
        vol = np.zeros(series.image.shape, bool)
        for f in range(int(seg.NumberOfFrames)):
            frame = seg.PerFrameFunctionalGroupsSequence[f]
            if int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != number:
                continue
            uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            vol[:, :, index[uid]] = seg.pixel_array[f].T.astype(bool) if seg.pixel_array.ndim == 3 else seg.pixel_array.T.astype(bool)
        out[label] = vol
    return out
