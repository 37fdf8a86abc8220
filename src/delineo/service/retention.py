"""Retention: delete studies older than ``DELINEO_RETENTION_DAYS`` days (off by default).

What goes: the study's row, its jobs, and its folder (the uploaded images and every result);
also the DICOM node's finished and failed series under ``$DELINEO_HOME/dicom-node/{done,failed}``
(images kept with ``keep_images`` and the contours written for them). Each deletion is a
``retention-delete`` line in the access log (actor ``system``). Not touched: the node's
``incoming``, ``work`` and ``outbox`` (series still being received, contoured or delivered) and the
access log itself.

The server runs :func:`retention_loop` (at start-up, then every ``DELINEO_RETENTION_INTERVAL_S``);
:func:`purge_expired` is also what a one-off run calls.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from delineo.service import audit
from delineo.service.config import Settings
from delineo.service.db import Database
from delineo.service.models import Study, utcnow
from delineo.service.storage import Storage

log = logging.getLogger("delineo.service.retention")

NODE_FOLDERS = ("done", "failed")


class RetentionContext(Protocol):
    """What retention uses of the service: a :class:`delineo.service.core.ServiceContext` (which
    imports this module; this one does not import it back)."""

    settings: Settings
    db: Database
    storage: Storage


def purge_expired(ctx: RetentionContext, days: float | None = None, now: datetime | None = None) -> list[str]:
    """Delete every study created more than ``days`` (default: the setting) ago; returns what
    was deleted (study ids, and ``dicom-node/<folder>/<study>`` for the node's series)."""
    days = ctx.settings.retention_days if days is None else days
    if not days or days <= 0:
        return []
    cutoff = (now or utcnow()) - timedelta(days=days)
    deleted: list[str] = []
    with ctx.db.session() as db:
        expired = list(db.scalars(select(Study).where(Study.created_at < cutoff).order_by(Study.created_at)))
        for study in expired:
            age = (now or utcnow()) - (study.created_at if study.created_at.tzinfo else study.created_at.replace(tzinfo=cutoff.tzinfo))
            audit.record(db, "retention-delete", actor="retention", actor_kind="system", study=study,
                         detail=f"{study.kind}, {age.days} days old (DELINEO_RETENTION_DAYS={days:g}), owner {study.owner.username}")
            db.delete(study)
            deleted.append(study.id)
    for study_id in deleted:  # the rows are gone (committed): a job still running discards its output
        ctx.storage.delete_study(study_id)
    node = Path(ctx.settings.home) / "dicom-node"
    for folder in NODE_FOLDERS:
        root = node / folder
        if not root.is_dir():
            continue
        for study_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            newest = max((f.stat().st_mtime for f in study_dir.rglob("*")), default=study_dir.stat().st_mtime)
            if newest >= cutoff.timestamp():
                continue
            shutil.rmtree(study_dir, ignore_errors=True)
            audit.record_now(ctx.db, "retention-delete", actor="retention", actor_kind="system", study_id=study_dir.name,
                             detail=f"DICOM node {folder} series (DELINEO_RETENTION_DAYS={days:g})")
            deleted.append(f"dicom-node/{folder}/{study_dir.name}")
    if deleted:
        log.warning("retention: deleted %d study/studies older than %g days", len(deleted), days)
    return deleted


def retention_loop(ctx: RetentionContext, stop: threading.Event) -> None:
    """Purge at start-up, then every ``retention_interval_s`` until ``stop`` is set."""
    log.info("retention: studies older than %g days are deleted (checked every %.0f s)",
             ctx.settings.retention_days, ctx.settings.retention_interval_s)
    while True:
        t0 = time.monotonic()
        try:
            purge_expired(ctx)
        except Exception:  # noqa: BLE001 - keep the loop alive
            log.exception("retention: purge failed")
        if stop.wait(max(1.0, ctx.settings.retention_interval_s - (time.monotonic() - t0))):
            return
