"""The service context (settings, database, files, queue) and the contouring job itself."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update

from delineo.service.config import Settings
from delineo.service.db import Database
from delineo.service.models import Job, Study, utcnow
from delineo.service.queue import JobQueue
from delineo.service.storage import Storage

log = logging.getLogger("delineo.service")

HEARTBEAT_S = 10.0
STALE_AFTER_S = 90.0

_current: "ServiceContext | None" = None
_current_lock = threading.Lock()


def current() -> "ServiceContext":
    if _current is None:
        raise RuntimeError("the delineo service is not initialised")
    return _current


def _run_job_task(job_id: str) -> None:
    """What the huey task runs (in the server's consumer threads or in ``delineo worker``)."""
    current().run_job(job_id)


class ServiceContext:
    def __init__(self, settings: Settings):
        global _current
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.database_url)
        self.storage = Storage(settings)
        self.queue = JobQueue(settings, _run_job_task)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        with _current_lock:
            _current = self

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, *, consumer: bool, print_admin: bool = True, admin: bool = True, reaper: bool | None = None) -> str | None:
        """Migrate, create the first admin, re-queue interrupted jobs, start consumers.
        Returns the generated admin password (also printed once) when one was created."""
        from delineo.service.security import ensure_admin

        self.db.migrate()
        self.storage.clean_partial_uploads()
        password = None
        if admin:
            with self.db.session() as s:
                password = ensure_admin(s, self.settings.admin_password)
        if password and print_admin:
            print(f"delineo: created user 'admin' with password: {password}  (shown once; change it or create users in the web page)", flush=True)
        # in embedded mode every job marked running belonged to a process of this server that is gone
        self.requeue_interrupted(stale_after_s=None if self.settings.embedded_queue else STALE_AFTER_S)
        if consumer:
            self.queue.start_consumer()
        if consumer if reaper is None else reaper:
            self._reaper = threading.Thread(target=self._reap_loop, name="delineo-reaper", daemon=True)
            self._reaper.start()
        return password

    def stop(self) -> None:
        global _current
        self._stop.set()
        self.queue.close()
        self.db.dispose()
        with _current_lock:
            if _current is self:
                _current = None

    def _reap_loop(self) -> None:
        while not self._stop.wait(30.0):
            try:
                self.requeue_interrupted(stale_after_s=STALE_AFTER_S)
            except Exception:  # pragma: no cover - keep the loop alive
                log.exception("re-queueing stale jobs failed")

    def requeue_interrupted(self, stale_after_s: float | None) -> list[str]:
        """Put jobs left ``running`` (by a process that died) back on the queue; also re-send
        ``queued`` jobs on start-up, in case the queue lost them (running one twice is prevented
        by the claim in :meth:`run_job`)."""
        ids: list[str] = []
        with self.db.session() as s:
            q = select(Job).where(Job.state == "running")
            if stale_after_s is not None:
                cutoff = utcnow() - timedelta(seconds=stale_after_s)
                q = q.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            for job in s.scalars(q):
                job.state, job.stage, job.progress = "queued", "re-queued after an interruption", 0.0
                ids.append(job.id)
            if stale_after_s is None:
                ids += [j for j in s.scalars(select(Job.id).where(Job.state == "queued")) if j not in ids]
        for job_id in ids:
            self.queue.enqueue(job_id)
        if ids:
            log.warning("re-queued %d interrupted job(s)", len(ids))
        return ids

    # ---- jobs ---------------------------------------------------------------------------------
    def _set(self, job_id: str, only_running: bool = True, **values: Any) -> int:
        with self.db.session() as s:
            q = update(Job).where(Job.id == job_id)
            if only_running:
                q = q.where(Job.state == "running")
            return s.execute(q.values(**values)).rowcount

    def run_job(self, job_id: str) -> None:
        now = utcnow()
        with self.db.session() as s:
            claimed = s.execute(
                update(Job).where(Job.id == job_id, Job.state == "queued").values(
                    state="running", stage="starting", progress=0.0, started_at=now, heartbeat_at=now,
                    attempts=Job.attempts + 1, error=None, finished_at=None)
            ).rowcount
            if claimed != 1:
                return  # done, failed, deleted, or claimed by another worker
            job = s.get(Job, job_id)
            study = job.study
            study_id, kind, rel, model, structures = study.id, study.kind, study.input_path, job.model, job.structures
        out = self.storage.results_dir(study_id, job_id)
        shutil.rmtree(out, ignore_errors=True)
        beat_stop = threading.Event()

        def heartbeat() -> None:
            while not beat_stop.wait(HEARTBEAT_S):
                self._set(job_id, heartbeat_at=utcnow())

        threading.Thread(target=heartbeat, name=f"heartbeat-{job_id[:8]}", daemon=True).start()

        def progress(stage: str, fraction: float) -> None:
            self._set(job_id, stage=stage, progress=float(max(0.0, min(1.0, fraction))), heartbeat_at=utcnow())

        from delineo import api
        from delineo.errors import DelineoError

        try:
            source = self.storage.input_path(study_id, rel)
            if kind == "dicom":
                source = self.dicom_input(study_id, source)
            t0 = time.perf_counter()
            api.contour(source, out, model=model, structures=structures, device=self.settings.device, progress=progress)
            summary_path = out / "summary.json"
            if summary_path.is_file():
                summary = json.loads(summary_path.read_text())
                summary["service_seconds"] = round(time.perf_counter() - t0, 3)
                summary_path.write_text(json.dumps(summary, indent=2) + "\n")
            if self._set(job_id, state="done", stage="done", progress=1.0, finished_at=utcnow()) == 0:
                shutil.rmtree(out, ignore_errors=True)  # the study was deleted meanwhile
        except DelineoError as exc:
            self._fail(job_id, self._clean_message(str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported on the job; the consumer keeps going
            log.exception("job %s failed", job_id)
            self._fail(job_id, self._clean_message(f"contouring failed: {exc.__class__.__name__}: {exc}"))
        finally:
            beat_stop.set()

    def _fail(self, job_id: str, message: str) -> None:
        self._set(job_id, state="failed", stage="failed", error=message[:2000], finished_at=utcnow())

    def _clean_message(self, message: str) -> str:
        """Error text for the user, without the server's directory layout."""
        return message.replace(str(self.storage.studies) + "/", "").replace(str(self.settings.home) + "/", "")

    def dicom_input(self, study_id: str, folder: Path) -> Path:
        """The DICOM folder itself when ``delineo.dicom`` can read series (RTSTRUCT/SEG written
        beside the masks); otherwise the series converted to NIfTI (masks only)."""
        try:
            import delineo.dicom  # noqa: F401

            return folder
        except ImportError:
            return self.viewer_volume_dicom(study_id, folder)

    def viewer_volume_dicom(self, study_id: str, folder: Path) -> Path:
        """The DICOM series as NIfTI for the viewer (and for contouring when delineo.dicom is absent)."""
        dest = self.storage.study_dir(study_id) / "view" / "ct.nii.gz"
        if dest.is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        image = None
        try:
            from delineo.dicom import read_series  # type: ignore[attr-defined]

            image = read_series(folder).image
        except ImportError:
            pass
        except Exception:  # fall back to SimpleITK below
            image = None
        tmp = dest.with_name("ct.tmp.nii.gz")
        if image is not None and hasattr(image, "array"):
            from delineo.data.io import write_image

            write_image(tmp, image)
        else:
            import SimpleITK as sitk

            reader = sitk.ImageSeriesReader()
            names = reader.GetGDCMSeriesFileNames(str(folder))
            if not names:
                from delineo.errors import InputError

                raise InputError(folder, "no readable DICOM image series")
            reader.SetFileNames(names)
            sitk.WriteImage(reader.Execute(), str(tmp))
        tmp.replace(dest)
        return dest

    # ---- results ------------------------------------------------------------------------------
    @staticmethod
    def nifti_zip(results: Path) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((results / "segmentations").glob("*.nii.gz")):
                zf.write(f, f"segmentations/{f.name}")
            if (results / "summary.json").is_file():
                zf.write(results / "summary.json", "summary.json")
        return buf.getvalue()


def latest_done_job(study: Study) -> Job | None:
    done = [j for j in study.jobs if j.state == "done"]
    return max(done, key=lambda j: (j.finished_at or j.created_at)) if done else None
