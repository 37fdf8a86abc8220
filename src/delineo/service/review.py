"""Corrections and approvals of a job's structures (the viewer's brush, eraser and interpolation;
"approved" / "needs work" per structure).

The model's result (``results/<job>/``) is never changed: the first correction or review copies
it to ``edits/<job>/`` and every later one updates that copy, which is then the study's result
(downloads, viewer); ``?original=true`` still gets the model's. ``edits/<job>/review.json`` holds
the version number, each structure's review (state, user, time, note) and the history of edits.
For DICOM studies the RT Structure Set and SEG of the copy are written again from the edited
masks; the RT Structure Set carries each review in its ROI observation (ROI Interpreter = the
reviewer) and ROI Description, and is ``APPROVED`` (reviewer, date, time) once every structure is.
The model's own ROI Description (failed anatomy checks, the quality estimate) stays on every
structure that was not edited, reviewed or not.

Two numbers: ``version`` counts every change (each correction, each review click); ``set_version``
is the version of the structure set a person sees (the page, the RT Structure Set's Series
Description, the sends): one per change set, that is all the corrections and reviews made between
two deliveries of the DICOM results (a download of the RT Structure Set or SEG, a send). The first
change after a delivery opens the next set version; :func:`mark_delivered` closes it. The files are
written after every change (a new SOP Instance UID each time), so whatever is delivered is current.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

REVIEW_STATES = ("approved", "needs_work")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def edits_dir(study_dir: Path, job_id: str) -> Path:
    return Path(study_dir) / "edits" / job_id


def read_state(study_dir: Path, job_id: str) -> dict[str, Any]:
    """``{"version": n, "reviews": {structure: {...}}, "edited": [structure, ...], "history": [...]}``."""
    try:
        return json.loads((edits_dir(study_dir, job_id) / "review.json").read_text())
    except (OSError, ValueError):
        return {"version": 0, "reviews": {}, "edited": [], "history": []}


def result_dir(study_dir: Path, results: Path, job_id: str, original: bool = False) -> Path:
    """Where the study's current result for this job is: the edited copy, or the model's."""
    d = edits_dir(study_dir, job_id)
    return results if original or not (d / "review.json").is_file() else d


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _ensure_copy(study_dir: Path, results: Path, job_id: str) -> Path:
    d = edits_dir(study_dir, job_id)
    if not (d / "review.json").is_file():
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(results, tmp)
        (tmp / "review.json").write_text(json.dumps({"version": 0, "reviews": {}, "edited": [], "history": []}))
        shutil.rmtree(d, ignore_errors=True)
        tmp.replace(d)
    return d


def _write_state(d: Path, state: dict) -> None:
    tmp = d / "review.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(d / "review.json")


def read_mask_upload(data: bytes, like: Path) -> np.ndarray:
    """A NIfTI (gzip or not) from the viewer -> a bool array on the grid of the mask ``like``;
    ValueError with the reason when it does not fit."""
    import gzip

    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        img = nib.Nifti1Image.from_bytes(data)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"not a NIfTI image ({exc.__class__.__name__})") from None
    ref = nib.load(str(like))
    array = np.asanyarray(img.dataobj)
    while array.ndim > len(ref.shape) and array.shape[-1] == 1:
        array = array[..., 0]
    if array.shape != ref.shape:
        raise ValueError(f"the mask is {array.shape} voxels, the structure's grid is {ref.shape}")
    return array > 0


def set_version(state: dict) -> int:
    """The structure set's version (one per change set; see the module's words)."""
    return int(state.get("set_version", state.get("version", 0)))


def _open_change_set(state: dict) -> None:
    """A change: the first one after a delivery starts the next set version."""
    if not state.get("set_open"):
        state["set_version"] = set_version(state) + 1
        state["set_open"] = True


def mark_delivered(study_dir: Path, job_id: str) -> int:
    """The DICOM results of this job's edited copy were downloaded or sent: the next change opens a
    new set version. Returns the set version delivered (0: the model's own result)."""
    with _lock(f"{study_dir}:{job_id}"):
        d = edits_dir(study_dir, job_id)
        if not (d / "review.json").is_file():
            return 0
        state = read_state(study_dir, job_id)
        if state.get("set_open"):
            state["set_open"] = False
            _write_state(d, state)
        return set_version(state)


def save_mask(study_dir: Path, results: Path, job_id: str, name: str, mask: np.ndarray, *, user: str,
              dicom_input: Path | None = None, model: str = "delineo") -> dict:
    """Store an edited mask as the next version; returns the new state."""
    import nibabel as nib

    with _lock(f"{study_dir}:{job_id}"):
        d = _ensure_copy(study_dir, results, job_id)
        path = d / "segmentations" / f"{name}.nii.gz"
        ref = nib.load(str(path))
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), ref.affine, ref.header), str(path))
        state = read_state(study_dir, job_id)
        _open_change_set(state)  # before the count moves (an older state without set_version: the count was it)
        state["version"] = int(state.get("version", 0)) + 1
        if name not in state["edited"]:
            state["edited"].append(name)
        state["history"].append({"version": state["version"], "set_version": state["set_version"], "structure": name, "action": "edit", "user": user, "at": _now(),
                                 "voxels": int(mask.sum())})
        # an edit after an approval needs a new look
        r = state["reviews"].get(name)
        if r and r.get("state") == "approved":
            state["reviews"][name] = {**r, "state": "needs_work", "note": "edited after approval", "user": user, "at": _now()}
        _update_summary(d, state)
        _write_dicom(d, state, dicom_input, model)
        _write_state(d, state)
        return state


