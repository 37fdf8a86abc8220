"""A DICOM node for the planning workflow (pynetdicom): receive CT, contour it, send the contours on.

- C-ECHO answered; C-STORE accepted for CT Image Storage only, and only from the configured
  calling AE titles (other associations are rejected).
- Every instance is checked before it is stored (:func:`delineo.dicom.series.instance_problem`):
  UIDs that are not DICOM UIDs (``../x``, ``/abs``), missing geometry, truncated or undecodable
  pixel data are refused with a failure status (0xC000 ... with an Error Comment saying why), so
  the sender knows it must resend. A C-STORE request without a SOP Instance UID (which pynetdicom
  would drop unanswered, leaving the sender waiting) gets the same failure status at once. Paths
  are made only from validated UIDs and checked to stay inside the storage folder.
- Every accepted instance is written durably (temporary file, fsync, rename) under
  ``storage/incoming/<study>/<series>/<sop>.dcm`` *before* success is returned to the sender.
- A series is judged when nothing has arrived for it for ``idle_seconds`` and no association is
  still sending it. A series whose association ended abnormally (A-ABORT, dropped connection, or
  the node stopped while receiving it: a ``.receiving`` marker left on disk) is *incomplete*: it
  is held for ``incomplete_hold_s`` for the sender to resend it (a resend that ends normally
  completes it), then moved to ``failed/`` with the reason. After a restart every series waits
  its idle time again.
- A complete series must also be consistent: at least ``min_slices`` images, one patient and one
  frame of reference, evenly spaced positions without gaps (:func:`read_series`), unique and
  contiguous instance numbers, and as many images as ImagesInAcquisition says when it is given.
- A resend of a series already contoured is recognised (``done/<study>/<series>/received.json``):
  the same images are discarded with a warning; different images are moved to ``failed/`` with
  the reason. Either way no second RT Structure Set is made (remove ``done/<study>/<series>`` to
  contour the series again).
- The RT Structure Set (and the DICOM SEG) are queued under ``storage/outbox/`` and sent by
  C-STORE to the forward destination, retried without end while it is down: the interval doubles
  from ``retry_initial_s`` up to ``retry_max_s``; the state survives restarts. A result not
  delivered after ``alert_after_s`` is logged at error level (again every ``alert_every_s``) and
  shown as undeliverable by :func:`node_status` (``delineo dicom-node --status``, the web page's
  administrator view).
- A result is made in ``work/<study>/<series>.contouring`` and appears in ``done/`` by one rename
  when it is complete (its images, ``received.json`` and its outbox entry inside it). A node
  stopped or killed while contouring leaves nothing in ``done/``: after a restart the series is
  contoured again and its RT Structure Set sent; ``--status`` does not count it as contoured.
- A series that is not a plausible CT (:func:`delineo.inference.plausibility.check_ct`: values
  not in Hounsfield units, e.g. an MR labelled CT; noise; NaN; too few slices for the model) is
  not contoured: nothing is sent, and the reason is logged and kept in ``failed/``.
- A series that cannot be contoured is moved to ``failed/<study>/<series>.<UTC time>/`` (a new
  folder each time, never nested or overwritten) with ``error.txt``; the node goes on.
- Logs name studies by UID and patients by a short hash of the Patient ID, never by name.
- With ``on_event`` (``delineo serve --dicom-port``: :func:`delineo.service.audit.node_recorder`)
  the node also writes the access log: ``receive`` once per series judged complete (calling AE
  title, peer address), ``contour`` (or its failure), ``forward`` on each delivery (destination
  AE title), ``refuse`` for refused instances (one row per association and reason, with the count)
  and rejected associations. A standalone ``delineo dicom-node`` has no database and no access log.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification

try:  # pynetdicom's debug-logging handler for received DIMSE messages (private; absent: nothing to wrap)
    from pynetdicom._handlers import standard_dimse_recv_handler as _standard_dimse_recv
except ImportError:  # pragma: no cover
    _standard_dimse_recv = None

from delineo.dicom.scu import c_store
from delineo.dicom.series import CT_IMAGE_STORAGE, instance_problem, is_valid_uid
from delineo.errors import ConfigError, DelineoError
from delineo.pseudonym import keyed_pseudonym, load_secret

log = logging.getLogger("delineo.dicom.node")

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
    idle_seconds: float = 10.0
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


def _failure_status(status: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (LO: at most 64 characters) for the sender."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


#: ``(action, ae_title, study_uid, patient_id, address, detail)``: the access-log callback
EventRecorder = Callable[..., None]


def _peer(assoc) -> tuple[str, str | None]:
    """The calling AE title and ``address:port`` of an association's requestor."""
    req = getattr(assoc, "requestor", None)
    ae = str(getattr(req, "ae_title", "") or "?").strip()
    address = getattr(req, "address", None)
    port = getattr(req, "port", None)
    return ae, (f"{address}:{port}" if address and port else address)


