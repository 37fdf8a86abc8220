"""Import a clinic's DICOM export (CT series + RT Structure Sets) as an engine case-folder dataset.

Every RT Structure Set found under the source folder becomes one case
``DEST/<case>/ct.nii.gz`` + ``segmentations/<ROI>.nii.gz``, using the CT series it references.
Masks are rasterised by :func:`delineo.dicom.rtstruct.read_structure_set` (pixel centres inside or
on a contour), so structure sets from planning systems, rt-utils, platipy or plastimatch import as
the masks they describe.

Rules (each case's entry in the report, and the CLI's summary line, say what happened):

- **ROI names** are mapped through a YAML file (``"PTV_7000": PTV70``, matched ignoring case and
  surrounding spaces); with a map, unmapped ROIs are skipped and listed.
- **Two ROIs of one structure set that end up with one name** (two source names mapped to it, or
  the same name twice) are refused for that structure, naming both ROIs: the structure is not
  written (unknown to the engine), the rest of the case is. ``merge=True`` (``--merge-rois``)
  writes their union instead, e.g. to map ``Parotid_L`` and ``Parotid_R`` to ``Parotids``.
- **An ROI without contour data** is not written (it would read as "contoured, empty") and is listed.
- **Case names**: the Patient ID; when one CT series has several structure sets, each is its own
  case, ``<PatientID>_<StructureSetLabel>`` (``_2``, ``_3`` ... where labels repeat).
- A structure set that cannot be used is skipped with one line naming the file and why: its
  referenced CT series is not in the export (without a referenced series, the one CT series with its
  frame of reference is used), its frame of reference is not the CT's, or a contour lies between CT
  slices (further than a tenth of the slice spacing from the nearest slice) or outside the series.

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
from delineo.dicom.rtstruct import RT_STRUCTURE_SET_STORAGE, read_structure_set
from delineo.dicom.series import _assemble, _dicom_files, _read_headers
from delineo.errors import DelineoError, InputError


def read_roi_map(path: str | Path | None) -> dict[str, str] | None:
    """YAML ``{source ROI name: engine ROI name}`` -> lower-cased keys; None without a file."""
    if path is None:
        return None
    from delineo.settings import read_yaml_mapping

    mapping = read_yaml_mapping(Path(path))
    out = {}
    for k, v in mapping.items():
        if not isinstance(v, str) or not v.strip():
            raise InputError(path, f"ROI {k!r} maps to {v!r}: expected a structure name")
        out[str(k).strip().lower()] = v.strip()
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def _referenced_series(rt, rt_path: Path, src: Path, by_series: dict[str, list[Path]],
                       frames: dict[str, str]) -> str:
    """The CT series a structure set belongs to: its Referenced Series, else the one CT series in
    its frame of reference; an InputError naming the file otherwise."""
    refs = [str(s.SeriesInstanceUID)
            for f in rt.get("ReferencedFrameOfReferenceSequence", [])
            for st in f.get("RTReferencedStudySequence", [])
            for s in st.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in s]
    if refs:
        found = [r for r in refs if r in by_series]
        if not found:
            raise InputError(rt_path, f"the referenced CT series {', '.join(refs)} is not in {src}")
        return found[0]
    frame_uids = {str(f.get("FrameOfReferenceUID", "")) for f in rt.get("ReferencedFrameOfReferenceSequence", [])} - {""}
    candidates = [uid for uid, fr in frames.items() if fr in frame_uids]
    if len(candidates) == 1:
        return candidates[0]
    if not frame_uids:
        raise InputError(rt_path, "the structure set references neither a CT series nor a frame of reference")
    if not candidates:
        raise InputError(rt_path, f"the structure set references no CT series, and no CT series in {src} has its "
                                  f"frame of reference {', '.join(sorted(frame_uids))}")
    raise InputError(rt_path, f"the structure set references no CT series, and {len(candidates)} CT series share its "
                              f"frame of reference: {', '.join(candidates)}")


def summary_line(case: dict[str, Any]) -> str:
    """``P123: PTV70 512.3 cc, Mandible 61.0 cc; not imported: ...`` for one case of the report."""
    vols = case.get("volumes_cc", {})
    parts = [f"{case['case']}: " + (", ".join(f"{n} {vols.get(n, 0.0):.1f} cc" for n in case["structures"])
                                    or "no structures imported")]
    notes = case.get("not_imported", [])
    if notes:
        parts.append("not imported: " + "; ".join(notes))
    return "; ".join(parts)


def import_dicom(src: str | Path, dest: str | Path, *, roi_map: str | Path | dict | None = None,
                 progress: bool = True, merge: bool = False) -> dict[str, Any]:
    """Convert; returns ``{"cases": [{case, structures, volumes_cc, not_imported, source, ct_series,
    structure_set}], "skipped": [{source, reason}], "unmapped_rois": [...]}`` (rules: module docstring).
    ``progress``: a bar over the structure sets on a terminal, one line per structure set in a log."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise InputError(src, "source folder does not exist")
    mapping = roi_map if isinstance(roi_map, dict) or roi_map is None else read_roi_map(roi_map)
    if isinstance(mapping, dict):
        mapping = {str(k).strip().lower(): v for k, v in mapping.items()}
    by_series, frames, structure_sets = _index_export(src)
    report: dict[str, Any] = {"cases": [], "skipped": [], "unmapped_rois": set()}
    if not structure_sets:
        raise InputError(src, "no RT Structure Sets found")
    resolved, per_series = _resolve_series(structure_sets, src, by_series, frames)
    used: set[str] = set()
    loaded: dict[str, Any] = {}
    from delineo.progress import Steps

    steps = Steps(len(structure_sets), "import-dicom", unit="structure set") if progress else None
    for rt_path, rt, ref_series, problem in resolved:
        done = None
        try:
            if problem is not None:
                raise DelineoError(problem)
            if ref_series not in loaded:
                files = by_series[ref_series]
                loaded = {ref_series: _assemble(src, files, [pydicom.dcmread(f) for f in files])}  # one CT held at a time
            series = loaded[ref_series]
            named, not_imported = _named_masks(read_structure_set(rt_path, series), mapping, merge, report["unmapped_rois"])
            case = _case_name(rt, per_series.get(ref_series, 0) > 1, used, dest)
            used.add(case)
            volumes = _write_case(dest / case, series, named)
            done = {"case": case, "structures": sorted(named), "volumes_cc": volumes,
                    "not_imported": not_imported, "source": str(rt_path), "ct_series": ref_series,
                    "structure_set": str(rt.get("StructureSetLabel", ""))}
            report["cases"].append(done)
        except DelineoError as exc:
            report["skipped"].append({"source": str(rt_path), "reason": str(exc)})
        if steps is not None:
            steps.step(done["case"] if done else "skipped")
    if steps is not None:
        steps.close()
    report["unmapped_rois"] = sorted(report["unmapped_rois"])
    return report


