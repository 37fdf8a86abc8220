"""A DICOM node for the planning workflow (pynetdicom): receive CT, contour it, send the contours on.

- C-ECHO answered; C-STORE accepted for CT Image Storage only, and only from the configured
  calling AE titles (other associations are rejected).
- Every instance is written durably (temporary file, fsync, rename) under
  ``storage/incoming/<study>/<series>/`` *before* success is returned to the sender.
- A series is complete when nothing has arrived for it for ``idle_seconds``; it is then
  contoured with :func:`delineo.api.contour` (the bundled CT model unless another is named).
- The RT Structure Set (and the DICOM SEG) are queued under ``storage/outbox/`` and sent by
  C-STORE to the forward destination, retried with exponential back-off while it is down.
- A series that cannot be contoured is moved to ``storage/failed/`` with the reason; the node
  goes on. After a restart, series left in ``incoming`` are contoured and the outbox is resent.
- Logs name studies by UID and patients by a short hash of the Patient ID, never by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import CTImageStorage, RTStructureSetStorage, SegmentationStorage, Verification

from delineo.errors import ConfigError, DelineoError

log = logging.getLogger("delineo.dicom.node")


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


def patient_tag(ds) -> str:
    """A short, stable pseudonym for log lines: never the patient's name."""
    return hashlib.sha256(str(ds.get("PatientID", "")).encode()).hexdigest()[:10]


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
    retry_max_s: float = 300.0
    max_attempts: int = 20
    poll_s: float = 0.5
    structures: Sequence[str] | None = None
    keep_images: bool = True  # keep the received CT under done/<study>/<series>/ct


