"""Result downloads: RT Structure Set, SEG, NIfTI masks, overview PNG, summary."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import Study, User
from delineo.service.routes.deps import current_user, get_ctx, get_db, visible_study
from delineo.service.routes.studies import RESULT_FILES, RESULT_KINDS, _result_job, current_results
from delineo.service import review

router = APIRouter(tags=["studies"])


def _download_name(study: Study, suffix: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", study.name).strip("._") or "study"
    return f"{base}_{suffix}"


@router.get("/api/studies/{study_id}/results/{kind}",
            responses={200: {"content": {"application/dicom": {}, "application/zip": {}, "image/png": {}, "application/json": {}}}})
def get_result(study_id: str, kind: str, request: Request, job: str | None = Query(None, description="a job id (default: the latest done job)"),
               original: bool = Query(False, description="the model's result, without the corrections and reviews made since"),
               user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> Response:
    """Download a result: ``rtstruct`` (RT Structure Set), ``seg`` (DICOM SEG), ``nifti`` (zip of
    masks), ``overview`` (PNG), ``summary`` (JSON with volumes). After corrections or reviews in the
    viewer these are the edited version (``?original=true``: the model's)."""
    if kind not in RESULT_KINDS:
        raise HTTPException(404, f"unknown result kind {kind!r} (one of {', '.join(RESULT_KINDS)})")
    study = visible_study(study_id, user, db)
    j = _result_job(ctx, study, job)
    audit.record(db, "download", actor=user.username, study=study, address=audit.client_address(request), detail=f"{kind}, job {j.id}")
    out = ctx.storage.results_dir(study.id, j.id)
    out = current_results(ctx, study, j, original)
    if kind == "nifti":
        if not any((out / "segmentations").glob("*.nii.gz")):
            raise HTTPException(404, "this job wrote no masks")
        return Response(ctx.nifti_zip(out), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{_download_name(study, "masks.zip")}"'})
    fname, media = RESULT_FILES[kind]
    path = out / fname
    if not path.is_file():
        why = " (DICOM results are written for DICOM uploads)" if kind in ("rtstruct", "seg") and study.kind != "dicom" else ""
        raise HTTPException(404, f"no {kind} result for this study{why}")
    if kind in ("rtstruct", "seg") and not original:  # delivered: the next change opens a new set version
        review.mark_delivered(ctx.storage.study_dir(study.id), j.id)
    if kind == "summary":  # without the server's paths (relative names only)
        from delineo.service.public import public_summary_bytes

        return Response(public_summary_bytes(path, ctx.settings.home), media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="{_download_name(study, fname)}"'})
    return FileResponse(path, media_type=media, filename=_download_name(study, fname))
