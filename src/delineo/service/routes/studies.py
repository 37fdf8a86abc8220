"""Studies: list, detail and delete, and the views of studies and jobs that the other study routes
share (:mod:`.upload`, :mod:`.jobs`, :mod:`.downloads`, :mod:`.viewer`, :mod:`.review`, :mod:`.send`)."""

from __future__ import annotations

import json
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from delineo.contours.colors import structure_color
from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import Job, Study, User
from delineo.service.routes.deps import current_user, get_ctx, get_db, visible_study
from delineo.service.routes.models import model_info
from delineo.service.schemas import JobOut, StructureOut, StudyOut
from delineo.service.storage import UploadRejected
from delineo.service import review, versions

log = logging.getLogger("delineo.service.upload")

router = APIRouter(tags=["studies"])


RESULT_FILES = {
    "rtstruct": ("rtstruct.dcm", "application/dicom"),
    "seg": ("seg.dcm", "application/dicom"),
    "overview": ("overview.png", "image/png"),
    "summary": ("summary.json", "application/json"),
}
RESULT_KINDS = ("rtstruct", "seg", "nifti", "overview", "summary")


# ---- views of rows ---------------------------------------------------------------------------

def job_out(j: Job) -> JobOut:
    return JobOut(id=j.id, study_id=j.study_id, model=j.model, structures=j.structures, state=j.state, stage=j.stage,
                  progress=round(j.progress, 4), error=j.error, attempts=j.attempts, created_at=j.created_at,
                  started_at=j.started_at, finished_at=j.finished_at)


def current_results(ctx: ServiceContext, study: Study, job: Job, original: bool = False) -> Path:
    """The folder of a job's result as the study has it now: the reviewed and edited copy
    (``edits/<job>/``, see :mod:`delineo.service.review`) or, without one or with ``original``,
    the model's."""
    return review.result_dir(ctx.storage.study_dir(study.id), ctx.storage.results_dir(study.id, job.id), job.id, original)


def available_results(ctx: ServiceContext, study: Study, job: Job | None) -> list[str]:
    if job is None:
        return []
    out = current_results(ctx, study, job)
    kinds = [k for k, (f, _) in RESULT_FILES.items() if (out / f).is_file()]
    if any((out / "segmentations").glob("*.nii.gz")):
        kinds.append("nifti")
    return [k for k in RESULT_KINDS if k in kinds]


def current_job(ctx: ServiceContext, study: Study) -> Job | None:
    """The job whose result is the study's current version: the newest done job, or an earlier
    one the user restored (:mod:`delineo.service.versions`)."""
    return versions.current_job(ctx.storage.study_dir(study.id), study.jobs)


PRIVATE_INFO = ("patient_id",)


def study_out(ctx: ServiceContext, s: Study, viewer: User | None = None) -> StudyOut:
    """A study as the API shows it; the Patient ID only to the study's owner (``viewer``)."""
    latest = s.jobs[-1] if s.jobs else None
    info = s.info
    owner = viewer is not None and viewer.id == s.owner_id
    patient = (info.get("patient_id") or None) if owner else None
    info = {k: v for k, v in info.items() if k not in PRIVATE_INFO and not k.startswith("_")}
    return StudyOut(id=s.id, name=s.name, kind=s.kind, owner=s.owner.username, size_bytes=s.size_bytes, info=info,
                    created_at=s.created_at, latest_job=job_out(latest) if latest else None,
                    results=available_results(ctx, s, current_job(ctx, s)), patient_id=patient,
                    study_date=info.get("study_date"), model=latest.model if latest else None)


class StudyDetail(StudyOut):
    jobs: list[JobOut]
    structures: list[StructureOut]
    result_job: str | None = None
    edit_version: int = 0
    #: the structure set's version: one per change set (corrections and reviews between two
    #: downloads or sends of the DICOM results), shown by the page and in the RT Structure Set
    set_version: int = 0
    checks: list[dict[str, Any]] = []
    #: DICOM studies: slice positions along the normal (LPS mm) with their Instance Numbers, voxel spacing
    dicom_geometry: dict[str, Any] | None = None


def _quality(s: dict) -> dict[str, Any] | None:
    """The model's quality estimate of a structure (``quality`` 0..1, ``review``: below the
    model's threshold), as the summary has it."""
    q = s.get("quality")
    if isinstance(q, dict):
        return q
    if isinstance(q, (int, float)):
        return {"quality": float(q), "review": bool(s.get("review")) if isinstance(s.get("review"), bool) else False}
    return None


def structures_of(ctx: ServiceContext, study: Study, job: Job | None) -> list[StructureOut]:
    if job is None:
        return []
    out = current_results(ctx, study, job)
    reviews = review.read_state(ctx.storage.study_dir(study.id), job.id).get("reviews", {})
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    try:
        order = model_info(job.model)["structures"]
    except Exception:
        order = []
    rows = []
    for name, s in summary.get("structures", {}).items():
        i = order.index(name) if name in order else 0
        unit = "cc" if "volume_cc" in s else "cm²"
        flags = [str(f) for f in s.get("flags", []) or []]
        rows.append(StructureOut(name=name, color=list(structure_color(name, i)), roi_type=s.get("roi_type"),
                                 volume=s.get("volume_cc", s.get("volume_cm2")), unit=unit, empty=s.get("empty"),
                                 flags=flags, quality=_quality(s), review=reviews.get(name), edited=bool(s.get("edited"))))
    return rows


