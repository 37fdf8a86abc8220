"""The access log for administrators: JSON (``/api/audit``), CSV (``/api/audit.csv``) and a page
(``/audit``)."""

from __future__ import annotations

import csv
import html
import io
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from delineo.service.models import AccessEvent, User
from delineo.service.routes.deps import admin_user, get_db
from delineo.service.schemas import datetime as UtcDatetime

router = APIRouter(tags=["audit"])

COLUMNS = ("at", "actor_kind", "actor", "action", "study_id", "patient", "address", "detail")


class AccessEventOut(BaseModel):
    id: int
    at: UtcDatetime
    actor_kind: str
    actor: str
    action: str
    study_id: str | None
    patient: str | None
    address: str | None
    detail: str


def _events(db: Session, since: datetime | None, until: datetime | None, action: str | None, actor: str | None,
            study: str | None, limit: int | None) -> list[AccessEvent]:
    q = select(AccessEvent).order_by(AccessEvent.at.desc(), AccessEvent.id.desc())
    if since is not None:
        q = q.where(AccessEvent.at >= _utc(since))
    if until is not None:
        q = q.where(AccessEvent.at < _utc(until))
    if action:
        q = q.where(AccessEvent.action == action)
    if actor:
        q = q.where(AccessEvent.actor == actor)
    if study:
        q = q.where(AccessEvent.study_id == study)
    if limit:
        q = q.limit(limit)
    return list(db.scalars(q))


def _utc(dt: datetime) -> datetime:
    """Times are stored in UTC (SQLite gives them back naive); a time without a zone is UTC."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _iso(dt: datetime) -> str:
    return _utc(dt).isoformat(timespec="seconds")


#: what makes a spreadsheet read a cell as a formula (OWASP, CSV injection), also in full width
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: object) -> str:
    """A cell of the CSV export that a spreadsheet shows as text: one starting with = + - @, tab
    or carriage return (a DICOM peer's AE title, a user name tried at sign-in) gets a leading ``'``
    (OWASP's rule); the writer quotes every cell."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


Since = Query(None, description="only events at or after this time (ISO 8601)")
Until = Query(None, description="only events before this time (ISO 8601)")
Action = Query(None, description="only this action (upload, view, download, contour, delete, retention-delete, receive, forward, refuse, login-failed, login-refused, login, password-change, token-create, user-create, sessions-revoke, destination-set, destination-delete)")
Actor = Query(None, description="only this user name or AE title")
StudyQ = Query(None, description="only this study (id, or Study Instance UID for the DICOM node)")


@router.get("/api/audit", response_model=list[AccessEventOut])
def list_events(since: datetime | None = Since, until: datetime | None = Until, action: str | None = Action,
                actor: str | None = Actor, study: str | None = StudyQ, limit: int = Query(500, ge=1, le=100000),
                _: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> list[AccessEventOut]:
    """The access log, newest first (administrators only)."""
    return [AccessEventOut(**{c: getattr(e, c) for c in ("id", *COLUMNS)})
            for e in _events(db, since, until, action, actor, study, limit)]


@router.get("/api/audit.csv", responses={200: {"content": {"text/csv": {}}}})
def events_csv(since: datetime | None = Since, until: datetime | None = Until, action: str | None = Action,
               actor: str | None = Actor, study: str | None = StudyQ,
               _: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> Response:
    """The access log as CSV (every matching event, newest first; administrators only)."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL)
    w.writerow(COLUMNS)
    for e in _events(db, since, until, action, actor, study, None):
        w.writerow([csv_cell(v) for v in (_iso(e.at), e.actor_kind, e.actor, e.action, e.study_id or "", e.patient or "",
                                          e.address or "", e.detail)])
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="delineo-access-log.csv"', "Cache-Control": "no-store"})


@router.get("/audit", response_class=HTMLResponse, include_in_schema=False)
def audit_page(action: str | None = Action, actor: str | None = Actor, study: str | None = StudyQ,
               limit: int = Query(500, ge=1, le=10000),
               _: User = Depends(admin_user), db: Session = Depends(get_db, scope="function")) -> HTMLResponse:
    """The access log as a page for administrators (the latest ``limit`` events)."""
    esc = html.escape
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{esc(str(v or ''))}</td>" for v in
                         (_iso(e.at), e.actor_kind, e.actor, e.action, e.study_id, e.patient, e.address, e.detail)) + "</tr>"
        for e in _events(db, None, None, action, actor, study, limit))
    filters = "&".join(f"{k}={esc(v)}" for k, v in (("action", action), ("actor", actor), ("study", study)) if v)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>delineo: access log</title>
<link rel="stylesheet" href="/static/style.css">
<style>table.audit{{border-collapse:collapse;font-size:13px}} table.audit td,table.audit th{{padding:2px 8px;text-align:left;border-bottom:1px solid #8884}}</style>
</head><body><main class="card">
<h1>Access log</h1>
<p>Who uploaded, viewed, downloaded, contoured, deleted, received or forwarded which study, and failed or refused
sign-ins; newest first, the latest {limit}. Patients appear as a pseudonym (a hash of the Patient ID), never by name or ID.
<a href="/api/audit.csv{'?' + filters if filters else ''}">Download all as CSV</a> &middot; <a href="/">Back</a></p>
<table class="audit"><thead><tr><th>When (UTC)</th><th>Who</th><th>User / AE title</th><th>Action</th><th>Study</th>
<th>Patient (pseudonym)</th><th>From</th><th>Detail</th></tr></thead>
<tbody>
{rows or '<tr><td colspan="8">no events</td></tr>'}
</tbody></table></main></body></html>"""
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})
