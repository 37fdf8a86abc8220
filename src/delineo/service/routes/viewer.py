"""Viewer volumes: the study's image and its structures' masks as NIfTI."""

from __future__ import annotations

import gzip
from pathlib import PurePosixPath

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import User
from delineo.service.routes.deps import current_user, get_ctx, get_db, visible_study
from delineo.service.routes.studies import _result_job, current_job, current_results

router = APIRouter(tags=["studies"])


def _display_affine_2d(affine: np.ndarray) -> np.ndarray:
    """A 2D (rows, columns) image shown upright in an axial view: columns -> +x, rows -> -y."""
    sr = float(np.linalg.norm(affine[:3, 0])) or 1.0
    sc = float(np.linalg.norm(affine[:3, 1])) or 1.0
    out = np.zeros((4, 4))
    out[0, 1], out[1, 0], out[2, 2], out[3, 3] = sc, -sr, 1.0, 1.0
    return out


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    return gzip.compress(img.to_bytes(), compresslevel=1)


NIFTI_HEADERS = {"Cache-Control": "private, max-age=60"}
VOLUME_NAMES = ("ct.nii.gz", "ct.nii")


@router.get("/api/studies/{study_id}/volume/{filename}", responses={200: {"content": {"application/gzip": {}}}})
def get_volume(study_id: str, filename: str, request: Request, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> Response:
    """The study's image as NIfTI for the viewer (``.../volume/ct.nii.gz``; ``ct.nii`` is the same
    volume). Any other name is refused with 404: a study has no other volume."""
    if filename not in VOLUME_NAMES:
        raise HTTPException(404, f"no volume {filename[:80]!r}: a study's image is served as {VOLUME_NAMES[0]}")
    study = visible_study(study_id, user, db)
    audit.record(db, "view", actor=user.username, study=study, address=audit.client_address(request))
    db.commit()
    src = ctx.storage.input_path(study.id, study.input_path)
    if study.kind == "nifti":
        media = "application/gzip" if src.name.endswith(".gz") else "application/octet-stream"
        return FileResponse(src, media_type=media, headers=NIFTI_HEADERS)
    if study.kind == "dicom":
        try:
            path = ctx.viewer_volume_dicom(study.id, src)
        except Exception as exc:
            raise HTTPException(422, f"the DICOM series could not be converted for viewing ({exc})") from None
        return FileResponse(path, media_type="application/gzip", headers=NIFTI_HEADERS)
    # PNG X-ray: grey values as a one-slice volume on the grid its masks use
    from delineo.data.io import read_image

    image = read_image(src)
    affine = np.eye(4)
    job = current_job(ctx, study)
    if job is not None:
        masks = sorted((ctx.storage.results_dir(study.id, job.id) / "segmentations").glob("*.nii.gz"))
        if masks:
            import nibabel as nib

            affine = nib.load(str(masks[0])).affine
    array = np.asarray(image.array, dtype=np.float32)
    return Response(_nifti_bytes(array, _display_affine_2d(affine)), media_type="application/gzip", headers=NIFTI_HEADERS)


@router.get("/api/studies/{study_id}/masks/{filename}", responses={200: {"content": {"application/gzip": {}}}})
def get_mask(study_id: str, filename: str, job: str | None = Query(None), original: bool = Query(False),
             user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> Response:
    """One structure's mask as NIfTI for the viewer (``.../masks/<structure>.nii.gz``; the edited
    version when there is one, ``?original=true`` for the model's)."""
    study = visible_study(study_id, user, db)
    j = _result_job(ctx, study, job)
    name = filename[: -len(".nii.gz")] if filename.endswith(".nii.gz") else filename
    seg = current_results(ctx, study, j, original) / "segmentations"
    path = seg / f"{name}.nii.gz"
    if PurePosixPath(name).name != name or not path.is_file():
        raise HTTPException(404, f"no mask {name!r} in this study's results")
    if study.kind == "png":
        import nibabel as nib

        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj).astype(np.uint8)
        return Response(_nifti_bytes(array, _display_affine_2d(img.affine)), media_type="application/gzip", headers=NIFTI_HEADERS)
    return FileResponse(path, media_type="application/gzip", headers=NIFTI_HEADERS)