# ---- shared by the upload, result and PACS routes --------------------------------------------

def _dicom_dates(folder: Path) -> dict[str, str]:
    """The Study Date (and Patient ID, if the upload's info lacks it) of a stored DICOM series."""
    import pydicom

    for f in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyDate", "PatientID"])
        except Exception:  # noqa: BLE001 - the next file
            continue
        out = {}
        d = str(ds.get("StudyDate", "") or "")
        if re.fullmatch(r"\d{8}", d):
            out["study_date"] = f"{d[:4]}-{d[4:6]}-{d[6:]}"
        return out
    return {}


@asynccontextmanager
async def removed_on_error(ctx: ServiceContext, study_id: str, what: str, logger: logging.Logger) -> AsyncIterator[None]:
    """While a new study's files are being received (an upload, a PACS fetch): on any error its
    folder is deleted, nothing half-stored stays; an UploadRejected is logged to ``logger``
    (``"<what> refused"``) and answered with its status and message."""
    try:
        yield
    except UploadRejected as exc:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        logger.info("%s refused (%s): %s", what, exc.status, exc.message)
        raise HTTPException(exc.status, exc.message) from None
    except BaseException:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        raise


def add_study(db: Session, study_id: str, user: User, name: str, stored: Any, request: Request, action: str, detail: str) -> Study:
    """The database row of a new study of ``user`` from what Storage.accept stored under ``study_id``
    (``stored``: kind, path, size, info), flushed and audited as ``action`` with ``detail``; not committed."""
    study = Study(id=study_id, owner_id=user.id, name=name[:255], kind=stored.kind, input_path=stored.path,
                  size_bytes=stored.size_bytes, info_json=json.dumps(stored.info))
    db.add(study)
    db.flush()
    db.refresh(study)
    audit.record(db, action, actor=user.username, study=study, address=audit.client_address(request), detail=detail)
    return study


def _result_job(ctx: ServiceContext, study: Study, job_id: str | None) -> Job:
    if job_id:
        job = next((j for j in study.jobs if j.id == job_id), None)
        if job is None:
            raise HTTPException(404, "no such job for this study")
        if job.state != "done":
            raise HTTPException(409, f"the job is {job.state}, not done")
        return job
    job = current_job(ctx, study)
    if job is None:
        raise HTTPException(404, "no results yet: start a contouring job and wait until it is done")
    return job


# ---- studies ---------------------------------------------------------------------------------

@router.get("/api/studies", response_model=list[StudyOut])
def list_studies(all: bool = Query(False, description="administrators: every user's studies"),
                 user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> list[StudyOut]:
    """Your studies, newest first (administrators: ``?all=true`` for everyone's)."""
    q = select(Study).order_by(Study.created_at.desc())
    if not (user.is_admin and all):
        q = q.where(Study.owner_id == user.id)
    return [study_out(ctx, s, user) for s in db.scalars(q)]


@router.get("/api/studies/{study_id}", response_model=StudyDetail)
def get_study(study_id: str, job: str | None = Query(None, description="open an earlier version: a done job's id (default: the current version)"),
              user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> StudyDetail:
    study = visible_study(study_id, user, db)
    base = study_out(ctx, study, user)
    done = _result_job(ctx, study, job) if job else current_job(ctx, study)
    version, set_version, checks = 0, 0, []
    if done is not None:
        edit_state = review.read_state(ctx.storage.study_dir(study.id), done.id)
        version, set_version = int(edit_state.get("version", 0)), review.set_version(edit_state)
        try:
            checks = [c for c in json.loads((current_results(ctx, study, done) / "summary.json").read_text()).get("checks", []) if isinstance(c, dict)]
        except (OSError, ValueError):
            checks = []
    geometry = None
    if study.kind == "dicom":
        from delineo.service.dicom_view import geometry as dicom_geometry

        try:
            geometry = dicom_geometry(ctx.storage.input_path(study.id, study.input_path), ctx.storage.study_dir(study.id) / "view" / "geometry.json")
        except Exception:  # noqa: BLE001 - the viewer falls back to RAS millimetres and slice numbers
            log.exception("reading the DICOM geometry of study %s failed", study.id)
    return StudyDetail(**base.model_dump(), jobs=[job_out(j) for j in study.jobs],
                       structures=structures_of(ctx, study, done), result_job=done.id if done else None,
                       edit_version=version, set_version=set_version, checks=checks, dicom_geometry=geometry)


@router.delete("/api/studies/{study_id}", status_code=204)
def delete_study(study_id: str, request: Request, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> Response:
    """Delete a study, its jobs and all its files (a running job's output is discarded)."""
    study = visible_study(study_id, user, db)
    audit.record(db, "delete", actor=user.username, study=study, address=audit.client_address(request))
    db.delete(study)
    db.flush()
    db.commit()
    ctx.storage.delete_study(study_id)
    return Response(status_code=204)
