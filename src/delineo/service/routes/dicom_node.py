"""The DICOM node's state for administrators (``GET /api/dicom-node``): results waiting in its
outbox or undeliverable, series held as incomplete, failed series. Read from the node's storage
folder (``$DELINEO_HOME/dicom-node``, where ``delineo serve --dicom-port`` keeps it), so it also
shows what a stopped node left behind."""

from __future__ import annotations

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

    return node_status(ctx.settings.home / "dicom-node")
