"""Contouring and publishing: a judged series is contoured (:func:`delineo.api.contour_image`) into
``work/<study>/<series>.contouring``, published into ``done/`` by one rename, its results queued
in the outbox; a series that cannot be contoured goes to ``failed/``. :class:`Contouring` is mixed
into :class:`~delineo.dicom.node.server.DicomNode`."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from delineo.dicom.node.common import (CONTOURING, INTERRUPTED, RECEIVED, RECEIVING, SENDER, STAGED, _first_patient_id,
                                       _fsync_dir, _remove_if_empty, _utc_stamp, log)
from delineo.errors import DelineoError


class Contouring:
    """Contour a judged series, publish the result, queue it; or fail it."""

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

    def _predictor_for(self):
        if self._predictor is None:
            from delineo.api import default_model
            from delineo.inference.predictor import Predictor

            self._predictor = Predictor(self.cfg.model or default_model(3), self.cfg.device)
        return self._predictor

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
