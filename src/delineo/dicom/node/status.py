"""The node's state read from its storage folder, with or without a running node
(``delineo dicom-node --status``, the web page's administrator view)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from delineo.dicom.node.common import INTERRUPTED, RECEIVED, RECEIVING, NodeConfig, _iso
from delineo.dicom.series import is_valid_uid


def node_status(storage: str | Path, alert_after_s: float = NodeConfig.alert_after_s) -> dict[str, Any]:
    """The node's state read from its storage folder (works with or without a running node):
    series being received or held as incomplete, results waiting in the outbox (``undeliverable``
    once undelivered for ``alert_after_s``), failed series with their reason, done count."""
    root = Path(storage)
    now = time.time()
    out: dict[str, Any] = {"storage": str(root), "exists": root.is_dir(), "incoming": [], "outbox": [], "failed": [], "done": 0}
    if not root.is_dir():
        return out
    for folder in sorted((root / "incoming").glob("*/*")):
        if folder.is_dir():
            files = list(folder.glob("*.dcm"))
            last = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
            out["incoming"].append({"study": folder.parent.name, "series": folder.name, "images": len(files),
                                    "incomplete": (folder / INTERRUPTED).exists() or (folder / RECEIVING).exists(),
                                    "last_image_at": _iso(last)})
    for item in sorted((root / "outbox").glob("*/state.json")):
        try:
            state = json.loads(item.read_text())
        except (OSError, ValueError):
            state = {"last_error": "unreadable state.json"}
        waiting = now - float(state.get("received_at", now))
        out["outbox"].append({"series": state.get("series", item.parent.name), "attempts": int(state.get("attempts", 0)),
                              "waiting_s": round(waiting, 1), "last_error": state.get("last_error"),
                              "next_try_at": _iso(state.get("next_try")),
                              "undeliverable": bool(state.get("undeliverable")) or (waiting >= alert_after_s and state.get("attempts", 0) > 0)})
    for err in sorted((root / "failed").glob("*/*/error.txt")) + sorted((root / "failed").glob("*/error.txt")):
        out["failed"].append({"folder": str(err.parent.relative_to(root)), "reason": err.read_text().strip()[:2000],
                              "failed_at": _iso(err.stat().st_mtime)})
    out["failed"].sort(key=lambda f: f["failed_at"] or "")
    # a result is renamed into done/ when complete; a folder there without its records is what an
    # older version left when it was stopped mid-contouring: not counted (the node removes it)
    out["done"] = len([p for p in (root / "done").glob("*/*")
                       if p.is_dir() and any((p / name).exists() for name in (RECEIVED, "summary.json", "ct"))])
    out["contouring"] = sorted(p.name for p in (root / "work").glob("*/*") if p.is_dir() and is_valid_uid(p.name))
    out["undeliverable"] = sum(1 for o in out["outbox"] if o["undeliverable"])
    return out



def format_status(status: dict[str, Any]) -> str:
    """:func:`node_status` for a person (``delineo dicom-node --status``)."""
    if not status.get("exists"):
        return f"no DICOM node storage at {status['storage']}"
    lines = [f"DICOM node storage {status['storage']}: {status['done']} series contoured, "
             f"{len(status['outbox'])} result(s) waiting to be sent ({status['undeliverable']} undeliverable), "
             f"{len(status['incoming'])} series being received, {len(status['failed'])} failed"]
    for o in status["outbox"]:
        flag = "UNDELIVERABLE" if o["undeliverable"] else "waiting"
        lines.append(f"  outbox {o['series']}: {flag}, {o['attempts']} attempts over {o['waiting_s'] / 60:.0f} min"
                     f"{'; last error: ' + o['last_error'] if o['last_error'] else ''}")
    for s in status["incoming"]:
        lines.append(f"  incoming {s['series']}: {s['images']} images{' (incomplete: waiting for a resend)' if s['incomplete'] else ''}")
    for series in status.get("contouring", []):
        lines.append(f"  contouring {series} (not contoured yet)")
    for f in status["failed"][-20:]:
        lines.append(f"  failed {f['folder']}: {f['reason'].splitlines()[0] if f['reason'] else ''}")
    return "\n".join(lines)