def _durable_write(ds, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class DicomNode:
    """Storage SCP + contouring worker + forwarding SCU. ``start()`` returns once listening."""

    def __init__(self, config: NodeConfig):
        self.cfg = config
        self.root = Path(config.storage)
        for sub in ("incoming", "work", "done", "failed", "outbox"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._last_seen: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._predictor = None
        self.events: list[dict] = []  # what happened, for status and tests (no patient data)

    # ---- receiving ---------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        return 0x0000

    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            if str(ds.get("Modality", "")) != "CT":
                log.warning("refused instance of modality %s from %s", ds.get("Modality", "?"), event.assoc.requestor.ae_title)
                return 0xA900  # dataset does not match SOP class
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            folder = self.root / "incoming" / study / series
            _durable_write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
            with self._lock:
                if folder not in self._last_seen:
                    log.info("receiving series %s (patient %s)", series, patient_tag(ds))
                self._last_seen[folder] = time.monotonic()
            return 0x0000
        except Exception as exc:  # never let one bad instance take the node down
            log.error("could not store an instance: %s", exc)
            return 0xA700  # out of resources

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "DicomNode":
        ae = AE(ae_title=self.cfg.ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
        if self.cfg.allowed_ae:
            ae.require_calling_aet = list(self.cfg.allowed_ae)
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
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
        """Series left in incoming (or mid-contouring) by a previous run are taken up again."""
        for folder in list((self.root / "work").glob("*/*")):
            dest = self.root / "incoming" / folder.parent.name / folder.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(dest))
        now = time.monotonic()
        for folder in (self.root / "incoming").glob("*/*"):
            if folder.is_dir():
                self._last_seen[folder] = now

    # ---- contouring ----------------------------------------------------------------------------
    def _watch_series(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            with self._lock:
                ready = [f for f, t in self._last_seen.items() if time.monotonic() - t >= self.cfg.idle_seconds]
                for f in ready:
                    del self._last_seen[f]
            for folder in ready:
                try:
                    self._contour(folder)
                except Exception as exc:  # e.g. the disk is full: log it, keep the node running
                    log.error("series %s: %s: %s", folder.name, type(exc).__name__, exc)
                    self.events.append({"series": folder.name, "state": "failed", "reason": f"{type(exc).__name__}: {exc}"})

    def _predictor_for(self):
        if self._predictor is None:
            from delineo.api import default_model
            from delineo.inference.predictor import Predictor

            self._predictor = Predictor(self.cfg.model or default_model(3), self.cfg.device)
        return self._predictor

    def _contour(self, folder: Path) -> None:
        study, series = folder.parent.name, folder.name
        work = self.root / "work" / study / series
        work.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(work))
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()
        out = self.root / "done" / study / series
        t0 = time.perf_counter()
        try:
            from delineo.api import contour_image
            from delineo.dicom.series import read_series

            ct = read_series(work)
            summary = contour_image(ct.image, out, predictor=self._predictor_for(), series=ct, source=f"series {series}",
                                    structures=self.cfg.structures, overview=True)
        except Exception as exc:  # a bad study must not stop the node
            failed = self.root / "failed" / study / series
            failed.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work), str(failed))
            reason = str(exc) if isinstance(exc, DelineoError) else f"{type(exc).__name__}: {exc}"
            (failed / "error.txt").write_text(reason + "\n")
            log.error("series %s failed: %s", series, reason.replace(str(work), "<series>"))
            self.events.append({"series": series, "state": "failed", "reason": reason})
            return
        if self.cfg.keep_images:
            shutil.move(str(work), str(out / "ct"))
        else:
            shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()
        except OSError:
            pass
        seconds = time.perf_counter() - t0
        log.info("series %s contoured in %.1f s (%d structures)", series, seconds, len(summary["structures"]))
        self.events.append({"series": series, "state": "contoured", "seconds": round(seconds, 3)})
        if self.cfg.forward is None:
            return
        outbox = self.root / "outbox" / series
        outbox.mkdir(parents=True, exist_ok=True)
        files = [summary["rtstruct"]] + ([summary["seg"]] if self.cfg.send_seg and "seg" in summary else [])
        for f in files:
            shutil.copy2(f, outbox / Path(f).name)
        (outbox / "state.json").write_text(json.dumps({"attempts": 0, "next_try": 0.0, "received_at": time.time()}))

    # ---- forwarding ---------------------------------------------------------------------------
    def _send_outbox(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            if self.cfg.forward is None:
                continue
            for item in sorted((self.root / "outbox").glob("*/state.json")):
                try:
                    self._try_send(item)
                except Exception as exc:  # a damaged outbox entry must not stop the sender
                    log.error("outbox %s: %s: %s", item.parent.name, type(exc).__name__, exc)

    def _try_send(self, item: Path) -> None:
        state = json.loads(item.read_text())
        if time.time() < state["next_try"]:
            return
        ok, why = self._send(item.parent)
        if ok:
            shutil.rmtree(item.parent)
            log.info("series %s: contours sent to %s", item.parent.name, self.cfg.forward[0])
            self.events.append({"series": item.parent.name, "state": "sent", "attempts": state["attempts"] + 1,
                                "seconds_since_contoured": round(time.time() - state["received_at"], 3)})
            return
        state["attempts"] += 1
        delay = min(self.cfg.retry_max_s, self.cfg.retry_initial_s * 2 ** (state["attempts"] - 1))
        if state["attempts"] >= self.cfg.max_attempts:
            dest = self.root / "failed" / f"send-{item.parent.name}"
            shutil.move(str(item.parent), str(dest))
            log.error("series %s: giving up sending after %d attempts (%s)", item.parent.name, state["attempts"], why)
            self.events.append({"series": item.parent.name, "state": "send_failed", "reason": why})
            return
        state["next_try"] = time.time() + delay
        item.write_text(json.dumps(state))
        log.warning("series %s: send failed (%s); retry %d in %.0f s", item.parent.name, why, state["attempts"], delay)

    def _send(self, folder: Path) -> tuple[bool, str]:
        ae_title, host, port = self.cfg.forward
        ae = AE(ae_title=self.cfg.ae_title)
        ae.add_requested_context(RTStructureSetStorage)
        ae.add_requested_context(SegmentationStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = ae.associate(host, port, ae_title=ae_title)
        if not assoc.is_established:
            return False, f"no association with {ae_title}@{host}:{port}"
        try:
            for f in sorted(folder.glob("*.dcm")):
                status = assoc.send_c_store(pydicom.dcmread(f))
                if not status or int(status.Status) not in (0x0000, 0xB000, 0xB007, 0xB006):
                    return False, f"C-STORE of {f.name} answered {getattr(status, 'Status', 'nothing'):#06x}" if status else f"no answer to C-STORE of {f.name}"
            return True, ""
        finally:
            assoc.release()
