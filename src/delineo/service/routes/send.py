"""Sending a study's contours to a planning system or PACS, and the destinations to send to."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from sqlalchemy.orm import Session

from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import User
from delineo.service.routes.deps import admin_user, current_user, get_ctx, get_db, visible_study
from delineo.service.routes.studies import _result_job, current_results
from delineo.service.schemas import DestinationIn, DestinationOut, SendIn, SendOut
from delineo.service import review, send

router = APIRouter(tags=["studies"])


@router.get("/api/send/destinations", response_model=list[DestinationOut], tags=["send"])
def list_destinations(user: User = Depends(current_user), ctx: ServiceContext = Depends(get_ctx)) -> list[DestinationOut]:
    """Where contours can be sent (planning systems, PACS): set by an administrator
    (``DELINEO_SEND_DESTINATIONS`` or ``PUT /api/send/destinations/{name}``)."""
    return [DestinationOut(name=n, target=f"{d['ae']}@{d['host']}:{d['port']}" if user.is_admin else d["ae"], source=d["source"])
            for n, d in sorted(send.destinations(ctx.settings.home).items())]  # host and port: administrators only


def _send_out(rec: dict, user: User) -> SendOut:
    """A send as the API shows it: the destination's host and port only to administrators."""
    if user.is_admin:
        return SendOut(**rec)
    ae, _, where = str(rec.get("target") or "").partition("@")
    error = rec.get("error")
    if error and where:
        error = error.replace("@" + where, "").replace(where, "the destination")
    return SendOut(**{**rec, "target": ae, "error": error})


@router.put("/api/send/destinations/{name}", response_model=list[DestinationOut], tags=["send"])
def put_destination(name: str, body: DestinationIn, request: Request, user: User = Depends(admin_user), ctx: ServiceContext = Depends(get_ctx)) -> list[DestinationOut]:
    """Administrators: add or change a destination (``AE@HOST:PORT``)."""
    try:
        send.save_destination(ctx.settings.home, name, body.address)
    except Exception as exc:  # noqa: BLE001 - ValueError, ConfigError
        raise HTTPException(422, str(exc)) from None
    audit.record_now(ctx.db, "destination-set", actor=user.username, address=audit.client_address(request),
                     detail=f"send destination {name[:64]!r} = {body.address[:128]}")
    return list_destinations(user, ctx)


@router.delete("/api/send/destinations/{name}", status_code=204, tags=["send"])
def delete_destination(name: str, request: Request, user: User = Depends(admin_user), ctx: ServiceContext = Depends(get_ctx)) -> Response:
    try:
        send.save_destination(ctx.settings.home, name, None)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    audit.record_now(ctx.db, "destination-delete", actor=user.username, address=audit.client_address(request),
                     detail=f"send destination {name[:64]!r} removed")
    return Response(status_code=204)


@router.post("/api/studies/{study_id}/send", response_model=SendOut, status_code=202, tags=["send"])
def send_study(study_id: str, body: SendIn, request: Request, job: str | None = Query(None), user: User = Depends(current_user),
               db: Session = Depends(get_db, scope="function"), ctx: ServiceContext = Depends(get_ctx)) -> SendOut:
    """Send the study's RT Structure Set (and SEG) as it is now (corrections and reviews
    included) to a destination by DICOM C-STORE; poll ``GET .../sends`` for its state."""
    study = visible_study(study_id, user, db)
    j = _result_job(ctx, study, job)
    out = current_results(ctx, study, j)
    files = [out / f for f in ("rtstruct.dcm", "seg.dcm") if (out / f).is_file() and (f == "rtstruct.dcm" or body.seg)]
    if not (out / "rtstruct.dcm").is_file():
        raise HTTPException(409, "this study has no RT Structure Set to send (it is made for DICOM uploads)")
    version = review.mark_delivered(ctx.storage.study_dir(study.id), j.id)  # the structure set's version sent
    home, db_ = ctx.settings.home, ctx.db
    pid = study.info.get("patient_id")

    def on_done(rec: dict) -> None:
        audit.record_now(db_, "forward", actor=rec["user"], study_id=rec["study"], patient=audit.patient_pseudonym(pid),
                         detail=f"{rec['state']} to {rec['destination']} ({rec['target']}), job {rec['job']} version {rec['version']}"
                         + (f": {rec['error']}" if rec.get("error") else ""))

    try:
        rec = send.start(home, study_id=study.id, job_id=j.id, version=version, destination=body.destination, files=files,
                         user=user.username, on_done=on_done)
    except KeyError:
        raise HTTPException(404, f"no destination {body.destination!r} (an administrator sets them up)") from None
    audit.record(db, "forward", actor=user.username, study=study, address=audit.client_address(request),
                 detail=f"queued to {body.destination}, job {j.id} version {version}")
    db.commit()
    return _send_out(rec, user)


@router.get("/api/studies/{study_id}/sends", response_model=list[SendOut], tags=["send"])
def list_sends(study_id: str, user: User = Depends(current_user), db: Session = Depends(get_db, scope="function"),
               ctx: ServiceContext = Depends(get_ctx)) -> list[SendOut]:
    """The study's sends, newest first: queued, sending, retrying, sent or failed (with the reason)."""
    study = visible_study(study_id, user, db)
    return [_send_out(r, user) for r in send.sends_for(ctx.settings.home, study.id)]
