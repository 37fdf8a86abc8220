"""The outbox: results waiting under ``outbox/`` are sent by C-STORE to the forward destination,
retried without end (the interval doubling up to a ceiling), flagged undeliverable after a while.
:class:`Outbox` is mixed into :class:`~delineo.dicom.node.server.DicomNode`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from delineo.dicom.node.common import _first_patient_id, log
from delineo.dicom.scu import c_store


class Outbox:
    """The sender thread and one delivery attempt."""

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
