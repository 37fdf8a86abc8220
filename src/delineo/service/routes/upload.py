"""Study upload: the multipart body streamed to files, stored as a study, earlier uploads of the same series named."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from delineo.inference.plausibility import hounsfield_problem
from delineo.service.core import ServiceContext
from delineo.service.models import Study, User, new_id
from delineo.service.routes.deps import current_user, get_ctx
from delineo.service.routes.studies import _dicom_dates, add_study, removed_on_error, study_out
from delineo.service.schemas import StudyOut
from delineo.service.storage import UploadRejected
from delineo.service.streams import idle_bounded

log = logging.getLogger("delineo.service.upload")

router = APIRouter(tags=["studies"])


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


def _multipart_parser(boundary: bytes, dest: Path, max_files: int, files: list[tuple[str, Path]],
                      fields: dict[str, str]) -> tuple[MultipartParser, dict]:
    """A parser of a multipart body that writes each file part to ``dest`` (appended to ``files``
    as (name, path)) and keeps the short form fields in ``fields``; ``state["fh"]`` is the file
    open now, for the caller to close should the body end early."""
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

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    })
    return parser, state


async def receive_files(request: Request, dest: Path, max_bytes: int, max_files: int, idle_s: float) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """Stream a multipart body to files in ``dest`` (never whole in memory), counting bytes:
    past ``max_bytes`` -> 413 at once; nothing received for ``idle_s`` -> 408."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadRejected("send the files as multipart/form-data in the field 'files'", 415)
    files: list[tuple[str, Path]] = []
    fields: dict[str, str] = {}
    parser, state = _multipart_parser(params[b"boundary"], dest, max_files, files, fields)
    received = 0
    try:
        async for chunk in idle_bounded(request.stream(), idle_s, UploadRejected):
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


# ---- upload ----------------------------------------------------------------------------------

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
        async with removed_on_error(ctx, study_id, "upload", log):
            try:
                files, fields = await receive_files(request, upload_dir, s.max_upload_bytes, s.max_files, s.upload_idle_s)
            except ClientDisconnect:
                raise HTTPException(400, "the upload was interrupted") from None
            stored = await run_in_threadpool(ctx.storage.accept, upload_dir, files, study_id)
            if stored.kind == "nifti" and int(stored.info.get("dims", 3)) == 3:
                problem = await run_in_threadpool(hounsfield_problem, ctx.storage.input_path(study_id, stored.path))
                if problem:
                    shown = PurePosixPath(files[0][0]).name if len(files) == 1 else stored.name
                    raise UploadRejected(f"{shown}: {problem}", 422)
    finally:
        await run_in_threadpool(ctx.storage.discard, upload_dir)
    name = (fields.get("name") or "").strip()[:255] or stored.name[:255]
    if stored.kind == "dicom" and "study_date" not in stored.info:
        stored.info.update(await run_in_threadpool(_dicom_dates, ctx.storage.input_path(study_id, stored.path)))
    if stored.kind != "dicom":
        stored.info["_sha256"] = await run_in_threadpool(_file_sha256, ctx.storage.input_path(study_id, stored.path))

    def save() -> UploadOut:
        with ctx.db.session() as db:
            study = add_study(db, study_id, user, name, stored, request, "upload", f"{stored.kind}, {stored.size_bytes} bytes")
            return UploadOut(**study_out(ctx, study, user).model_dump(),
                             duplicate_of=_duplicates(db, user.id, study.id, study.kind, stored.info))

    try:
        return await run_in_threadpool(save)
    except BaseException:
        await run_in_threadpool(ctx.storage.delete_study, study_id)
        raise
