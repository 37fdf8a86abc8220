"""Corrections and reviews of a result's structures, and reference contours to compare it with."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import Job, Study, User
from delineo.service.routes.deps import current_user, get_ctx, get_db, visible_study
from delineo.service.routes.studies import _result_job, current_job, current_results
from delineo.service.routes.upload import receive_files
from delineo.service.routes.viewer import NIFTI_HEADERS
from delineo.service.schemas import ReferenceOut, ReviewIn, ReviewOut
from delineo.service import reference, review
from delineo.service.storage import UploadRejected

log = logging.getLogger("delineo.service.upload")

router = APIRouter(tags=["studies"])


# ---- corrections and reviews -----------------------------------------------------------------

def _review_args(ctx: ServiceContext, study: Study, j: Job) -> dict:
    dicom = ctx.storage.input_path(study.id, study.input_path) if study.kind == "dicom" else None
    return {"dicom_input": dicom, "model": j.model}


@router.put("/api/studies/{study_id}/masks/{filename}", response_model=ReviewOut,
            openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                                           "required": True, "description": "the corrected mask: a NIfTI (.nii or .nii.gz) on the CT's grid"}})
async def put_mask(study_id: str, filename: str, request: Request, job: str | None = Query(None),
                   user: User = Depends(current_user), ctx: ServiceContext = Depends(get_ctx)) -> ReviewOut:
    """Store a corrected mask of one structure (from the viewer's brush, eraser, interpolation)
    as a new version of the result; the model's original is kept (``?original=true``). The RT
    Structure Set, SEG, NIfTI and summary downloads then carry it."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > ctx.settings.max_upload_bytes:
        raise HTTPException(413, f"{filename[:120]}: the mask is larger than the {ctx.settings.max_upload_mb:.0f} MB an upload may be")
    name = filename[: -len(".nii.gz")] if filename.endswith(".nii.gz") else filename[: -len(".nii")] if filename.endswith(".nii") else filename

    def grid() -> tuple[int, ...]:
        """The structure's grid, from its header (no data read), before the body is."""
        import nibabel as nib

        with ctx.db.session() as db:
            study = visible_study(study_id, user, db)
            current = current_results(ctx, study, _result_job(ctx, study, job)) / "segmentations" / f"{name}.nii.gz"
            if PurePosixPath(name).name != name or not current.is_file():
                raise HTTPException(404, f"no structure {name!r} in this study's results")
            return tuple(nib.load(str(current)).shape)

    from delineo.service.nifti_limits import NiftiRefused, receive_mask

    shape = await run_in_threadpool(grid)
    try:  # streamed: the header checked against the grid first, the decompressed size bounded by it
        data = await receive_mask(request.stream(), shape, max_compressed=ctx.settings.max_upload_bytes, idle_s=ctx.settings.upload_idle_s)
    except NiftiRefused as exc:
        log.info("mask upload refused (%s): %s", exc.status, exc.message)
        raise HTTPException(exc.status, f"{filename[:120]}: {exc.message}") from None
    except ClientDisconnect:
        raise HTTPException(400, "the upload was interrupted") from None

    def work() -> ReviewOut:
        with ctx.db.session() as db:
            study = visible_study(study_id, user, db)
            j = _result_job(ctx, study, job)
            current = current_results(ctx, study, j) / "segmentations" / f"{name}.nii.gz"
            if PurePosixPath(name).name != name or not current.is_file():
                raise HTTPException(404, f"no structure {name!r} in this study's results")
            try:
                mask = review.read_mask_upload(data, current)
            except ValueError as exc:
                raise HTTPException(422, f"{name}: {exc}") from None
            try:
                state = review.save_mask(ctx.storage.study_dir(study.id), ctx.storage.results_dir(study.id, j.id), j.id, name, mask,
                                         user=user.username, **_review_args(ctx, study, j))
            except Exception as exc:  # noqa: BLE001 - e.g. the DICOM writer refusing the masks
                log.exception("saving an edit of %s failed", name)
                raise HTTPException(422, f"{name}: the edit could not be saved ({exc.__class__.__name__}: {exc})") from None
            audit.record(db, "edit", actor=user.username, study=study, address=audit.client_address(request),
                         detail=f"{name}: {int(mask.sum())} voxels, version {state['version']}, job {j.id}")
            db.commit()
            return ReviewOut(version=state["version"], set_version=review.set_version(state), reviews=state["reviews"], edited=state["edited"])

    return await run_in_threadpool(work)


@router.put("/api/studies/{study_id}/reviews/{structure}", response_model=ReviewOut)
def put_review(study_id: str, structure: str, body: ReviewIn, request: Request, job: str | None = Query(None),
               user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> ReviewOut:
    """Mark a structure ``approved`` or ``needs_work`` (``null`` clears it); the user and time are
    stored, go into the RT Structure Set (ROI observation and description; the set is APPROVED
    once every structure is) and into the access log."""
    study = visible_study(study_id, user, db)
    j = _result_job(ctx, study, job)
    if not (current_results(ctx, study, j) / "segmentations" / f"{structure}.nii.gz").is_file() or PurePosixPath(structure).name != structure:
        raise HTTPException(404, f"no structure {structure!r} in this study's results")
    try:
        state = review.set_review(ctx.storage.study_dir(study.id), ctx.storage.results_dir(study.id, j.id), j.id, structure, body.state,
                                  user=user.username, note=body.note or "", **_review_args(ctx, study, j))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    audit.record(db, "review", actor=user.username, study=study, address=audit.client_address(request),
                 detail=f"{structure}: {body.state or 'cleared'}, version {state['version']}, job {j.id}")
    db.commit()
    return ReviewOut(version=state["version"], set_version=review.set_version(state), reviews=state["reviews"], edited=state["edited"])


# ---- reference contours ----------------------------------------------------------------------

def _reference_out(ctx: ServiceContext, study: Study) -> ReferenceOut:
    sd = ctx.storage.study_dir(study.id)
    meta = reference.info(sd)
    if meta is None:
        return ReferenceOut(present=False)
    job = current_job(ctx, study)
    rows: list[dict[str, Any]] = []
    if job is not None:
        version = int(review.read_state(sd, job.id).get("version", 0))
        rows = reference.compare(sd, current_results(ctx, study, job), f"{job.id}-{version}")
    return ReferenceOut(present=True, source=meta.get("source"), user=meta.get("user"), at=meta.get("at"),
                        structures=reference.structure_names(sd), metrics=rows, job=job.id if job else None)


@router.post("/api/studies/{study_id}/reference", response_model=ReferenceOut, status_code=201,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                                            "description": "an RT Structure Set (.dcm), NIfTI masks named by structure, or a zip"}},
                 "required": ["files"]}}}, "required": True}})