def set_review(study_dir: Path, results: Path, job_id: str, name: str, review: str | None, *, user: str, note: str = "",
               dicom_input: Path | None = None, model: str = "delineo") -> dict:
    """Mark a structure approved / needs work (None: clear the mark); returns the new state."""
    if review is not None and review not in REVIEW_STATES:
        raise ValueError(f"review must be one of {', '.join(REVIEW_STATES)} (or null)")
    with _lock(f"{study_dir}:{job_id}"):
        d = _ensure_copy(study_dir, results, job_id)
        state = read_state(study_dir, job_id)
        _open_change_set(state)  # before the count moves (an older state without set_version: the count was it)
        state["version"] = int(state.get("version", 0)) + 1
        if review is None:
            state["reviews"].pop(name, None)
        else:
            state["reviews"][name] = {"state": review, "user": user, "at": _now(), "note": note[:500]}
        state["history"].append({"version": state["version"], "set_version": state["set_version"], "structure": name, "action": review or "clear", "user": user, "at": _now()})
        _update_summary(d, state)
        _write_dicom(d, state, dicom_input, model)
        _write_state(d, state)
        return state


def _update_summary(d: Path, state: dict) -> None:
    import nibabel as nib

    p = d / "summary.json"
    try:
        summary = json.loads(p.read_text())
    except (OSError, ValueError):
        return
    for name, s in summary.get("structures", {}).items():
        if name in state["edited"]:
            img = nib.load(str(d / "segmentations" / f"{name}.nii.gz"))
            m = np.asanyarray(img.dataobj) > 0
            zooms = img.header.get_zooms()[: m.ndim]
            size = float(np.prod(zooms)) * int(m.sum())
            if "volume_cc" in s:
                s["volume_cc"] = round(size / 1000.0, 3)
            elif "volume_cm2" in s:
                s["volume_cm2"] = round(size / 100.0, 3)
            s["empty"] = not bool(m.any())
            s["edited"] = True
        # the reviewer's mark ("review" is the model's own needs-review flag, beside "quality")
        if name in state["reviews"]:
            s["approval"] = state["reviews"][name]
        else:
            s.pop("approval", None)
    summary["edit_version"] = state["version"]
    summary["set_version"] = set_version(state)
    p.write_text(json.dumps(summary, indent=2) + "\n")


