"""The Debian programs the tests drive as real DICOM peers (dcmtk, dicom3tools).

pynetdicom installs Python entry points with the same names (``storescu``, ``storescp``,
``echoscu``...) into the virtualenv's ``bin``; with the venv activated they come first on PATH and
take other options (pynetdicom's ``storescp`` reads ``--aetitle TPS`` as its port and exits).
The tests want dcmtk's, so they look in /usr/bin first.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def dcmtk(tool: str) -> str:
    """The Debian (dcmtk / dicom3tools) program, not a same-named Python entry point in the venv."""
    path = Path("/usr/bin") / tool
    return str(path) if path.is_file() else (shutil.which(tool) or tool)
