"""Versions of a study's result: every finished job's result is kept as a version.

The *current* version (what the viewer shows and downloads give) is the newest finished job, or
an earlier one the user restored (``current.json`` in the study folder names it, together with
the newest job at the time, so that a job finishing later becomes current again).

A job on a subset of the model's structures *adds to* the current version: when it finishes,
its folder gets the current version's other structures (their masks as corrected, their summary
rows) and ``edits/<job>/review.json`` carries their reviews and corrections over, so that
approvals and edits of the structures not re-contoured are kept. Replacing a structure that was
edited or reviewed needs ``confirm_replace`` (:func:`replaced_work`); the earlier version stays
and can be restored.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable

from delineo.service import review

log = logging.getLogger("delineo.service.versions")


def _pointer(study_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(study_dir) / "current.json").read_text())
    except (OSError, ValueError):
        return {}


def _newest(done: list) -> Any:
    return max(done, key=lambda j: (j.finished_at or j.created_at).replace(tzinfo=None)) if done else None


def current_job(study_dir: Path, jobs: Iterable) -> Any:
    """The job whose result is the study's current version (None before the first is done)."""
    done = [j for j in jobs if j.state == "done"]
    newest = _newest(done)
    p = _pointer(study_dir)
    if newest is not None and p.get("newest") == newest.id:
        chosen = next((j for j in done if j.id == p.get("job")), None)
        if chosen is not None:
            return chosen
    return newest


def restore(study_dir: Path, jobs: Iterable, job_id: str, *, user: str) -> None:
    """Make ``job_id``'s result (with its own corrections and reviews) the current version."""
    done = [j for j in jobs if j.state == "done"]
    if not any(j.id == job_id for j in done):
        raise KeyError(job_id)
    newest = _newest(done)
    tmp = Path(study_dir) / "current.json.tmp"
    tmp.write_text(json.dumps({"job": job_id, "newest": newest.id, "user": user, "at": review._now()}))
    tmp.replace(Path(study_dir) / "current.json")


def touched(study_dir: Path, job_id: str) -> dict[str, str]:
    """Structures of a job's result a person worked on: ``{name: "edited, approved"}`` (edited, approved, needs work)."""
    state = review.read_state(study_dir, job_id)
    out: dict[str, list[str]] = {n: ["edited"] for n in state.get("edited", [])}
    for n, r in state.get("reviews", {}).items():
        out.setdefault(n, []).append("approved" if r.get("state") == "approved" else "needs work")
    return {n: ", ".join(w) for n, w in out.items()}


def replaced_work(study_dir: Path, current, model: str, structures: list[str] | None, all_structures: list[str]) -> dict[str, str]:
    """What a new job would replace of the current version's corrected or reviewed structures:
    the ones it re-contours (a subset of the same model), or all of them (a whole set, another model)."""
    if current is None:
        return {}
    work = touched(study_dir, current.id)
    if structures and current.model == model:
        return {n: w for n, w in work.items() if n in structures}
    return work


