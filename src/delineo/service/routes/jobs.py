"""Contouring jobs on a study and the versions their results are kept as."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, HTTPException, Request
from sqlalchemy.orm import Session

from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import Job, User
from delineo.service.routes.deps import current_user, get_ctx, get_db, visible_study
from delineo.service.routes.models import model_info, pick_model
from delineo.service.routes.studies import current_job, job_out
from delineo.service.schemas import JobIn, JobOut, VersionOut
from delineo.service import versions

router = APIRouter(tags=["studies"])


# ---- jobs ------------------------------------------------------------------------------------

@router.post("/api/studies/{study_id}/jobs", response_model=JobOut, status_code=202)
def start_job(study_id: str, body: JobIn, request: Request, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> JobOut:
    """Queue a contouring job on the study with a model (``GET /api/models``) and optionally a subset of its structures."""
    study = visible_study(study_id, user, db)
    if any(j.state in ("queued", "running") for j in study.jobs):
        raise HTTPException(409, "this study is already being contoured; wait for the job to finish")
    dims = int(study.info.get("dims", 3))
    name = pick_model(body.model, dims)
    info = model_info(name)
    if body.structures:
        unknown = [s for s in body.structures if s not in info["structures"]]
        if unknown:
            raise HTTPException(422, f"model {name} has no structure {', '.join(unknown)} (it has {', '.join(info['structures'])})")
    structures = body.structures if body.structures and set(body.structures) != set(info["structures"]) else None
    current = current_job(ctx, study)
    work = versions.replaced_work(ctx.storage.study_dir(study.id), current, name, structures, info["structures"])
    if work and not body.confirm_replace:
        listed = ", ".join(f"{n} ({w})" for n, w in work.items())
        raise HTTPException(409, f"this would replace structures that were corrected or reviewed: {listed}. "
                                 "Send confirm_replace: true to contour them again (the current version is kept and can be restored).")
    job = Job(study_id=study.id, model=name, structures_json=json.dumps(structures))
    db.add(job)
    db.flush()
    audit.record(db, "contour", actor=user.username, study=study, address=audit.client_address(request), detail=f"model {name}, job {job.id}")
    db.commit()
    ctx.queue.enqueue(job.id)
    return job_out(job)


@router.get("/api/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function")) -> JobOut:
    """A job's state (queued | running | done | failed), current stage and progress (0..1)."""
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(404, "no such job")
    visible_study(job.study_id, user, db)
    return job_out(job)


# ---- versions --------------------------------------------------------------------------------

@router.get("/api/studies/{study_id}/versions", response_model=list[VersionOut])
def list_versions(study_id: str, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"),
                  ctx: ServiceContext = Depends(get_ctx)) -> list[VersionOut]:
    """Every finished job's result, kept as a version (newest first), with its approvals and
    corrections; ``current`` marks the one the viewer and the downloads show. Open one with
    ``GET /api/studies/{id}?job=<job>`` (masks and results take ``?job=`` too)."""
    study = visible_study(study_id, user, db)
    return [VersionOut(**v) for v in versions.listing(ctx.storage.study_dir(study.id), study.jobs)]


@router.post("/api/studies/{study_id}/versions/{job_id}/restore", response_model=list[VersionOut])
def restore_version(study_id: str, job_id: str, request: Request, user: User = Depends(current_user),
                    db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> list[VersionOut]:
    """Make an earlier version current again (with its own corrections and reviews); nothing is
    deleted, and a job finishing later becomes current as usual."""
    study = visible_study(study_id, user, db)
    if any(j.state in ("queued", "running") for j in study.jobs):
        raise HTTPException(409, "this study is being contoured; restore a version when the job is done")
    try:
        versions.restore(ctx.storage.study_dir(study.id), study.jobs, job_id, user=user.username)
    except KeyError:
        raise HTTPException(404, "no finished job with this id in this study") from None
    audit.record(db, "restore", actor=user.username, study=study, address=audit.client_address(request), detail=f"job {job_id}")
    db.commit()
    return [VersionOut(**v) for v in versions.listing(ctx.storage.study_dir(study.id), study.jobs)]
