"""The node itself: :class:`DicomNode` joins receiving, completing, contouring and the outbox
(each in its module), starts and stops the server and its threads, and takes up what a previous
run left in its storage."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from delineo.dicom.node.common import (CONTOURING, FAILED_SEND_PREFIX, INTERRUPTED, RECEIVED, RECEIVING, STAGED, EventRecorder,
                                       NodeConfig, _remove_if_empty, log)
from delineo.dicom.node.completion import Completion, SliceInfo
from delineo.dicom.node.contouring import Contouring
from delineo.dicom.node.outbox import Outbox
from delineo.dicom.node.receiving import Receiving
from delineo.dicom.node.status import node_status
from delineo.dicom.series import is_valid_uid
from delineo.errors import DelineoError
from delineo.pseudonym import load_secret


class DicomNode(Receiving, Completion, Contouring, Outbox):
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
        self._slices: dict[Path, dict[str, SliceInfo]] = {}  # series folder -> SOP Instance UID -> its slice
        self._released: dict[Path, str] = {}  # series folder -> stack_state when the last association writing it was released
        self._release_requested: set[int] = set()  # associations whose peer sent A-RELEASE-RQ
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

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "DicomNode":
        ae = AE(ae_title=self.cfg.ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
        if self.cfg.allowed_ae:
            ae.require_calling_aet = list(self.cfg.allowed_ae)
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_conn_close),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_DIMSE_RECV, self._on_dimse_recv), (evt.EVT_CONN_OPEN, self._on_conn_open),
                    (evt.EVT_PDU_RECV, self._on_pdu_recv)]
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

    def status(self) -> dict[str, Any]:
        return node_status(self.root, alert_after_s=self.cfg.alert_after_s)