async def upload_reference(study_id: str, request: Request, user: User = Depends(current_user), ctx: ServiceContext = Depends(get_ctx)) -> ReferenceOut:
    """Upload reference contours for a study (a clinician's RT Structure Set for a DICOM study, or
    NIfTI masks on the CT's grid, one per structure); replaces an earlier reference. The answer
    holds Dice, HD95 and surface Dice of the study's result against it."""
    s = ctx.settings
    with ctx.db.session() as db:
        study = visible_study(study_id, user, db)
        job = current_job(ctx, study)
        grid = None
        if job is not None:
            grid = next(iter(sorted((current_results(ctx, study, job) / "segmentations").glob("*.nii.gz"))), None)
        dicom = ctx.storage.input_path(study.id, study.input_path) if study.kind == "dicom" else None
    upload_dir = await run_in_threadpool(ctx.storage.new_upload_dir)
    try:
        files, _ = await receive_files(request, upload_dir, s.max_upload_bytes, s.max_files, s.upload_idle_s)
        if not files:
            raise HTTPException(400, "no file was uploaded")
        await run_in_threadpool(lambda: reference.store(ctx.storage.study_dir(study_id), files, grid_mask=grid, dicom_input=dicom, user=user.username))
    except UploadRejected as exc:
        raise HTTPException(exc.status, exc.message) from None
    except reference.ReferenceError_ as exc:
        raise HTTPException(422, str(exc)) from None
    finally:
        await run_in_threadpool(ctx.storage.discard, upload_dir)

    def answer() -> ReferenceOut:
        with ctx.db.session() as db:
            study = visible_study(study_id, user, db)
            audit.record(db, "reference", actor=user.username, study=study, address=audit.client_address(request),
                         detail=f"{len(reference.structure_names(ctx.storage.study_dir(study.id)))} structures")
            db.commit()
            return _reference_out(ctx, study)

    return await run_in_threadpool(answer)


@router.get("/api/studies/{study_id}/reference", response_model=ReferenceOut)
def get_reference(study_id: str, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"),
                  ctx: ServiceContext = Depends(get_ctx)) -> ReferenceOut:
    """The study's reference contours and their agreement with the current result (Dice, HD95 in
    mm, surface Dice at 2 mm), per structure; matched by name (case, spaces, '_' and '-' ignored)."""
    return _reference_out(ctx, visible_study(study_id, user, db))


@router.delete("/api/studies/{study_id}/reference", status_code=204)
def delete_reference(study_id: str, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"),
                     ctx: ServiceContext = Depends(get_ctx)) -> Response:
    study = visible_study(study_id, user, db)
    import shutil

    shutil.rmtree(reference.ref_dir(ctx.storage.study_dir(study.id)), ignore_errors=True)
    return Response(status_code=204)


@router.get("/api/studies/{study_id}/reference/masks/{filename}", responses={200: {"content": {"application/gzip": {}}}})
def get_reference_mask(study_id: str, filename: str, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"),
                       ctx: ServiceContext = Depends(get_ctx)) -> Response:
    """One reference structure as NIfTI for the viewer."""
    study = visible_study(study_id, user, db)
    name = filename[: -len(".nii.gz")] if filename.endswith(".nii.gz") else filename
    path = reference.ref_dir(ctx.storage.study_dir(study.id)) / "segmentations" / f"{name}.nii.gz"
    if PurePosixPath(name).name != name or not path.is_file():
        raise HTTPException(404, f"no reference structure {name!r}")
    return FileResponse(path, media_type="application/gzip", headers=NIFTI_HEADERS)