def merge_into(work: Path, base: Path, base_state: dict, *, base_job: str, subset: list[str]) -> dict | None:
    """Complete a subset job's output folder ``work`` with the other structures of the current
    version (folder ``base``, its review state ``base_state``). Returns the review state to carry
    over (reviews and corrections of the kept structures), or None when there is nothing to carry."""
    try:
        summary = json.loads((work / "summary.json").read_text())
        base_summary = json.loads((base / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    new = summary.get("structures", {})
    kept: dict[str, dict] = {}
    for name, row in base_summary.get("structures", {}).items():
        if name in new or name in subset:
            continue
        src = base / "segmentations" / f"{name}.nii.gz"
        if not src.is_file():
            continue
        shutil.copyfile(src, work / "segmentations" / f"{name}.nii.gz")
        row = dict(row)
        row["file"] = str(work / "segmentations" / f"{name}.nii.gz")
        row.pop("approval", None)
        kept[name] = row
    # the base's order, the re-contoured structures in their old places, new ones at the end
    merged = {}
    for name in base_summary.get("structures", {}):
        if name in kept:
            merged[name] = kept[name]
        elif name in new:
            merged[name] = new[name]
    for name, row in new.items():
        merged.setdefault(name, row)
    summary["structures"] = merged
    summary["based_on"] = {"job": base_job, "version": int(base_state.get("version", 0)), "kept": list(kept), "contoured": list(new)}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    reviews = {n: r for n, r in base_state.get("reviews", {}).items() if n in kept}
    edited = [n for n in base_state.get("edited", []) if n in kept]
    if not reviews and not edited:
        return None
    return {"version": 0, "reviews": reviews, "edited": edited,
            "history": [{"version": 0, "action": "carried over", "structure": n, "user": "delineo", "at": review._now(),
                         "from_job": base_job} for n in sorted(set(reviews) | set(edited))]}


def write_merged_overview(work: Path, image_path: Path, title: str) -> None:
    """The overview PNG of a merged folder (3D images): every structure, not only the re-contoured."""
    import nibabel as nib
    import numpy as np

    from delineo.contours.overview import write_overview

    summary = json.loads((work / "summary.json").read_text())
    if len(summary.get("shape", [0, 0, 0])) != 3:
        return
    if (Path(image_path).is_dir()):
        from delineo.dicom.series import read_series

        image = read_series(image_path).image
    else:
        from delineo.data.io import read_image

        image = read_image(image_path)
    masks = {n: np.asanyarray(nib.load(str(work / "segmentations" / f"{n}.nii.gz")).dataobj) > 0 for n in summary["structures"]}
    if any(m.shape != image.array.shape for m in masks.values()):
        return
    flagged = {n: f"(quality {float(r['quality']):.2f})" for n, r in summary["structures"].items()
               if r.get("review") and isinstance(r.get("quality"), (int, float))}
    write_overview(image, masks, work, title=f"{title} — {summary.get('model', '')}", review=flagged)


def write_merged_dicom(work: Path, dicom_input: Path | None, model: str) -> None:
    """RT Structure Set and SEG of a merged folder (all its structures, quality in the ROI Description)."""
    review._write_dicom(work, {"version": 0, "reviews": {}, "edited": []}, dicom_input, model)


def carry_over(study_dir: Path, job_id: str, results: Path, state: dict, dicom_input: Path | None, model: str) -> None:
    """Create ``edits/<job>/`` of a merged result with the carried reviews and corrections."""
    d = review.edits_dir(study_dir, job_id)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(results, tmp)
    review._update_summary(tmp, state)
    review._write_dicom(tmp, state, dicom_input, model)
    review._write_state(tmp, state)
    shutil.rmtree(d, ignore_errors=True)
    tmp.replace(d)


def listing(study_dir: Path, jobs: Iterable) -> list[dict[str, Any]]:
    """Every finished job's result as a version, newest first, with what people did to it."""
    jobs = list(jobs)
    cur = current_job(study_dir, jobs)
    out = []
    for j in sorted((j for j in jobs if j.state == "done"), key=lambda j: (j.finished_at or j.created_at).replace(tzinfo=None), reverse=True):
        state = review.read_state(study_dir, j.id)
        folder = review.result_dir(study_dir, Path(study_dir) / "results" / j.id, j.id)
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        names = list(summary.get("structures", {}))
        reviews = state.get("reviews", {})
        out.append({
            "job": j.id, "model": j.model, "requested": j.structures, "structures": names,
            "created_at": j.created_at, "finished_at": j.finished_at, "current": cur is not None and cur.id == j.id,
            "based_on": (summary.get("based_on") or {}).get("job"),
            "approved": sum(1 for n in names if reviews.get(n, {}).get("state") == "approved"),
            "needs_work": sum(1 for n in names if reviews.get(n, {}).get("state") == "needs_work"),
            "edited": len([n for n in state.get("edited", []) if n in names]), "edit_version": int(state.get("version", 0)),
        })
    return out
