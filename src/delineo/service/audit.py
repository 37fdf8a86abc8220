"""The access log: who (a user, a DICOM AE title, or the system) uploaded, viewed, downloaded,
deleted, contoured or forwarded which study, when and from where; also sign-ins (successful,
failed, refused), password changes, API tokens made, users made, sessions revoked by an
administrator and changes to the send destinations; PACS configured, searched, fetched from and
stored to. Rows go to the ``access_log`` table
(administrators read them at ``/audit`` and as CSV at ``/api/audit.csv``).

Never the patient's name or ID in clear: a study is named by its id (service) or its Study
Instance UID (DICOM node), a patient by :func:`patient_pseudonym`: an HMAC-SHA-256 of the Patient
ID keyed with this installation's secret (``$DELINEO_HOME/pseudonym.key``, made on first start,
mode 0600), so a pseudonym cannot be turned back into the ID by trying every record number
without that file. Study names are not copied (a file name can hold a patient's name).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from delineo.pseudonym import keyed_pseudonym, load_secret
from delineo.service.models import AccessEvent, Study, utcnow

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import Request

    from delineo.service.db import Database

log = logging.getLogger("delineo.service.audit")

#: what the log records (``action`` column)
ACTIONS = ("upload", "view", "download", "contour", "delete", "retention-delete", "receive", "forward", "refuse",
           "login-failed", "login-refused", "login", "password-change", "token-create", "user-create", "sessions-revoke",
           "destination-set", "destination-delete", "pacs-set", "pacs-delete", "pacs-search", "pacs-fetch", "pacs-store")


#: the per-installation key of :func:`patient_pseudonym`, beside the database in ``$DELINEO_HOME``
_secret: bytes | None = None


def use_secret(home: Path) -> None:
    """Load (or make) the pseudonym key of the installation in ``home`` for this process."""
    global _secret
    _secret = load_secret(home)


def patient_pseudonym(patient_id: str | None) -> str | None:
    """A short, stable pseudonym of a Patient ID: the first 16 hex digits of its HMAC-SHA-256 with
    the installation's key (:func:`use_secret`); without the key it cannot be reversed by trying IDs."""
    if not patient_id:
        return None
    if _secret is None:
        raise RuntimeError("the access log's pseudonym key is not loaded (delineo.service.audit.use_secret)")
    return keyed_pseudonym(_secret, str(patient_id))


def client_address(request: "Request | None") -> str | None:
    """The client's address as the server sees it (behind a reverse proxy: run uvicorn with
    ``--proxy-headers --forwarded-allow-ips`` so this is the real client)."""
    if request is None or request.client is None:
        return None
    return str(request.client.host)[:64]


def record(db: Session, action: str, *, actor: str, actor_kind: str = "user", study: Study | None = None,
           study_id: str | None = None, patient: str | None = None, address: str | None = None, detail: str = "") -> None:
    """Add one access-log row to ``db`` (committed with the caller's session)."""
    if study is not None:
        study_id = study.id
        patient = patient or patient_pseudonym(study.info.get("patient_id"))
    db.add(AccessEvent(at=utcnow(), actor_kind=actor_kind, actor=str(actor)[:64], action=action[:32], study_id=study_id,
                       patient=patient, address=address, detail=detail[:255]))
    log.info("access: %s %s %s study %s patient %s from %s %s", actor_kind, actor, action, study_id or "-",
             patient or "-", address or "-", detail)


def record_now(database: "Database", action: str, **kw) -> None:
    """:func:`record` in its own transaction (for callers without a session: the DICOM node,
    retention); a failure to log is reported, never raised into the caller's work."""
    try:
        with database.session() as db:
            record(db, action, **kw)
    except Exception:  # noqa: BLE001
        log.exception("could not write the access log (%s by %s)", action, kw.get("actor"))


def node_recorder(database: "Database", home: Path | None = None):
    """A callback for the DICOM node: ``(action, ae_title, study_uid, patient_id, address, detail)``
    -> an access-log row with the AE title as the actor and the Patient ID pseudonymised (with the
    key of the installation in ``home``)."""
    if home is not None:
        use_secret(home)

    def on_event(action: str, ae_title: str, study_uid: str | None = None, patient_id: str | None = None,
                 address: str | None = None, detail: str = "") -> None:
        record_now(database, action, actor=ae_title or "?", actor_kind="ae", study_id=study_uid,
                   patient=patient_pseudonym(patient_id), address=address, detail=detail)

    return on_event
