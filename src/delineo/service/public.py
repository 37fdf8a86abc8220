"""What users are shown of the files the server writes: no server paths (issue 36).

``summary.json`` as :func:`delineo.api.contour` writes it names the input and every output by its
absolute path on the server (``/srv/delineo/var/studies/<id>/results/.<job>.attempt1/...``),
which tells a user where the data lives and how the server is laid out. :func:`public_summary`
is the copy users download (``results/summary``, the NIfTI zip): each path is reduced to its
name inside the result (``segmentations/Ball.nii.gz``, ``rtstruct.dcm``, ``overview.png``) or,
for the input, its file name; the data directory is cut from any other text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

_ABSOLUTE = re.compile(r"^(/|[A-Za-z]:[\\/]|\\\\)")


def relative_name(path: str) -> str:
    """An absolute path -> the name users see: ``segmentations/<file>`` for a mask, else the file name."""
    p = PureWindowsPath(path) if "\\" in path else PurePosixPath(path)
    if p.parent.name == "segmentations":
        return f"segmentations/{p.name}"
    return p.name


def _clean(value: Any, home: str | None) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, home) for v in value]
    if isinstance(value, str):
        if _ABSOLUTE.match(value) and "\n" not in value:
            return relative_name(value)
        if home and home in value:
            return value.replace(home + "/", "").replace(home, "")
    return value


def public_summary(summary: dict, home: Path | str | None = None) -> dict:
    """``summary`` with no absolute path left in it (``home``, the data directory, is also cut
    out of free text such as messages)."""
    return _clean(summary, str(home).rstrip("/") if home else None)


def public_summary_bytes(path: Path, home: Path | str | None = None) -> bytes:
    """The file ``path`` (a ``summary.json``) as users get it; a file that is not JSON is given as is."""
    text = Path(path).read_text()
    try:
        summary = json.loads(text)
    except ValueError:
        return text.encode()
    return (json.dumps(public_summary(summary, home), indent=2) + "\n").encode()
