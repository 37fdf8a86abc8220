"""Import a clinic's DICOM export (CT series + RT Structure Sets) as an engine case-folder dataset.

Every RT Structure Set found under the source folder becomes one case
``DEST/<case>/ct.nii.gz`` + ``segmentations/<ROI>.nii.gz``, using the CT series it references.
ROI names are mapped through a YAML file (``"PTV_7000": PTV70``, matched ignoring case and
surrounding spaces); with a map, unmapped ROIs are skipped and listed; two source ROIs mapped
to one name are merged (union). A study that cannot be read is skipped with its reason.
Structures that a structure set does not contain are simply absent, which the engine reads as
"not contoured" (unknown), not as empty.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from delineo.data.io import write_image, write_mask
from delineo.dicom.rtstruct import RT_STRUCTURE_SET_STORAGE, read_rtstruct
from delineo.dicom.series import _assemble, _dicom_files, _read_headers
from delineo.errors import DelineoError, InputError


def read_roi_map(path: str | Path | None) -> dict[str, str] | None:
    """YAML ``{source ROI name: engine ROI name}`` -> lower-cased keys; None without a file."""
    if path is None:
        return None
    from delineo.training.config import read_yaml_mapping

    mapping = read_yaml_mapping(Path(path))
    out = {}
    for k, v in mapping.items():
        if not isinstance(v, str) or not v.strip():
            raise InputError(path, f"ROI {k!r} maps to {v!r}: expected a structure name")
        out[str(k).strip().lower()] = v.strip()
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def import_dicom(src: str | Path, dest: str | Path, *, roi_map: str | Path | dict | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Convert; returns ``{"cases": [{case, structures, source}], "skipped": [...], "unmapped_rois": [...]}``.
    ``progress``: a bar over the structure sets on a terminal, one line per structure set in a log."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise InputError(src, "source folder does not exist")
    mapping = roi_map if isinstance(roi_map, dict) or roi_map is None else read_roi_map(roi_map)
    if isinstance(mapping, dict):
        mapping = {str(k).strip().lower(): v for k, v in mapping.items()}
    headers = _read_headers(_dicom_files(src))
    by_series: dict[str, list[Path]] = {}
    structure_sets = []
    for f, ds in headers:
        if str(ds.SOPClassUID) == RT_STRUCTURE_SET_STORAGE:
            structure_sets.append(f)
        elif str(ds.get("Modality", "")) == "CT":
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(f)
    report: dict[str, Any] = {"cases": [], "skipped": [], "unmapped_rois": set()}
    if not structure_sets:
        raise InputError(src, "no RT Structure Sets found")
    used: set[str] = set()
    from delineo.progress import Steps

    steps = Steps(len(structure_sets), "import-dicom", unit="structure set") if progress else None
    for rt_path in structure_sets:
        try:
            rt = pydicom.dcmread(rt_path, stop_before_pixels=True)
            try:
                ref_series = str(rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                                 .RTReferencedSeriesSequence[0].SeriesInstanceUID)
            except (AttributeError, IndexError) as exc:
                raise InputError(rt_path, "the structure set does not reference a CT series") from exc
            if ref_series not in by_series:
                raise InputError(rt_path, f"the referenced CT series {ref_series} is not in {src}")
            files = by_series[ref_series]
            series = _assemble(src, files, [pydicom.dcmread(f) for f in files])
            masks = read_rtstruct(rt_path, series)
            named: dict[str, np.ndarray] = {}
            for roi, mask in masks.items():
                target = roi if mapping is None else mapping.get(roi.strip().lower())
                if target is None:
                    report["unmapped_rois"].add(roi)
                    continue
                named[target] = named[target] | mask if target in named else mask
            base = _safe(f"{rt.get('PatientID', '') or 'case'}")
            case, n = base, 2
            while case in used or (dest / case).exists():
                case, n = f"{base}_{n}", n + 1
            used.add(case)
            folder = dest / case
            hu = np.clip(np.rint(series.image.array), -32768, 32767).astype(np.int16)
            write_image(folder / "ct.nii.gz", series.image.like(hu))
            for roi, mask in named.items():
                write_mask(folder / "segmentations" / f"{_safe(roi)}.nii.gz", mask, series.image)
            report["cases"].append({"case": case, "structures": sorted(named), "source": str(rt_path)})
        except DelineoError as exc:
            report["skipped"].append({"source": str(rt_path), "reason": str(exc)})
        if steps is not None:
            steps.step(report["cases"][-1]["case"] if report["cases"] and report["cases"][-1]["source"] == str(rt_path) else "skipped")
    if steps is not None:
        steps.close()
    report["unmapped_rois"] = sorted(report["unmapped_rois"])
    return report