def _first_patient_id(folder: Path) -> str | None:
    """The Patient ID of one image in ``folder`` (for the access log, which hashes it)."""
    for f in sorted(folder.glob("*.dcm"))[:1]:
        try:
            return str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "")) or None
        except Exception:  # noqa: BLE001
            return None
    return None


class DicomNode:
    """Storage SCP + contouring worker + forwarding SCU. ``start()`` returns once listening.

    ``on_event``: an optional access-log callback (:data:`EventRecorder`); failures in it are
    logged and never stop the node."""

    def __init__(self, config: NodeConfig, on_event: EventRecorder | None = None):
        self.cfg = config
        self._on_event = on_event
        self._refused: dict[int, dict[str, list]] = {}  # association id -> reason -> [count, study, patient id]
        self.root = Path(config.storage).resolve()
        for sub in ("incoming", "work", "done", "failed", "outbox"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._pseudonym_key = load_secret(self.root)  # for the patient pseudonym of log lines
        self._last_seen: dict[Path, float] = {}
        self._open: dict[int, set[Path]] = {}  # association id -> series folders it wrote to
        self._held: set[Path] = set()  # interrupted series already reported as waiting for a resend
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._predictor = None
        self.events: list[dict] = []  # what happened, for status and tests (no patient data)

    # ---- paths -------------------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        """``path`` if it lies inside the storage folder; never a path outside it."""
        resolved = path.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise DelineoError(f"refused a path outside the node's storage: {path}")
        return path

    def _series_dir(self, area: str, study: str, series: str) -> Path:
        if not (is_valid_uid(study) and is_valid_uid(series)):
            raise DelineoError(f"not a DICOM UID: {study!r}/{series!r}")
        return self._inside(self.root / area / study / series)

    # ---- access log ----------------------------------------------------------------------------
    def _record(self, action: str, ae_title: str, study_uid: str | None = None, patient_id: str | None = None,
                address: str | None = None, detail: str = "") -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(action, ae_title, study_uid if study_uid and is_valid_uid(study_uid) else None,
                           patient_id or None, address, detail)
        except Exception:  # noqa: BLE001 - the access log must not stop the node
            log.exception("could not record %s in the access log", action)

    def _note_refused(self, event, reason: str, ds=None) -> None:
        """Count a refused instance for the access log (written when the association ends)."""
        if self._on_event is None:
            return
        study = patient = None
        if ds is not None:
            try:
                study, patient = str(ds.get("StudyInstanceUID", "")), str(ds.get("PatientID", ""))
            except Exception:  # noqa: BLE001
                pass
        with self._lock:
            entry = self._refused.setdefault(id(event.assoc), {}).setdefault(reason[:120], [0, study, patient])
            entry[0] += 1

    def _on_rejected(self, event) -> None:
        ae, address = _peer(event.assoc)
        log.warning("rejected an association from %s (%s)", ae, address)
        self._record("refuse", ae, address=address, detail="association rejected (calling AE title not allowed)")

    # ---- receiving ---------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_store(self, event):
        peer = getattr(event.assoc.requestor, "ae_title", "?")
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # the dataset does not decode at all
            log.warning("refused an instance from %s: it does not decode (%s)", peer, type(exc).__name__)
            self._note_refused(event, f"dataset does not decode ({type(exc).__name__})")
            return _failure_status(0xC000, f"dataset does not decode ({type(exc).__name__})")
        try:
            if str(ds.get("Modality", "")) != "CT" or str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
                log.warning("refused instance of modality %s from %s", ds.get("Modality", "?"), peer)
                self._note_refused(event, f"only CT Image Storage is accepted (got {str(ds.get('Modality', '?'))[:16]})", ds)
                return _failure_status(0xA900, "only CT Image Storage is accepted")
            problem = instance_problem(ds, event.request.AffectedSOPInstanceUID)
            if problem:
                log.warning("refused an instance from %s: %s", peer, problem)
                self._note_refused(event, problem, ds)
                return _failure_status(0xC000, problem)
            study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            folder = self._series_dir("incoming", study, series)
            target = self._inside(folder / f"{sop}.dcm")
            key = id(event.assoc)
            with self._lock:
                new_series = folder not in self._last_seen
                first_here = folder not in self._open.setdefault(key, set())
                self._open[key].add(folder)
                self._last_seen[folder] = time.monotonic()
                if first_here:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / RECEIVING).write_text(json.dumps({"since": time.time(), "from": str(peer)}))
                    if self._on_event is not None:
                        ae, address = _peer(event.assoc)
                        (folder / SENDER).write_text(json.dumps({"ae_title": ae, "address": address}))
            if new_series:
                log.info("receiving series %s (patient %s)", series, patient_tag(ds, self._pseudonym_key))
            _durable_write(ds, target)
            with self._lock:
                self._last_seen[folder] = time.monotonic()
            return 0x0000
        except Exception as exc:  # never let one bad instance take the node down
            log.error("could not store an instance from %s: %s: %s", peer, type(exc).__name__, exc)
            self._note_refused(event, f"could not store ({type(exc).__name__})")
            return _failure_status(0xA700, f"could not store ({type(exc).__name__})")

    def _on_conn_open(self, event) -> None:
        """pynetdicom's logging handler raises on a C-STORE without a SOP Instance UID (a traceback in
        the log): unbound here, :meth:`_on_dimse_recv` calls it for every message it does not refuse."""
        if _standard_dimse_recv is not None:
            event.assoc.unbind(evt.EVT_DIMSE_RECV, _standard_dimse_recv)

    def _on_dimse_recv(self, event) -> None:
        """A C-STORE request that pynetdicom would drop without an answer (an empty Affected SOP
        Instance UID, or another required command element missing): refused here with a failure
        status, so the sender is answered at once instead of waiting for its DIMSE timeout. Other
        messages go on to pynetdicom's own (debug) logging handler."""
        msg = event.message
        try:
            primitive = msg.message_to_primitive() if type(msg).__name__ == "C_STORE_RQ" else None
        except Exception:  # noqa: BLE001 - pynetdicom aborts the association on such a message itself
            primitive = None
        if primitive is not None and not primitive.is_valid_request:
            missing = [k for k in primitive.REQUEST_KEYWORDS if getattr(primitive, k) is None]
            reason = f"invalid or missing {'SOPInstanceUID' if 'AffectedSOPInstanceUID' in missing else ', '.join(missing)} in the C-STORE request"
            peer = getattr(event.assoc.requestor, "ae_title", "?")
            log.warning("refused an instance from %s: %s", peer, reason)
            self._note_refused(event, reason)
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo = primitive.MessageID if primitive.MessageID is not None else 1
            rsp.AffectedSOPClassUID = primitive.AffectedSOPClassUID
            rsp.Status = 0xC000
            rsp.ErrorComment = reason[:64]
            try:
                event.assoc.dimse.send_msg(rsp, msg.context_id)
            except Exception as exc:  # noqa: BLE001 - the peer then times out, as before; the node goes on
                log.error("could not answer a malformed C-STORE from %s: %s: %s", peer, type(exc).__name__, exc)
            return
        if _standard_dimse_recv is not None:
            _standard_dimse_recv(event)

    def _on_conn_close(self, event) -> None:
        """The end of an association: normal (released) or not (aborted, connection lost)."""
        assoc = event.assoc
        with self._lock:
            folders = self._open.pop(id(assoc), set())
            normal = bool(getattr(assoc, "is_released", False)) and not bool(getattr(assoc, "is_aborted", False))
            for folder in folders:
                still_open = any(folder in f for f in self._open.values())
                if not still_open:
                    (folder / RECEIVING).unlink(missing_ok=True)
                if normal:
                    (folder / INTERRUPTED).unlink(missing_ok=True)
                    self._held.discard(folder)
                elif folder.is_dir():
                    n = len(list(folder.glob("*.dcm")))
                    (folder / INTERRUPTED).write_text(f"the association sending it ended abnormally after {n} images\n")
                    log.warning("series %s: the association from %s ended abnormally (%d images so far); "
                                "waiting for the sender to resend it", folder.name, getattr(assoc.requestor, "ae_title", "?"), n)
                self._last_seen[folder] = time.monotonic()
            refused = self._refused.pop(id(assoc), {})
        if refused:
            ae, address = _peer(assoc)
            for reason, (count, study, patient) in refused.items():
                self._record("refuse", ae, study, patient, address,
                             f"{count} instance{'s' if count != 1 else ''} refused: {reason}")

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "DicomNode":
        ae = AE(ae_title=self.cfg.ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
        if self.cfg.allowed_ae:
            ae.require_calling_aet = list(self.cfg.allowed_ae)
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_conn_close),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_DIMSE_RECV, self._on_dimse_recv), (evt.EVT_CONN_OPEN, self._on_conn_open)]
        self._recover()
        self._server = ae.start_server((self.cfg.host, int(self.cfg.port)), block=False, evt_handlers=handlers)
        for target in (self._watch_series, self._send_outbox):
            t = threading.Thread(target=target, daemon=True, name=f"delineo-node-{target.__name__}")
            t.start()
            self._threads.append(t)
        log.info("DICOM node %s listening on %s:%s", self.cfg.ae_title, self.cfg.host, self.cfg.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        for t in self._threads:
            t.join(timeout=10)

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def _recover(self) -> None:
        """Take up what a previous run left: series mid-contouring go back to incoming; series
        that were being received when it stopped are marked interrupted; every series waits its
        idle time again; results parked as undeliverable by older versions go back to the outbox.

        A result is made in ``work/<study>/<series>.contouring`` and renamed into ``done/`` only when
        complete, so a node killed while contouring leaves no result: the half-made one is removed,
        the images (moved into it, if they were) go back, and the series is contoured again. A result
        published but not yet queued for sending is queued now."""
        self._recover_contouring()
        for folder in list((self.root / "work").glob("*/*")):
            if not (folder.is_dir() and is_valid_uid(folder.parent.name) and is_valid_uid(folder.name)):
                continue
            dest = self._series_dir("incoming", folder.parent.name, folder.name)
            if dest.exists():  # a resend arrived meanwhile: keep both, the older one judged as failed
                self._fail(folder, folder.parent.name, folder.name, "left mid-contouring by a previous run while the series was received again")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, dest)
        for study in (self.root / "work").iterdir():
            _remove_if_empty(study)
        now = time.monotonic()
        for folder in (self.root / "incoming").glob("*/*"):
            if not folder.is_dir() or not (is_valid_uid(folder.parent.name) and is_valid_uid(folder.name)):
                continue
            marker = folder / RECEIVING
            if marker.exists():
                n = len(list(folder.glob("*.dcm")))
                (folder / INTERRUPTED).write_text(f"the node stopped while receiving it ({n} images had arrived)\n")
                marker.unlink()
                log.warning("series %s: the node stopped while receiving it (%d images); waiting for the sender to resend it",
                            folder.name, n)
            self._last_seen[folder] = now
        for parked in (self.root / "failed").glob(f"{FAILED_SEND_PREFIX}*"):
            if (parked / "state.json").is_file():
                dest = self.root / "outbox" / parked.name[len(FAILED_SEND_PREFIX):]
                if not dest.exists():
                    os.rename(parked, dest)
                    log.warning("outbox: %s taken up again for sending", dest.name)

    def _recover_contouring(self) -> None:
        for partial in list((self.root / "work").glob(f"*/*{CONTOURING}")):
            study, series = partial.parent.name, partial.name[: -len(CONTOURING)]
            if not (partial.is_dir() and is_valid_uid(study) and is_valid_uid(series)):
                continue
            images = self._series_dir("work", study, series)
            if (partial / "ct").is_dir() and not images.exists():
                os.rename(partial / "ct", images)  # moved into the result just before it would have been published
            shutil.rmtree(partial)
            log.warning("series %s: the node stopped while contouring it; it is contoured again", series)
        for folder in list((self.root / "work").glob("*/*")):
            # an older version made its result in done/ directly: a folder there without received.json,
            # summary.json or images, while the series is still in work, is what a kill mid-contouring left
            if not (folder.is_dir() and is_valid_uid(folder.parent.name) and is_valid_uid(folder.name)):
                continue
            done = self._series_dir("done", folder.parent.name, folder.name)
            if done.is_dir() and not any((done / name).exists() for name in (RECEIVED, "summary.json", "ct")):
                shutil.rmtree(done)
                _remove_if_empty(done.parent)
                log.warning("series %s: removed the half-made result of a contouring an older version did not finish", folder.name)
        for staged in list((self.root / "done").glob(f"*/*/{STAGED}")):
            self._queue(staged)

    # ---- deciding --------------------------------------------------------------------------------
    def _watch_series(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            now = time.monotonic()
            with self._lock:
                busy = set().union(*self._open.values()) if self._open else set()
                idle = [f for f, t in self._last_seen.items() if now - t >= self.cfg.idle_seconds and f not in busy]
                ready = []
                for f in idle:
                    if (f / INTERRUPTED).exists() and now - self._last_seen[f] < self.cfg.incomplete_hold_s:
                        if f not in self._held:
                            self._held.add(f)
                            self.events.append({"series": f.name, "state": "incomplete", "reason": (f / INTERRUPTED).read_text().strip()})
                        continue
                    ready.append(f)
                    del self._last_seen[f]
                    self._held.discard(f)
                    # claimed under the lock: an instance of this series arriving from now on
                    # opens a new incoming folder, judged on its own
                    if f.is_dir():
                        work = self._series_dir("work", f.parent.name, f.name)
                        if work.exists():
                            self._fail(work, f.parent.name, f.name, "an earlier copy was left in work")
                        work.parent.mkdir(parents=True, exist_ok=True)
                        os.rename(f, work)
                        _remove_if_empty(f.parent)
            for folder in ready:
                work = self.root / "work" / folder.parent.name / folder.name
                if not work.is_dir():
                    continue
                try:
                    self._judge(work)
                except Exception as exc:  # e.g. the disk is full: log it, keep the node running
                    log.error("series %s: %s: %s", folder.name, type(exc).__name__, exc)
                    self.events.append({"series": folder.name, "state": "failed", "reason": f"{type(exc).__name__}: {exc}"})
                finally:
                    _remove_if_empty(work.parent)

    def _judge(self, work: Path) -> None:
        """A series claimed from incoming: fail it if interrupted, recognise a resend, else contour."""
        study, series = work.parent.name, work.name
        interrupted = work / INTERRUPTED
        done = self._series_dir("done", study, series)
        if self._on_event is not None:
            n = len(list(work.glob("*.dcm")))
            detail = (f"series {series}: {n} images, incomplete (not resent in time): not contoured" if interrupted.exists() else
                      f"series {series}: {n} images, a resend of a contoured series: not contoured again" if done.exists() else
                      f"series {series}: {n} images")
            self._record_series("receive", study, self._sender(work), detail)
        if interrupted.exists():
            why = interrupted.read_text().strip()
            self._fail(work, study, series, f"incomplete series: {why}, and it was not resent within "
                                            f"{self.cfg.incomplete_hold_s:.0f} s; resend the whole series")
            return
        if done.exists():
            self._resend(work, done, study, series)
            return
        self._contour(work)

    def _sender(self, folder: Path) -> dict:
        """Who sent the series in ``folder`` (AE title, address) and its Patient ID, for the access log."""
        if self._on_event is None:
            return {}
        try:
            sender = json.loads((folder / SENDER).read_text())
        except (OSError, ValueError):
            sender = {}
        sender["patient_id"] = _first_patient_id(folder)
        return sender

    def _record_series(self, action: str, study: str, sender: dict, detail: str) -> None:
        if self._on_event is not None:
            self._record(action, sender.get("ae_title") or "?", study, sender.get("patient_id"), sender.get("address"), detail)

    def _resend(self, work: Path, done: Path, study: str, series: str) -> None:
        earlier = _received_record(done)
        now = {p.stem for p in work.glob("*.dcm")}
        when = earlier.get("contoured_at", "earlier")
        if now <= set(earlier.get("sop_instance_uids", [])):
            shutil.rmtree(work)
            log.warning("series %s: received again (%d images) but already contoured at %s from the same images; "
                        "not contoured again, no second structure set sent", series, len(now), when)
            self.events.append({"series": series, "state": "duplicate", "images": len(now)})
            return
        new = len(now - set(earlier.get("sop_instance_uids", [])))
        self._fail(work, study, series,
                   f"series {series} was already contoured at {when} from {earlier.get('images', '?')} images; this resend has "
                   f"{len(now)} images ({new} not in the earlier one). Not contoured again, so the planning system does not get a "
                   f"second structure set for one series; to replace the result, remove done/{study}/{series} and resend the series")

    def _predictor_for(self):
        if self._predictor is None:
            from delineo.api import default_model
            from delineo.inference.predictor import Predictor

            self._predictor = Predictor(self.cfg.model or default_model(3), self.cfg.device)
        return self._predictor

    def _check_consistent(self, ct) -> None:
        """Count, positions, instance numbers and patient checked against each other."""
        datasets = ct.datasets
        n = len(datasets)
        if n < self.cfg.min_slices:
            raise SeriesIncomplete(f"series {ct.series_instance_uid} has {n} image{'s' if n != 1 else ''}; a CT series for "
                                   f"contouring needs at least {self.cfg.min_slices} (min_slices)")
        for key in ("PatientID", "FrameOfReferenceUID", "StudyInstanceUID"):
            values = {str(d.get(key, "")) for d in datasets}
            if len(values) > 1:
                raise SeriesIncomplete(f"the images of series {ct.series_instance_uid} disagree on {key} ({len(values)} values)")
        numbers = [d.get("InstanceNumber") for d in datasets]
        if all(v not in (None, "") for v in numbers):
            numbers = [int(v) for v in numbers]
            if len(set(numbers)) != n:
                raise SeriesIncomplete(f"series {ct.series_instance_uid}: instance numbers repeat ({n} images, {len(set(numbers))} numbers)")
            lo, hi = min(numbers), max(numbers)
            if hi - lo + 1 != n:
                raise SeriesIncomplete(f"series {ct.series_instance_uid}: instance numbers run from {lo} to {hi} but {n} images "
                                       f"arrived; {hi - lo + 1 - n} are missing")
        expected = {int(d.ImagesInAcquisition) for d in datasets if d.get("ImagesInAcquisition") not in (None, "")}
        acquisitions = {str(d.get("AcquisitionNumber", "")) for d in datasets}
        if len(expected) == 1 and len(acquisitions) == 1 and next(iter(expected)) != n:
            raise SeriesIncomplete(f"series {ct.series_instance_uid}: {n} images arrived, ImagesInAcquisition says {next(iter(expected))}")

    def _contour(self, work: Path) -> None:
        """Contour the series in ``work`` into ``work/<study>/<series>.contouring`` and publish it as
        ``done/<study>/<series>`` by one rename when it is complete (received.json, the images, the
        outbox entry staged inside it), then move the outbox entry to ``outbox/``."""
        study, series = work.parent.name, work.name
        for marker in (RECEIVING, INTERRUPTED):
            (work / marker).unlink(missing_ok=True)
        out = self._series_dir("done", study, series)
        partial = self._inside(work.with_name(series + CONTOURING))
        sender = self._sender(work)  # read before the folder moves
        (work / SENDER).unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            from delineo.api import contour_image
            from delineo.dicom.series import read_series
            from delineo.inference.plausibility import check_ct

            shutil.rmtree(partial, ignore_errors=True)
            ct = read_series(work)
            self._check_consistent(ct)
            predictor = self._predictor_for()
            check_ct(ct.image, predictor.bundle, f"series {series}")  # not a plausible CT: failed, nothing sent
            summary = contour_image(ct.image, partial, predictor=predictor, series=ct, source=f"series {series}",
                                    structures=self.cfg.structures, overview=True)
        except Exception as exc:  # a bad study must not stop the node
            shutil.rmtree(partial, ignore_errors=True)  # half-written results of this attempt
            reason = str(exc) if isinstance(exc, DelineoError) else f"{type(exc).__name__}: {exc}"
            self._fail(work, study, series, reason.replace(str(work), "<series>"))
            self._record_series("contour", study, sender, f"series {series}: failed: {reason.replace(str(work), '<series>')}")
            return
        record = {"sop_instance_uids": sorted(ct.sop_instance_uids), "images": len(ct.datasets),
                  "contoured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (partial / RECEIVED).write_text(json.dumps(record, indent=1) + "\n")
        summary_file = partial / "summary.json"  # the files it names, where they will be once published
        if summary_file.is_file() and str(partial) in summary_file.read_text():
            summary_file.write_text(summary_file.read_text().replace(json.dumps(str(partial))[1:-1], json.dumps(str(out))[1:-1]))
        if self.cfg.forward is not None:
            staged = partial / STAGED
            staged.mkdir()
            files = [summary["rtstruct"]] + ([summary["seg"]] if self.cfg.send_seg and "seg" in summary else [])
            for f in files:
                shutil.copy2(f, staged / Path(f).name)
            (staged / "state.json").write_text(json.dumps({"series": series, "study": study, "attempts": 0, "next_try": 0.0,
                                                           "received_at": time.time()}))
        if self.cfg.keep_images:
            os.rename(work, partial / "ct")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(partial, out)  # published: whole or not at all
        _fsync_dir(out.parent)
        if not self.cfg.keep_images:
            shutil.rmtree(work, ignore_errors=True)
        seconds = time.perf_counter() - t0
        log.info("series %s contoured in %.1f s (%d images, %d structures)", series, seconds, len(ct.datasets), len(summary["structures"]))
        flagged = [f"{n} {s['quality']:.2f}" for n, s in summary["structures"].items() if s.get("review")]
        if flagged:  # the model's quality estimate (issue 21): the contours to check first
            log.warning("series %s: review first (quality estimate below %.2f): %s", series, summary.get("quality_threshold", 0), ", ".join(flagged))
        self.events.append({"series": series, "state": "contoured", "seconds": round(seconds, 3), "images": len(ct.datasets)})
        self._record_series("contour", study, sender, f"series {series}: {len(summary['structures'])} structures, "
                            f"model {summary.get('model', '?')}, {seconds:.1f} s")
        if (out / STAGED).is_dir():
            self._queue(out / STAGED)

    def _queue(self, staged: Path) -> None:
        """Move a published result's staged outbox entry (``done/<study>/<series>/.outbox``) to ``outbox/``."""
        series = staged.parent.name
        outbox = self._inside(self.root / "outbox" / series)
        if outbox.exists():
            outbox = self._inside(self.root / "outbox" / f"{series}.{_utc_stamp()}")
        os.rename(staged, outbox)

    def _fail(self, folder: Path, study: str, series: str, reason: str) -> Path:
        """Move ``folder`` to a new ``failed/<study>/<series>.<UTC time>/`` with ``error.txt``."""
        base = self._inside(self.root / "failed" / study)
        base.mkdir(parents=True, exist_ok=True)
        stamp = _utc_stamp()
        dest, n = base / f"{series}.{stamp}", 2
        while dest.exists():
            dest, n = base / f"{series}.{stamp}-{n}", n + 1
        os.rename(folder, dest)
        for marker in (RECEIVING, INTERRUPTED, SENDER):
            (dest / marker).unlink(missing_ok=True)
        (dest / "error.txt").write_text(reason + "\n")
        _remove_if_empty(folder.parent)
        log.error("series %s failed: %s", series, reason)
        self.events.append({"series": series, "state": "failed", "reason": reason, "folder": str(dest.relative_to(self.root))})
        return dest

    # ---- forwarding ---------------------------------------------------------------------------
    def _send_outbox(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            if self.cfg.forward is None:
                continue
            for item in sorted((self.root / "outbox").glob("*/state.json")):
                if self._stop.is_set():
                    break
                try:
                    self._try_send(item)
                except Exception as exc:  # a damaged outbox entry must not stop the sender
                    log.error("outbox %s: %s: %s", item.parent.name, type(exc).__name__, exc)

    def _try_send(self, item: Path) -> None:
        state = json.loads(item.read_text())
        now = time.time()
        if now < state.get("next_try", 0.0):
            return
        name = state.get("series", item.parent.name)
        ok, why = self._send(item.parent)
        if ok:
            if self._on_event is not None:
                ae_title, host, port = self.cfg.forward
                files = sorted(p.name for p in item.parent.glob("*.dcm"))
                self._record("forward", ae_title, state.get("study"), _first_patient_id(item.parent), f"{host}:{port}",
                             f"series {name}: {', '.join(files)} (attempt {state['attempts'] + 1})")
            shutil.rmtree(item.parent)
            waited = time.time() - state.get("received_at", now)
            (log.warning if state.get("undeliverable") else log.info)(
                "series %s: contours sent to %s (attempt %d, %.0f s after contouring)", name, self.cfg.forward[0], state["attempts"] + 1, waited)
            self.events.append({"series": name, "state": "sent", "attempts": state["attempts"] + 1,
                                "seconds_since_contoured": round(waited, 3)})
            return
        state["attempts"] += 1
        state["last_error"] = why
        state["last_try"] = now
        delay = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** min(state["attempts"] - 1, 40))
        state["next_try"] = now + delay
        waited = now - state.get("received_at", now)
        alert = waited >= self.cfg.alert_after_s and now - state.get("alerted_at", 0.0) >= self.cfg.alert_every_s
        if alert:
            state["undeliverable"] = True
            state["alerted_at"] = now
        tmp = item.with_name(".state.json.part")
        tmp.write_text(json.dumps(state))
        tmp.replace(item)
        if alert:
            log.error("series %s: contours NOT DELIVERED to %s for %.0f min (%d attempts; %s); they stay in the outbox "
                      "and are retried every %.0f s", name, self.cfg.forward[0], waited / 60, state["attempts"], why, delay)
            self.events.append({"series": name, "state": "undeliverable", "attempts": state["attempts"], "reason": why})
        else:
            log.warning("series %s: send failed (%s); retry %d in %.0f s", name, why, state["attempts"], delay)

    def _send(self, folder: Path) -> tuple[bool, str]:
        ae_title, host, port = self.cfg.forward
        return c_store(sorted(folder.glob("*.dcm")), ae_title, host, port, calling_ae=self.cfg.ae_title)

    def status(self) -> dict[str, Any]:
        return node_status(self.root, alert_after_s=self.cfg.alert_after_s)


def _received_record(done: Path) -> dict[str, Any]:
    """What a done series was made from (``received.json``; for results of older versions, the
    file names of its kept images)."""
    try:
        return json.loads((done / RECEIVED).read_text())
    except (OSError, ValueError):
        uids = sorted(p.stem for p in (done / "ct").rglob("*.dcm"))
        return {"sop_instance_uids": uids, "images": len(uids)}


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