def review_text(r: dict | None, edited: bool) -> str:
    parts = []
    if r:
        parts.append(f"{'approved' if r['state'] == 'approved' else 'needs work'} by {r['user']} at {r['at']}" + (f": {r['note']}" if r.get("note") else ""))
    if edited:
        parts.append("edited in delineo")
    return "; ".join(parts)


def model_description(row: dict) -> str:
    """The ROI Description the model's result gave a structure: failed anatomy checks and the
    quality estimate (as :func:`delineo.api.contour_image` writes them)."""
    parts = []
    flags = [str(f) for f in row.get("flags") or []]
    if flags:
        parts.append("CHECK FAILED: " + "; ".join(flags))
    q = row.get("quality")
    if isinstance(q, dict):
        q = q.get("quality")
    if isinstance(q, (int, float)):
        from delineo.inference.quality import quality_text

        parts.append("delineo " + quality_text({"quality": float(q), "review": bool(row.get("review"))}))
    return "; ".join(parts)


def _write_dicom(d: Path, state: dict, dicom_input: Path | None, model: str) -> None:
    """RT Structure Set and SEG of the edited masks, with the reviews in the RT Structure Set."""
    if dicom_input is None or not (d / "rtstruct.dcm").is_file():
        return
    import nibabel as nib
    import pydicom

    from delineo.dicom.rtstruct import write_rtstruct
    from delineo.dicom.seg import write_seg
    from delineo.dicom.series import read_series

    summary = json.loads((d / "summary.json").read_text())
    names = list(summary.get("structures", {}))
    series = read_series(dicom_input)
    masks = {n: np.asanyarray(nib.load(str(d / "segmentations" / f"{n}.nii.gz")).dataobj) > 0 for n in names}
    roi_types = {n: s.get("roi_type", "ORGAN") for n, s in summary["structures"].items()}
    reviewed = bool(state.get("reviews") or state.get("edited"))
    write_rtstruct(series, masks, d / "rtstruct.dcm", roi_types=roi_types, label=model,
                   description=f"{model} auto-contours, reviewed in delineo (version {set_version(state)})" if reviewed else f"{model} auto-contours")
    ds = pydicom.dcmread(d / "rtstruct.dcm")
    numbers = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    for roi in ds.StructureSetROISequence:
        name = str(roi.ROIName)
        edited = name in state["edited"]
        # the model's own words (failed checks, quality estimate) stay until the contour is edited
        text = "; ".join(filter(None, [review_text(state["reviews"].get(name), edited),
                                       "" if edited else model_description(summary["structures"].get(name, {}))]))
        if text:
            roi.ROIDescription = text[:1024]
        if name in state["edited"]:
            roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
    for obs in ds.RTROIObservationsSequence:
        r = state["reviews"].get(numbers.get(int(obs.ReferencedROINumber), ""))
        if r:
            obs.ROIInterpreter = str(r["user"])[:64]
            obs.ROIObservationLabel = ("APPROVED" if r["state"] == "approved" else "NEEDS WORK")[:16]
            obs.ROIObservationDescription = review_text(r, False)[:1024]
    reviews = [state["reviews"].get(n) for n in names]
    if names and all(r and r["state"] == "approved" for r in reviews):
        last = max(reviews, key=lambda r: r["at"])
        at = _dt.datetime.fromisoformat(last["at"])
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewDate, ds.ReviewTime, ds.ReviewerName = at.strftime("%Y%m%d"), at.strftime("%H%M%S"), str(last["user"])[:64]
    else:
        ds.ApprovalStatus = "UNAPPROVED"
    ds.save_as(d / "rtstruct.dcm", enforce_file_format=True)
    present = {n: m for n, m in masks.items() if m.any()}
    if present and (d / "seg.dcm").is_file():
        write_seg(series, present, d / "seg.dcm", roi_types=roi_types, model_name=model)
