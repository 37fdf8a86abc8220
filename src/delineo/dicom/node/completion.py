"""Completing a series: when a received series is judged (at the release of its association when
its images form a complete stack, else after the idle time), what happens to it then (held as
incomplete, recognised as a resend, or contoured), and the consistency a whole series must have.
:class:`Completion` is mixed into :class:`~delineo.dicom.node.server.DicomNode`."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from delineo.dicom.node.common import INTERRUPTED, SeriesIncomplete, _received_record, _remove_if_empty, log


@dataclass(frozen=True)
class SliceInfo:
    """What the completeness rule needs of one received image (kept from its C-STORE)."""
    position: tuple[float, ...]
    orientation: tuple[float, ...]
    instance: int | None
    count: int | None  # ImagesInAcquisition
    acquisition: str



def slice_info(ds) -> SliceInfo:
    def integer(keyword: str) -> int | None:
        value = ds.get(keyword)
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    return SliceInfo(tuple(float(v) for v in ds.ImagePositionPatient), tuple(float(v) for v in ds.ImageOrientationPatient),
                     integer("InstanceNumber"), integer("ImagesInAcquisition"), str(ds.get("AcquisitionNumber", "")))



COUNTED, UNCOUNTED, NOT_COMPLETE = "counted", "uncounted", "not complete"


def stack_state(slices: Sequence[SliceInfo], min_slices: int) -> str:
    """Whether received images form a whole series: :data:`COUNTED` when they form a complete stack
    and say how many there are (ImagesInAcquisition, one acquisition) and that many are here;
    :data:`UNCOUNTED` when they form a complete stack without saying how many (its first part may
    be a complete stack too); :data:`NOT_COMPLETE` otherwise (too few, mixed orientations, a gap,
    uneven spacing, a repeated position, instance numbers not contiguous from 1, fewer or more
    images than the count)."""
    n = len(slices)
    if n < max(2, min_slices):
        return NOT_COMPLETE
    iop = np.array(slices[0].orientation)
    if iop.shape != (6,) or any(not np.allclose(s.orientation, iop, atol=1e-4) for s in slices):
        return NOT_COMPLETE
    along = np.sort(np.array([s.position for s in slices]) @ np.cross(iop[:3], iop[3:]))
    steps = np.diff(along)
    dz = float(np.median(steps))
    if np.any(steps < 1e-3) or np.any(np.abs(steps - dz) > max(0.01, 0.01 * dz)):
        return NOT_COMPLETE
    numbers = [s.instance for s in slices]
    if all(v is not None for v in numbers) and sorted(numbers) != list(range(1, n + 1)):
        return NOT_COMPLETE
    counts, acquisitions = {s.count for s in slices}, {s.acquisition for s in slices}
    if len(counts) == 1 and None not in counts and len(acquisitions) == 1:
        return COUNTED if counts == {n} else NOT_COMPLETE
    return UNCOUNTED



class Completion:
    """The watcher thread that judges series, and what it does with each."""

    def _stack_state(self, folder: Path) -> str:
        """:func:`stack_state` of what this run received of the series in ``folder``; not complete when
        the folder holds images this run did not receive (an earlier run's, before a restart)."""
        slices = self._slices.get(folder, {})
        if self.cfg.settle_seconds is None or len(list(folder.glob("*.dcm"))) != len(slices):
            return NOT_COMPLETE
        return stack_state(list(slices.values()), self.cfg.min_slices)

    def _watch_series(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            now = time.monotonic()
            with self._lock:
                busy = set().union(*self._open.values()) if self._open else set()
                idle = [f for f, t in self._last_seen.items() if f not in busy and self._complete(f, now - t)]
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
                    self._slices.pop(f, None)
                    self._released.pop(f, None)
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

    def _complete(self, folder: Path, idle_s: float) -> bool:
        """Whether a series no association is sending is to be judged now, ``idle_s`` after its last
        image or release: its release showed a complete stack (at once with an image count, else
        after the settle time), or it has been idle for ``idle_seconds``."""
        if idle_s >= self.cfg.idle_seconds:
            return True
        state = self._released.get(folder)
        if state == COUNTED or (state == UNCOUNTED and idle_s >= (self.cfg.settle_seconds or 0.0)):
            log.info("series %s: complete at the release of its association (%s stack of %d images)",
                     folder.name, state, len(self._slices.get(folder, {})))
            return True
        return False

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
