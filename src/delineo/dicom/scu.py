"""Sending results to a planning system or PACS: one C-STORE client (pynetdicom) for the DICOM
node's outbox and the web page's *Send*."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

#: C-STORE statuses that mean stored: success and the warnings (coercion, elements discarded, mismatch)
STORED = (0x0000, 0xB000, 0xB006, 0xB007)


def c_store(files: Sequence[Path], ae: str, host: str, port: int, calling_ae: str = "DELINEO") -> tuple[bool, str]:
    """Send RT Structure Set / SEG ``files`` to ``ae``@``host``:``port`` in one association.

    Returns ``(True, "")`` when every file was stored, else ``(False, reason)`` naming the file or
    the association that failed; never raises for a peer that is down or refuses."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import RTStructureSetStorage, SegmentationStorage

    app = AE(ae_title=calling_ae)
    app.add_requested_context(RTStructureSetStorage)
    app.add_requested_context(SegmentationStorage)
    app.acse_timeout = app.dimse_timeout = app.network_timeout = 30
    assoc = app.associate(host, port, ae_title=ae)
    if not assoc.is_established:
        return False, f"no association with {ae}@{host}:{port} (is it running, and does it accept the AE title {calling_ae}?)"
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            if not status:
                return False, f"no answer to the C-STORE of {Path(f).name}"
            if int(status.Status) not in STORED:
                return False, f"{ae} refused {Path(f).name} (status {int(status.Status):#06x})"
        return True, ""
    finally:
        assoc.release()
