"""A PACS from the web page (issue 38, item 3): an administrator configures DICOMweb servers (URL
and authentication: none, HTTP basic or a bearer token; the password or token stays on the server
and is never sent back), and users search them by Patient ID or Study Date (QIDO-RS), contour a
CT series from one (WADO-RS into a new study, then the usual contouring job) and store a study's
results back in its study on the PACS (STOW-RS). The DICOMweb client is
:class:`delineo.dicom.dicomweb.Pacs`, the one ``delineo contour --dicomweb`` uses.

A fetched series goes through the same checks and the same study creation as an upload
(:meth:`delineo.service.storage.Storage.accept`), and the job through the same route
(:func:`delineo.service.routes.jobs.start_job`), so nothing here contours anything itself.
Every search, fetch and store is in the access log (patients as pseudonyms).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from delineo.dicom.dicomweb import DicomwebAuth, Pacs
from delineo.errors import DelineoError
from delineo.service import audit, review
from delineo.service.core import ServiceContext
from delineo.service.models import PacsServer, Study, User, new_id, utcnow
from delineo.service.routes.deps import admin_user, current_user, get_ctx, get_db, visible_study
from delineo.service.routes.models import pick_model
from delineo.service.routes.jobs import start_job
from delineo.service.routes.studies import _dicom_dates, _result_job, current_results, add_study, removed_on_error, study_out
from delineo.service.schemas import JobIn, JobOut, StudyOut
from delineo.service.storage import UploadRejected

log = logging.getLogger("delineo.service.pacs")

router = APIRouter(tags=["pacs"])

_NAME = re.compile(r"^[A-Za-z0-9 ._-]{1,64}$")
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
#: messages of :class:`~delineo.dicom.dicomweb.Pacs` that mean the server (not the request) failed
_SERVER_FAILED = ("cannot reach", "refused the credentials", "TLS failed", "HTTP ")
#: studies a search returns at most (each costs one more QIDO-RS request for its series)
MAX_STUDIES = 50


# ---- bodies ----------------------------------------------------------------------------------

class PacsIn(BaseModel):
    url: str = Field(description="the DICOMweb base URL, e.g. http://pacs:8042/dicom-web")
    auth: Literal["none", "basic", "bearer"] = Field("none", description="none | basic (username, password) | bearer (token)")
    username: str | None = Field(None, description="basic: the user name")
    password: str | None = Field(None, description="basic: the password (left out: the stored one is kept)")
    token: str | None = Field(None, description="bearer: the token (left out: the stored one is kept)")
    ca_bundle: str | None = Field(None, description="HTTPS: a PEM file on the server with the CAs of the PACS's certificate")
    client_cert: str | None = Field(None, description="HTTPS with client certificates: a PEM file on the server")
    client_key: str | None = Field(None, description="the client certificate's key (a PEM file on the server)")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="bound on each request to the PACS (seconds)")


class PacsOut(BaseModel):
    name: str
    url: str | None = Field(None, description="administrators only")
    auth: str | None = Field(None, description="none | basic | bearer (administrators only)")
    username: str | None = Field(None, description="administrators only")
    has_secret: bool | None = Field(None, description="a password or token is stored (administrators only; it is never sent)")
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout_s: float | None = None
    updated_at: str | None = None
    updated_by: str | None = None


class SeriesOut(BaseModel):
    series_uid: str
    modality: str | None = None
    instances: int | None = None
    description: str | None = None


class PacsStudyOut(BaseModel):
    study_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    description: str | None = None
    series: list[SeriesOut] = []


class PacsContourIn(JobIn):
    study_uid: str = Field(description="the Study Instance UID on the PACS (from a search)")
    series_uid: str | None = Field(None, description="the CT series (default: the study's only CT series)")
    name: str | None = Field(None, description="the new study's name (default: the series description)")


class PacsContourOut(BaseModel):
    study: StudyOut
    job: JobOut
    instances: int


class PacsStoreIn(BaseModel):
    pacs: str = Field(description="the PACS's name (GET /api/pacs)")
    seg: bool = Field(True, description="also store the DICOM SEG")


class PacsStoreOut(BaseModel):
    pacs: str
    study_uid: str
    stored: list[str] = Field(description="SOP Instance UIDs stored")
    files: list[str]


# ---- helpers ---------------------------------------------------------------------------------

def _out(row: PacsServer, user: User) -> PacsOut:
    if not user.is_admin:
        return PacsOut(name=row.name)
    return PacsOut(name=row.name, url=row.url, auth=row.auth, username=row.username, has_secret=bool(row.secret),
                   ca_bundle=row.ca_bundle, client_cert=row.client_cert, client_key=row.client_key, timeout_s=row.timeout_s,
                   updated_at=row.updated_at.isoformat() if row.updated_at else None, updated_by=row.updated_by)


def _row(db: Session, name: str) -> PacsServer:
    row = db.get(PacsServer, name)
    if row is None:
        raise HTTPException(404, f"no PACS {name[:64]!r} (an administrator sets them up)")
    return row


def _client(row: PacsServer) -> Pacs:
    """The DICOMweb client of a configured PACS (its secret read here, on the server)."""
    kw: dict[str, Any] = {"timeout_s": float(row.timeout_s or 120.0), "ca_bundle": row.ca_bundle or None,
                          "client_cert": row.client_cert or None, "client_key": row.client_key or None}
    if row.auth == "basic":
        kw.update(username=row.username, password=row.secret or "")
    elif row.auth == "bearer":
        kw.update(token=row.secret)
    return Pacs(row.url, DicomwebAuth(**kw))


def _pacs_error(exc: DelineoError, row_name: str, url: str, user: User) -> HTTPException:
    """A DICOMweb failure as an answer: 502 when the PACS failed (unreachable, credentials refused,
    an HTTP error), else 422 (no such study, not a CT, several CT series); the URL only to administrators."""
    message = str(exc)
    if not user.is_admin:
        message = message.replace(url.rstrip("/"), f"PACS {row_name!r}")
    status = 502 if any(m in message for m in _SERVER_FAILED) else 422
    return HTTPException(status, message)


def study_date_filter(text: str | None) -> str | None:
    """``YYYYMMDD`` or ``YYYY-MM-DD``, or a range of two (``A-B``, ``A..B``, ``A to B``) as QIDO-RS
    wants it (``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD``); 422 for anything else."""
    if not text or not text.strip():
        return None
    t = text.strip()
    dates = [m.group(1) + m.group(2) + m.group(3) for m in _DATE.finditer(t)]
    rest = _DATE.sub("", t).strip().lower()
    if len(dates) == 1 and not rest:
        return dates[0]
    if len(dates) == 2 and rest in ("-", "..", "to", "–"):
        return f"{dates[0]}-{dates[1]}"
    raise HTTPException(422, f"study date {t[:40]!r}: give YYYY-MM-DD (or YYYYMMDD), or a range YYYYMMDD-YYYYMMDD")


def _uid(text: str, what: str) -> str:
    if not re.fullmatch(r"[0-9.]{1,64}", text or ""):
        raise HTTPException(422, f"{what} {str(text)[:70]!r} is not a DICOM UID (digits and dots, at most 64)")
    return text


# ---- configuration (administrators) ------------------------------------------------------------

@router.get("/api/pacs", response_model=list[PacsOut])
def list_pacs(user: User = Depends(current_user), db: Session = Depends(get_db, scope="function")) -> list[PacsOut]:
    """The configured PACS: every user sees their names; administrators also the URL and the
    authentication (never the password or token: ``has_secret`` says one is stored)."""
    return [_out(r, user) for r in db.scalars(select(PacsServer).order_by(PacsServer.name))]


@router.put("/api/pacs/{name}", response_model=PacsOut)
def put_pacs(name: str, body: PacsIn, request: Request, user: User = Depends(admin_user),
             db: Session = Depends(get_db, scope="function")) -> PacsOut:
    """Administrators: add or change a PACS. A password or token left out keeps the stored one
    (so the URL can be changed without typing it again); switching the kind of authentication
    needs the new secret."""
    if not _NAME.match(name or ""):
        raise HTTPException(422, "a PACS name has 1-64 letters, digits, spaces, '.', '_' or '-'")
    url = body.url.strip()
    if not re.match(r"^https?://[^\s/]+", url) or len(url) > 1024:
        raise HTTPException(422, f"{url[:80]!r}: a DICOMweb URL starts with http:// or https:// (e.g. http://pacs:8042/dicom-web)")
    row = db.get(PacsServer, name)
    old_secret = row.secret if row is not None and row.auth == body.auth else None
    username, secret = None, None
    if body.auth == "basic":
        username = (body.username or "").strip()
        if not username:
            raise HTTPException(422, "basic authentication needs a user name")
        secret = body.password if body.password else old_secret if row is not None and row.username == username else None
        if not secret:
            raise HTTPException(422, "basic authentication needs a password")
    elif body.auth == "bearer":
        secret = body.token.strip() if body.token and body.token.strip() else old_secret
        if not secret:
            raise HTTPException(422, "bearer authentication needs a token")
    files = {k: (getattr(body, k) or "").strip() or None for k in ("ca_bundle", "client_cert", "client_key")}
    try:  # the same checks as the command line's (files exist, a key needs its certificate)
        DicomwebAuth(client_cert=files["client_cert"], client_key=files["client_key"], ca_bundle=files["ca_bundle"])
    except DelineoError as exc:
        raise HTTPException(422, str(exc)) from None
    if row is None:
        row = PacsServer(name=name)
        db.add(row)
    row.url, row.auth, row.username, row.secret = url.rstrip("/"), body.auth, username, secret
    row.ca_bundle, row.client_cert, row.client_key = files["ca_bundle"], files["client_cert"], files["client_key"]
    row.timeout_s, row.updated_at, row.updated_by = body.timeout_s, utcnow(), user.username
    audit.record(db, "pacs-set", actor=user.username, address=audit.client_address(request),
                 detail=f"PACS {name!r} = {url[:120]} ({body.auth})")
    db.flush()
    db.commit()
    return _out(row, user)


@router.delete("/api/pacs/{name}", status_code=204)
def delete_pacs(name: str, request: Request, user: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> Response:
    row = _row(db, name)
    db.delete(row)
    audit.record(db, "pacs-delete", actor=user.username, address=audit.client_address(request), detail=f"PACS {name!r} removed")
    db.commit()
    return Response(status_code=204)


# ---- search ------------------------------------------------------------------------------------

@router.get("/api/pacs/{name}/studies", response_model=list[PacsStudyOut])
def search_pacs(name: str, request: Request,
                patient_id: str | None = Query(None, max_length=64, description="Patient ID (QIDO-RS matching: * and ? are wildcards)"),
                study_date: str | None = Query(None, max_length=40, description="YYYY-MM-DD, YYYYMMDD or a range YYYYMMDD-YYYYMMDD"),
                limit: int = Query(20, ge=1, le=MAX_STUDIES),
                user: User = Depends(current_user), db: Session = Depends(get_db, scope="function")) -> list[PacsStudyOut]:
    """Studies on the PACS matching a Patient ID and/or a Study Date (at least one), each with its
    series (modality, number of images), newest first."""
    row = _row(db, name)
    pid = (patient_id or "").strip() or None
    if pid is not None and ("\\" in pid or not pid.strip("*?")):
        raise HTTPException(422, "give a Patient ID (not only wildcards), or search by study date")
    date = study_date_filter(study_date)
    if pid is None and date is None:
        raise HTTPException(422, "search by Patient ID or by study date (or both)")
    url, row_name = row.url, row.name
    pacs = _client(row)
    db.commit()  # the connection goes back to the pool while the PACS answers
    try:
        studies = pacs.find_studies(patient_id=pid, study_date=date, limit=limit)
        out = [PacsStudyOut(**{k: (str(v) if v is not None else None) for k, v in s.items()},
                            series=[SeriesOut(**x) for x in pacs.series(s["study_uid"])]) for s in studies if s.get("study_uid")]
    except DelineoError as exc:
        raise _pacs_error(exc, row_name, url, user) from None
    out.sort(key=lambda s: s.study_date or "", reverse=True)
    audit.record(db, "pacs-search", actor=user.username, patient=audit.patient_pseudonym(pid) if pid and not any(c in pid for c in "*?") else None,
                 address=audit.client_address(request),
                 detail=f"PACS {row_name!r}: {'patient' if pid else ''}{' and ' if pid and date else ''}{'date ' + date if date else ''}, "
                        f"{len(out)} found")
    db.commit()
    return out


# ---- contour a series from the PACS ------------------------------------------------------------

@router.post("/api/pacs/{name}/contour", response_model=PacsContourOut, status_code=202)
async def contour_from_pacs(name: str, body: PacsContourIn, request: Request, user: User = Depends(current_user),
                            ctx: ServiceContext = Depends(get_ctx)) -> PacsContourOut:
    """Fetch a CT series from the PACS (WADO-RS) into a new study of yours and queue a contouring
    job on it (``model`` and ``structures`` as ``POST /api/studies/{id}/jobs``). Answers once the
    series is fetched and the job queued; poll ``GET /api/jobs/{id}``."""
    study_uid = _uid(body.study_uid, "study")
    series_uid = _uid(body.series_uid, "series") if body.series_uid else None
    model = pick_model(body.model, 3)  # before fetching: an unknown model costs no transfer

    def connect() -> tuple[Pacs, str, str]:
        with ctx.db.session() as db:
            row = _row(db, name)
            return _client(row), row.name, row.url

    pacs, row_name, url = await run_in_threadpool(connect)
    study_id = new_id()
    async with removed_on_error(ctx, study_id, "PACS fetch", log):
        try:
            stored, count = await run_in_threadpool(_fetch_series, ctx, pacs, study_uid, series_uid, study_id, row_name)
        except DelineoError as exc:
            raise _pacs_error(exc, row_name, url, user) from None
    title = (body.name or "").strip()[:255] or stored.info.get("description") or f"PACS {row_name} {stored.info.get('study_date', '')}".strip()

    def save() -> PacsContourOut:
        with ctx.db.session() as db:
            study = add_study(db, study_id, user, title, stored, request, "pacs-fetch",
                              f"from PACS {row_name!r}: series of {count} images, {stored.size_bytes} bytes")
            db.commit()
            job = start_job(study_id, JobIn(model=model, structures=body.structures), request, user, db, ctx)
            db.refresh(study)
            return PacsContourOut(study=study_out(ctx, study, user), job=job, instances=count)

    try:
        return await run_in_threadpool(save)
    except BaseException:
        await run_in_threadpool(_undo_study, ctx, study_id)
        raise


def _fetch_series(ctx: ServiceContext, pacs: Pacs, study_uid: str, series_uid: str | None, study_id: str,
                  row_name: str) -> tuple[Any, int]:
    """The CT series' files fetched from ``pacs`` and stored as an upload is (``Storage.accept``) under
    ``study_id``: ``(stored, number of images)``. UploadRejected when the series is too large or not a CT."""
    s = ctx.settings
    chosen = pacs.find_ct_series(study_uid, series_uid)
    listed = next((x for x in pacs.series(study_uid) if x["series_uid"] == chosen), {})
    if listed.get("instances") and int(listed["instances"]) > s.max_files:
        raise UploadRejected(f"the series has {listed['instances']} images, more than the {s.max_files} this server accepts", 413)
    upload_dir = ctx.storage.new_upload_dir()
    try:
        paths = pacs.fetch_series(study_uid, chosen, upload_dir / "pacs")
        total = sum(p.stat().st_size for p in paths)
        if total > s.max_unzipped_bytes:
            raise UploadRejected(f"the series is {total / 2**20:.0f} MB, more than the {s.max_unzipped_mb:.0f} MB this server accepts", 413)
        stored = ctx.storage.accept(upload_dir, [(p.name, p) for p in paths], study_id)
    finally:
        ctx.storage.discard(upload_dir)
    if stored.kind != "dicom" or stored.info.get("modality") != "CT":
        raise UploadRejected(f"series {chosen} is not a CT image series", 422)
    stored.info.update(_dicom_dates(ctx.storage.input_path(study_id, stored.path)))
    stored.info["pacs"] = row_name
    return stored, len(paths)


def _undo_study(ctx: ServiceContext, study_id: str) -> None:
    """Remove a study whose creation failed half-way: its row when no job was queued on it, its files
    when no result was written."""
    with ctx.db.session() as db:
        row = db.get(Study, study_id)
        if row is not None and not row.jobs:
            db.delete(row)
    if not (ctx.storage.study_dir(study_id) / "results").exists():
        ctx.storage.delete_study(study_id)


# ---- store results back ------------------------------------------------------------------------

@router.post("/api/studies/{study_id}/store-pacs", response_model=PacsStoreOut)
async def store_to_pacs(study_id: str, body: PacsStoreIn, request: Request, job: str | None = Query(None),
                        user: User = Depends(current_user), ctx: ServiceContext = Depends(get_ctx)) -> PacsStoreOut:
    """Store the study's RT Structure Set (and SEG) as they are now (corrections and reviews
    included) in their study on the PACS by STOW-RS; answers when the PACS has accepted them."""

    def prepare() -> tuple[Pacs, str, str, list[Path], str]:
        with ctx.db.session() as db:
            study = visible_study(study_id, user, db)
            j = _result_job(ctx, study, job)
            out = current_results(ctx, study, j)
            if not (out / "rtstruct.dcm").is_file():
                raise HTTPException(409, "this study has no RT Structure Set to store (it is made for DICOM studies)")
            files = [out / f for f in ("rtstruct.dcm", "seg.dcm") if (out / f).is_file() and (f == "rtstruct.dcm" or body.seg)]
            row = _row(db, body.pacs)
            review.mark_delivered(ctx.storage.study_dir(study.id), j.id)  # delivered: the next change opens a new set version
            return _client(row), row.name, row.url, files, j.id

    pacs, row_name, url, files, job_id = await run_in_threadpool(prepare)

    def store() -> tuple[str, list[str]]:
        import pydicom

        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
        return study_uid, pacs.store(files, study_uid)

    try:
        study_uid, stored = await run_in_threadpool(store)
    except DelineoError as exc:
        error = _pacs_error(exc, row_name, url, user)
        await run_in_threadpool(lambda: _log_store(ctx, user, study_id, request, f"to PACS {row_name!r} failed: {error.detail}"))
        raise error from None
    await run_in_threadpool(lambda: _log_store(ctx, user, study_id, request,
                                               f"{len(stored)} instance(s) to PACS {row_name!r}, job {job_id}"))
    return PacsStoreOut(pacs=row_name, study_uid=study_uid, stored=stored, files=[f.name for f in files])


def _log_store(ctx: ServiceContext, user: User, study_id: str, request: Request, detail: str) -> None:
    with ctx.db.session() as db:
        study = db.get(Study, study_id)
        audit.record(db, "pacs-store", actor=user.username, study=study, study_id=study_id, address=audit.client_address(request),
                     detail=detail)
