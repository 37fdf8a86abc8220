"""Studies: streamed upload, list, detail, delete, contouring jobs, results and viewer volumes."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from delineo.contours.colors import structure_color
from delineo.inference.plausibility import hounsfield_problem
from delineo.service import audit
from delineo.service.core import ServiceContext
from delineo.service.models import Job, Study, User, new_id
from delineo.service.routes.deps import admin_user, current_user, get_ctx, get_db, visible_study
from delineo.service.routes.models import model_info, pick_model
from delineo.service.schemas import (DestinationIn, DestinationOut, JobIn, JobOut, ReferenceOut, ReviewIn, ReviewOut, SendIn, SendOut,
                                     StructureOut, StudyOut, VersionOut)
from delineo.service import reference, review, send, versions
from delineo.service.storage import UploadRejected, dir_size

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


class DuplicateOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    #: how it matched: "series" (same DICOM Series Instance UID) or "file" (same file content)
    match: str


class UploadOut(StudyOut):
    #: your earlier studies of the same series (DICOM: Series Instance UID) or the same file (NIfTI,
    #: PNG: SHA-256 of the stored file), newest first; the upload is kept either way
    duplicate_of: list[DuplicateOut] = []


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


# ---- upload ----------------------------------------------------------------------------------

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


async def receive_files(request: Request, dest: Path, max_bytes: int, max_files: int, idle_s: float) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """Stream a multipart body to files in ``dest`` (never whole in memory), counting bytes:
    past ``max_bytes`` -> 413 at once; nothing received for ``idle_s`` -> 408."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadRejected("send the files as multipart/form-data in the field 'files'", 415)
    files: list[tuple[str, Path]] = []
    fields: dict[str, str] = {}
    state: dict = {"headers": {}, "field": b"", "value": b"", "fh": None, "buf": None}

    def on_part_begin():
        state["headers"], state["fh"], state["buf"] = {}, None, None

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        filename = disp.get(b"filename")
        if filename is not None:
            if len(files) >= max_files:
                raise UploadRejected(f"too many files in one upload (more than {max_files}); zip the folder instead", 413)
            name = filename.decode("utf-8", "replace") or f"file{len(files)}"
            path = dest / f"{len(files):05d}.bin"
            state["fh"] = open(path, "wb")
            files.append((name, path))
        else:
            state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
            state["buf"] = bytearray()

    def on_part_data(data, start, end):
        if state["fh"] is not None:
            state["fh"].write(data[start:end])
        elif state["buf"] is not None and len(state["buf"]) < 10000:
            state["buf"] += data[start:end]

    def on_part_end():
        if state["fh"] is not None:
            state["fh"].close()
            state["fh"] = None
        elif state["buf"] is not None:
            fields[state.get("name", "")] = state["buf"].decode("utf-8", "replace")
            state["buf"] = None

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    })
    received = 0
    stream = request.stream().__aiter__()
    try:
        while True:
            try:
                with anyio.fail_after(idle_s):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadRejected(f"the upload stalled (nothing received for {idle_s:.0f} s)", 408) from None
            received += len(chunk)
            if received > max_bytes:
                raise UploadRejected(f"the upload is larger than the {max_bytes / 2**20:.0f} MB allowed", 413)
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadRejected:
        raise
    except ClientDisconnect:
        raise
    except Exception as exc:  # python-multipart parse errors
        raise UploadRejected(f"the upload could not be read as multipart/form-data ({exc.__class__.__name__})", 400) from None
    finally:
        if state["fh"] is not None:
            state["fh"].close()
    return files, fields


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _duplicates(db: Session, owner_id: int, study_id: str, kind: str, info: dict[str, Any]) -> list[DuplicateOut]:
    """The owner's other studies of the same series (DICOM) or with the same file (NIfTI, PNG)."""
    if kind == "dicom":
        key, match = "series_uid", "series"
    else:
        key, match = "_sha256", "file"
    value = info.get(key)
    if not value or value == "unknown":
        return []
    rows = db.scalars(select(Study).where(Study.owner_id == owner_id, Study.kind == kind, Study.id != study_id)
                      .order_by(Study.created_at.desc()))
    return [DuplicateOut(id=r.id, name=r.name, created_at=r.created_at, match=match) for r in rows if r.info.get(key) == value]


@router.post("/api/studies", response_model=UploadOut, status_code=201,
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "properties": {
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "a NIfTI CT (.nii/.nii.gz), a PNG X-ray, a zip of DICOM files, or the DICOM files of one series"},
                     "name": {"type": "string", "description": "display name (default: from the file or folder name)"}},
                 "required": ["files"]}}}, "required": True}})
async def upload_study(request: Request, user: User = Depends(current_user), ctx: ServiceContext = Depends(get_ctx)) -> UploadOut:
    """Upload a study (multipart field ``files``). Refused with 413 past the size cap, 415 for
    files that are not images, 422 for unreadable images or DICOM, with a message naming the file.
    A series you uploaded before (same DICOM Series Instance UID, or the same NIfTI / PNG file) is
    stored again as a new study, and ``duplicate_of`` names the earlier ones."""
    s = ctx.settings
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > s.max_upload_bytes:
        raise HTTPException(413, f"the upload is larger than the {s.max_upload_mb:.0f} MB allowed")
    study_id = new_id()
    upload_dir = await run_in_threadpool(ctx.storage.new_upload_dir)
    try:
        files, fields = await receive_files(request, upload_dir, s.max_upload_bytes, s.max_files, s.upload_idle_s)
        stored = await run_in_threadpool(ctx.storage.accept, upload_dir, files, study_id)
        if stored.kind == "nifti" and int(stored.info.get("dims", 3)) == 3:
            problem = await run_in_threadpool(hounsfield_problem, ctx.storage.input_path(study_id, stored.path))
            if problem:
                shown = PurePosixPath(files[0][0]).name if len(files) == 1 else stored.name
                raise UploadRejected(f"{shown}: {problem}", 422)
    except UploadRejected as exc:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        log.info("upload refused (%s): %s", exc.status, exc.message)
        raise HTTPException(exc.status, exc.message) from None
    except ClientDisconnect:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        raise HTTPException(400, "the upload was interrupted") from None
    except BaseException:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        raise
    finally:
        await run_in_threadpool(ctx.storage.discard, upload_dir)
    name = (fields.get("name") or "").strip()[:255] or stored.name[:255]
    if stored.kind == "dicom" and "study_date" not in stored.info:
        stored.info.update(await run_in_threadpool(_dicom_dates, ctx.storage.input_path(study_id, stored.path)))
    if stored.kind != "dicom":
        stored.info["_sha256"] = await run_in_threadpool(_file_sha256, ctx.storage.input_path(study_id, stored.path))

    def save() -> UploadOut:
        with ctx.db.session() as db:
            study = Study(id=study_id, owner_id=user.id, name=name, kind=stored.kind, input_path=stored.path,
                          size_bytes=stored.size_bytes, info_json=json.dumps(stored.info))
            db.add(study)
            db.flush()
            db.refresh(study)
            audit.record(db, "upload", actor=user.username, study=study, address=audit.client_address(request),
                         detail=f"{stored.kind}, {stored.size_bytes} bytes")
            return UploadOut(**study_out(ctx, study, user).model_dump(),
                             duplicate_of=_duplicates(db, user.id, study.id, study.kind, stored.info))

    try:
        return await run_in_threadpool(save)
    except BaseException:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        raise


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


# ---- results ---------------------------------------------------------------------------------

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


# ---- viewer volumes --------------------------------------------------------------------------

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


# ---- sending to a planning system ------------------------------------------------------------

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
