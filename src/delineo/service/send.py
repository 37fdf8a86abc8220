"""Send a study's contours (the RT Structure Set, and the SEG) to a planning system or PACS from
the web page, by DICOM C-STORE to a destination an administrator configured.

Destinations: ``DELINEO_SEND_DESTINATIONS`` (``Name=AE@HOST:PORT``, separated by ``;`` or ``,``)
and those an administrator adds in the page (kept in ``$DELINEO_HOME/send-destinations.json``);
the DICOM node's ``--dicom-forward`` destination can be listed the same way. Each send is a
record in ``$DELINEO_HOME/sends/<id>.json`` (state queued -> sending -> sent | failed, attempts,
the last error), sent in a background thread with a few retries; a failed send can be repeated.
The SOP instances sent are the study's current result (its corrections and reviews included).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from delineo.dicom.scu import c_store

log = logging.getLogger("delineo.service.send")

RETRIES = 3
RETRY_S = (2.0, 10.0, 30.0)
_NAME = re.compile(r"^[A-Za-z0-9 ._-]{1,64}$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def parse(text: str) -> tuple[str, str, int]:
    from delineo.dicom.node import parse_destination

    return parse_destination(text.strip())


def destinations(home: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"ae": .., "host": .., "port": .., "source": "env" | "admin"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for part in re.split(r"[;,]", os.environ.get("DELINEO_SEND_DESTINATIONS", "")):
        if "=" in part:
            name, text = part.split("=", 1)
            try:
                ae, host, port = parse(text)
            except Exception:  # noqa: BLE001 - a bad entry is logged, the others stay usable
                log.error("DELINEO_SEND_DESTINATIONS: cannot read %r (expected Name=AE@HOST:PORT)", part)
                continue
            out[name.strip()] = {"ae": ae, "host": host, "port": port, "source": "env"}
    try:
        saved = json.loads((Path(home) / "send-destinations.json").read_text())
    except (OSError, ValueError):
        saved = {}
    for name, d in saved.items():
        out.setdefault(name, {**d, "source": "admin"})
    return out


def save_destination(home: Path, name: str, text: str | None) -> dict[str, dict[str, Any]]:
    """Add (``text`` = ``AE@HOST:PORT``) or remove (``text`` None) an administrator's destination."""
    if not _NAME.match(name or ""):
        raise ValueError("a destination name has 1-64 letters, digits, spaces, '.', '_' or '-'")
    path = Path(home) / "send-destinations.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if text is None:
        saved.pop(name, None)
    else:
        ae, host, port = parse(text)
        saved[name] = {"ae": ae, "host": host, "port": port}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved, indent=1))
    tmp.replace(path)
    return destinations(home)


def _sends_dir(home: Path) -> Path:
    d = Path(home) / "sends"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write(home: Path, rec: dict) -> None:
    p = _sends_dir(home) / f"{rec['id']}.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(p)


def sends_for(home: Path, study_id: str) -> list[dict]:
    out = []
    for p in _sends_dir(home).glob("*.json"):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if rec.get("study") == study_id:
            out.append(rec)
    return sorted(out, key=lambda r: r["created_at"], reverse=True)


def start(home: Path, *, study_id: str, job_id: str, version: int, destination: str, files: list[Path], user: str,
          on_done: Callable[[dict], None] | None = None) -> dict:
    """Queue a send of ``files`` to the named destination; returns its record."""
    dests = destinations(home)
    if destination not in dests:
        raise KeyError(destination)
    d = dests[destination]
    rec = {"id": uuid.uuid4().hex, "study": study_id, "job": job_id, "version": version, "destination": destination,
           "target": f"{d['ae']}@{d['host']}:{d['port']}", "files": [f.name for f in files], "user": user,
           "state": "queued", "attempts": 0, "error": None, "created_at": _now(), "finished_at": None}
    _write(home, rec)

    def run() -> None:
        for attempt in range(1, RETRIES + 1):
            rec.update(state="sending", attempts=attempt)
            _write(home, rec)
            try:
                ok, why = c_store(files, d["ae"], d["host"], int(d["port"]))
            except Exception as exc:  # noqa: BLE001
                ok, why = False, f"{exc.__class__.__name__}: {exc}"
            if ok:
                rec.update(state="sent", error=None, finished_at=_now())
                _write(home, rec)
                log.info("study %s: contours sent to %s (%s) by %s", study_id, destination, rec["target"], user)
                break
            rec.update(error=why)
            if attempt == RETRIES:
                rec.update(state="failed", finished_at=_now())
                _write(home, rec)
                log.warning("study %s: send to %s failed after %d attempts: %s", study_id, destination, attempt, why)
                break
            rec.update(state="retrying")
            _write(home, rec)
            time.sleep(RETRY_S[min(attempt - 1, len(RETRY_S) - 1)])
        if on_done is not None:
            try:
                on_done(rec)
            except Exception:  # noqa: BLE001
                log.exception("recording the send failed")

    threading.Thread(target=run, name=f"send-{rec['id'][:8]}", daemon=True).start()
    return rec
