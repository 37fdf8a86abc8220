"""Receiving: the association and DIMSE handlers of the node's Storage SCP (C-ECHO, C-STORE, the
end of an association), the checks of each instance before it is stored, refusals for the access
log. Mixed into :class:`~delineo.dicom.node.server.DicomNode`, whose state (``cfg``, ``_lock``,
``_open``, ``_last_seen``...) it uses."""

from __future__ import annotations

import json
import time

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_RELEASE_RQ

try:  # pynetdicom's debug-logging handler for received DIMSE messages (private; absent: nothing to wrap)
    from pynetdicom._handlers import standard_dimse_recv_handler as _standard_dimse_recv
except ImportError:  # pragma: no cover
    _standard_dimse_recv = None

from delineo.dicom.node.common import INTERRUPTED, RECEIVING, SENDER, _durable_write, log, patient_tag
from delineo.dicom.node.completion import slice_info
from delineo.dicom.series import CT_IMAGE_STORAGE, instance_problem


def _failure_status(status: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (LO: at most 64 characters) for the sender."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds



def _peer(assoc) -> tuple[str, str | None]:
    """The calling AE title and ``address:port`` of an association's requestor."""
    req = getattr(assoc, "requestor", None)
    ae = str(getattr(req, "ae_title", "") or "?").strip()
    address = getattr(req, "address", None)
    port = getattr(req, "port", None)
    return ae, (f"{address}:{port}" if address and port else address)



class Receiving:
    """The Storage SCP's event handlers (bound in :meth:`DicomNode.start`)."""

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
                self._released.pop(folder, None)
                if first_here:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / RECEIVING).write_text(json.dumps({"since": time.time(), "from": str(peer)}))
                    if self._on_event is not None:
                        ae, address = _peer(event.assoc)
                        (folder / SENDER).write_text(json.dumps({"ae_title": ae, "address": address}))
            if new_series:
                log.info("receiving series %s (patient %s)", series, patient_tag(ds, self._pseudonym_key))
            _durable_write(ds, target)
            info = slice_info(ds)
            with self._lock:
                self._last_seen[folder] = time.monotonic()
                self._slices.setdefault(folder, {})[sop] = info
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

    def _on_pdu_recv(self, event) -> None:
        """Note a peer's A-RELEASE-RQ. pynetdicom sets ``is_released`` in the association's thread only
        after it has sent the release response, and the connection-closed event of that release runs
        in another thread (the peer closes on the response): on a loaded machine it came first, and a
        released series was held as interrupted. The request, seen in order before the close, decides."""
        if isinstance(event.pdu, A_RELEASE_RQ):
            self._release_requested.add(id(event.assoc))

    def _on_conn_close(self, event) -> None:
        """The end of an association: normal (released) or not (aborted, connection lost)."""
        assoc = event.assoc
        with self._lock:
            folders = self._open.pop(id(assoc), set())
            requested = id(assoc) in self._release_requested
            self._release_requested.discard(id(assoc))
            normal = (bool(getattr(assoc, "is_released", False)) or requested) and not bool(getattr(assoc, "is_aborted", False))
            for folder in folders:
                still_open = any(folder in f for f in self._open.values())
                if not still_open:
                    (folder / RECEIVING).unlink(missing_ok=True)
                if normal:
                    (folder / INTERRUPTED).unlink(missing_ok=True)
                    self._held.discard(folder)
                    if not still_open:
                        self._released[folder] = self._stack_state(folder)
                elif folder.is_dir():
                    self._released.pop(folder, None)
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
