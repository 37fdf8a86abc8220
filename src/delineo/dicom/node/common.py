"""What every part of the DICOM node shares: its configuration, the markers of its storage layout,
durable writes, the access-log callback type."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import pydicom

from delineo.errors import ConfigError, DelineoError
from delineo.pseudonym import keyed_pseudonym

log = logging.getLogger("delineo.dicom.node")  # one logger for the whole node, whichever module writes

RECEIVING = ".receiving"  # an association is (or was, when the node died) writing this series
INTERRUPTED = ".interrupted"  # the association that wrote it ended abnormally; holds the reason
RECEIVED = "received.json"  # in done/<study>/<series>: which images the result was made from
SENDER = ".sender.json"  # the calling AE title and address of the association that last wrote the series
CONTOURING = ".contouring"  # work/<study>/<series>.contouring: a result being made, renamed into done/ when complete
STAGED = ".outbox"  # in a result being made: its outbox entry, moved to outbox/ once the result is in done/
FAILED_SEND_PREFIX = "send-"  # failed/send-<series>: where older versions parked undeliverable results


def parse_destination(text: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` -> (ae_title, host, port)."""
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        if not ae or len(ae) > 16 or not host:
            raise ValueError
        return ae, host, int(port)
    except ValueError:
        raise ConfigError(f"forward destination {text!r}: expected AE@HOST:PORT (AE title of at most 16 characters)") from None



def patient_tag(ds, key: bytes) -> str:
    """A short, stable pseudonym for log lines: never the patient's name or ID; keyed with the
    node's ``pseudonym.key`` (:mod:`delineo.pseudonym`), so it cannot be reversed by trying IDs."""
    return keyed_pseudonym(key, str(ds.get("PatientID", "")), 12)



class SeriesIncomplete(DelineoError):
    """A received series that is not (or not known to be) the whole series."""



@dataclass
class NodeConfig:
    storage: Path
    port: int = 11112
    ae_title: str = "DELINEO"
    host: str = "0.0.0.0"
    allowed_ae: Sequence[str] | None = None  # calling AE titles allowed to store; None: any
    forward: tuple[str, str, int] | None = None
    idle_seconds: float = 10.0  # the fallback: a series not known complete at its release is judged after this long idle
    settle_seconds: float | None = 2.0  # after a release, a complete stack without an image count waits this long; None: no early completion
    model: str | None = None
    device: str = "auto"
    send_seg: bool = True
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0  # the ceiling of the retry interval; retries never stop
    alert_after_s: float = 900.0  # undelivered this long: error log, status "undeliverable"
    alert_every_s: float = 3600.0  # repeat the error log this often while it stays undelivered
    incomplete_hold_s: float = 3600.0  # how long an interrupted series waits for a resend
    min_slices: int = 10  # fewer images than this: not a CT series to contour
    poll_s: float = 0.5
    structures: Sequence[str] | None = None
    keep_images: bool = True  # keep the received CT under done/<study>/<series>/ct



def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)



def _durable_write(ds, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(target)
    _fsync_dir(target.parent)



def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")



def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else None



def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass



#: ``(action, ae_title, study_uid, patient_id, address, detail)``: the access-log callback
EventRecorder = Callable[..., None]


def _first_patient_id(folder: Path) -> str | None:
    """The Patient ID of one image in ``folder`` (for the access log, which hashes it)."""
    for f in sorted(folder.glob("*.dcm"))[:1]:
        try:
            return str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "")) or None
        except Exception:  # noqa: BLE001
            return None
    return None



def _received_record(done: Path) -> dict[str, Any]:
    """What a done series was made from (``received.json``; for results of older versions, the
    file names of its kept images)."""
    try:
        return json.loads((done / RECEIVED).read_text())
    except (OSError, ValueError):
        uids = sorted(p.stem for p in (done / "ct").rglob("*.dcm"))
        return {"sop_instance_uids": uids, "images": len(uids)}