def _index_export(src: Path) -> tuple[dict[str, list[Path]], dict[str, str], list[tuple[Path, Any]]]:
    """The DICOM files under ``src``: CT files per series UID, each CT series' frame of reference
    UID, and the RT Structure Sets as (path, header)."""
    by_series: dict[str, list[Path]] = {}
    frames: dict[str, str] = {}
    structure_sets = []
    for f, ds in _read_headers(_dicom_files(src)):
        if str(ds.SOPClassUID) == RT_STRUCTURE_SET_STORAGE:
            structure_sets.append((f, ds))
        elif str(ds.get("Modality", "")) == "CT":
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(f)
            frames.setdefault(str(ds.SeriesInstanceUID), str(ds.get("FrameOfReferenceUID", "")))
    return by_series, frames, structure_sets


def _resolve_series(
    structure_sets: list[tuple[Path, Any]], src: Path, by_series: dict[str, list[Path]], frames: dict[str, str],
) -> tuple[list[tuple[Path, Any, str | None, str | None]], dict[str, int]]:
    """Which CT series each structure set belongs to, first (a series with several gets label-named
    cases): (path, header, series UID or None, why not or None) per structure set, and how many
    structure sets each series has."""
    resolved: list[tuple[Path, Any, str | None, str | None]] = []
    for rt_path, rt in structure_sets:
        try:
            resolved.append((rt_path, rt, _referenced_series(rt, rt_path, src, by_series, frames), None))
        except InputError as exc:
            resolved.append((rt_path, rt, None, str(exc)))
    per_series: dict[str, int] = {}
    for _, _, uid, _ in resolved:
        if uid is not None:
            per_series[uid] = per_series.get(uid, 0) + 1
    return resolved, per_series


def _named_masks(rois: list, mapping: dict[str, str] | None, merge: bool, unmapped: set[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The masks to write under their engine names, and why the others are not imported: ROIs
    left out by the map go to ``unmapped``; two ROIs with one name are refused unless ``merge``."""
    groups: dict[str, list] = {}
    not_imported: list[str] = []
    for roi in rois:
        target = roi.name if mapping is None else mapping.get(roi.name.strip().lower())
        if target is None:
            unmapped.add(roi.name)
            continue
        if not roi.has_contours:
            not_imported.append(f"{roi.name!r} has no contour data")
            continue
        groups.setdefault(target, []).append(roi)
    named: dict[str, np.ndarray] = {}
    for target, group in groups.items():
        if len(group) > 1 and not merge:
            both = " and ".join(f"{r.name!r} (ROI {r.number})" for r in group)
            not_imported.append(f"{target}: {both} both map to it (map only one, or --merge-rois for their union)")
            continue
        named[target] = np.logical_or.reduce([r.mask for r in group])
    return named, not_imported


def _case_name(rt, shared_series: bool, used: set[str], dest: Path) -> str:
    """The case folder's name: the Patient ID (with the structure set's label when its CT series
    has several), suffixed ``_2``, ``_3`` ... past names used or existing in ``dest``."""
    base = _safe(f"{rt.get('PatientID', '') or 'case'}")
    if shared_series:
        label = str(rt.get("StructureSetLabel", "") or rt.get("SeriesDescription", "") or "")
        base = _safe(f"{base}_{label}") if label.strip() else base
    case, n = base, 2
    while case in used or (dest / case).exists():
        case, n = f"{base}_{n}", n + 1
    return case


def _write_case(folder: Path, series, named: dict[str, np.ndarray]) -> dict[str, float]:
    """Write the CT (HU, int16) and each mask under ``folder``; returns each structure's volume in cc."""
    hu = np.clip(np.rint(series.image.array), -32768, 32767).astype(np.int16)
    write_image(folder / "ct.nii.gz", series.image.like(hu))
    voxel_cc = float(abs(np.linalg.det(series.image.affine[:3, :3]))) / 1000.0
    for roi, mask in named.items():
        write_mask(folder / "segmentations" / f"{_safe(roi)}.nii.gz", mask, series.image)
    return {r: round(float(named[r].sum()) * voxel_cc, 2) for r in sorted(named)}
