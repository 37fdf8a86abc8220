"""The DICOM node's state for administrators (``GET /api/dicom-node``): results waiting in its
outbox or undeliverable, series held as incomplete, failed series. Read from the node's storage
folder (``$DELINEO_HOME/dicom-node``, where ``delineo serve --dicom-port`` keeps it), so it also
shows what a stopped node left behind. A series the node received is contoured and sent by the
node, not made a study of the web page: ``contoured`` lists the latest results read only (where
they are, when, which model, how many structures to review first), so that the page can say
where they went."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from delineo.service.core import ServiceContext
from delineo.service.models import User
from delineo.service.routes.deps import admin_user, get_ctx

router = APIRouter(prefix="/api/dicom-node", tags=["dicom-node"])


@router.get("")
def dicom_node_status(_: User = Depends(admin_user), ctx: ServiceContext = Depends(get_ctx)) -> dict[str, Any]:
    """Administrators: the DICOM node's outbox (``undeliverable`` counts results not delivered
    for longer than the alert time), incoming, failed and done series (``exists`` is false when
    this server runs no node)."""
    from delineo.dicom.node import node_status

    root = ctx.settings.home / "dicom-node"
    out = node_status(root)
    out["status_command"] = f"delineo dicom-node --status --storage {root}"
    out["contoured"] = contoured_series(root, {o["series"]: o for o in out["outbox"]})
    return out


def contoured_series(root: Path, outbox: dict[str, dict], limit: int = 20) -> list[dict[str, Any]]:
    """The node's latest results (``done/<study>/<series>/``), newest first: series and study
    UIDs, folder, images, time, model, structures and how many to review first, and whether the
    result still waits in the outbox. No patient data (the page shows it to administrators)."""
    rows = []
    for folder in (root / "done").glob("*/*"):
        received, summary_file = folder / "received.json", folder / "summary.json"
        if not folder.is_dir() or not summary_file.is_file():
            continue
        try:
            summary = json.loads(summary_file.read_text())
            record = json.loads(received.read_text()) if received.is_file() else {}
        except (OSError, ValueError):
            continue
        structures = summary.get("structures") or {}
        waiting = outbox.get(folder.name)
        rows.append({"series": folder.name, "study": folder.parent.name, "folder": str(folder),
                     "contoured_at": record.get("contoured_at"), "images": record.get("images"),
                     "model": summary.get("model"), "structures": len(structures),
                     "review": sum(1 for r in structures.values() if isinstance(r, dict) and r.get("review")),
                     "outbox": None if waiting is None else ("undeliverable" if waiting["undeliverable"] else "waiting")})
    rows.sort(key=lambda r: r["contoured_at"] or "", reverse=True)
    return rows[:limit]
