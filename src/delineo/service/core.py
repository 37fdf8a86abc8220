"""The service context (settings, database, files, queue) and the contouring job itself."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
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
from delineo.service.retention import retention_loop
from delineo.service.storage import Storage

log = logging.getLogger("delineo.service")

#: this process in ``jobs.worker`` (one ``delineo worker`` or server per host and pid)
WORKER_ID = f"{socket.gethostname()[:100]}:{os.getpid()}"

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
        from delineo.service.audit import use_secret

        use_secret(settings.home)  # the access log's pseudonym key, beside the database (made on first start)
        self.db = Database(settings.database_url)
        self.storage = Storage(settings)
        self.queue = JobQueue(settings, _run_job_task)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._retention: threading.Thread | None = None
        with _current_lock:
            _current = self

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, *, consumer: bool, print_admin: bool = True, admin: bool = True, reaper: bool | None = None,
              retention: bool | None = None) -> str | None:
        """Migrate, create the first admin, re-queue interrupted jobs, start consumers, the reaper
        (jobs of dead workers back to the queue) and the retention thread (``retention_days``;
        default: in the process that creates the admin, i.e. the server, not ``delineo worker``).
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
        self.requeue_interrupted(stale_after_s=None if self.settings.embedded_queue else self.settings.job_stale_s)
        if consumer:
            self.queue.start_consumer()
        if consumer if reaper is None else reaper:
            self._reaper = threading.Thread(target=self._reap_loop, name="delineo-reaper", daemon=True)
            self._reaper.start()
        if (admin if retention is None else retention) and self.settings.retention_days > 0:
            self._retention = threading.Thread(target=retention_loop, args=(self, self._stop), name="delineo-retention", daemon=True)
            self._retention.start()
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
        while not self._stop.wait(min(30.0, self.settings.job_stale_s / 3)):
            try:
                self.requeue_interrupted(stale_after_s=self.settings.job_stale_s)
            except Exception:  # pragma: no cover - keep the loop alive
                log.exception("re-queueing stale jobs failed")

    def requeue_interrupted(self, stale_after_s: float | None) -> list[str]:
        """Put jobs left ``running`` by a process that died (no heartbeat for ``stale_after_s``;
        None: every running job, at the start of the embedded server) back on the queue.

        Also re-send ``queued`` jobs: all of them with ``stale_after_s=None``; otherwise those
        untouched for ``stale_after_s`` while the queue holds fewer messages than there are queued
        jobs (a worker killed between taking the message and claiming the job lost it). A job
        sent twice runs once: :meth:`run_job` claims it in the database first."""
        now = utcnow()
        ids: list[str] = []
        with self.db.session() as s:
            q = select(Job.id).where(Job.state == "running")
            if stale_after_s is not None:
                cutoff = now - timedelta(seconds=stale_after_s)
                q = q.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            for job_id in list(s.scalars(q)):
                # conditional, so that two reapers (or a reaper and a late heartbeat) cannot both act
                cond = update(Job).where(Job.id == job_id, Job.state == "running")
                if stale_after_s is not None:
                    cond = cond.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
                if s.execute(cond.values(state="queued", stage="re-queued after an interruption", progress=0.0,
                                         heartbeat_at=now)).rowcount == 1:
                    ids.append(job_id)
            if ids:
                log.warning("re-queued %d job(s) of a process that stopped: %s", len(ids), ", ".join(ids))
            if stale_after_s is None:
                ids += [j for j in s.scalars(select(Job.id).where(Job.state == "queued")) if j not in ids]
            else:
                waiting = list(s.scalars(select(Job.id).where(Job.state == "queued")))
                if waiting and self.queue.pending() < len(waiting):
                    lost = [j for j in s.scalars(select(Job.id).where(
                        Job.state == "queued", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
                        Job.created_at < cutoff)) if j not in ids]
                    if lost:
                        s.execute(update(Job).where(Job.id.in_(lost), Job.state == "queued").values(heartbeat_at=now))
                        log.warning("re-sent %d queued job(s) missing from the queue", len(lost))
                        ids += lost
        for job_id in ids:
            self.queue.enqueue(job_id)
        return ids

    # ---- jobs ---------------------------------------------------------------------------------
    def _set(self, job_id: str, attempt: int | None = None, **values: Any) -> int:
        """Update a running job; with ``attempt`` only while that attempt still holds it (a worker
        that was given up on and comes back changes nothing)."""
        with self.db.session() as s:
            q = update(Job).where(Job.id == job_id, Job.state == "running")
            if attempt is not None:
                q = q.where(Job.attempts == attempt)
            return s.execute(q.values(**values)).rowcount

    def run_job(self, job_id: str) -> None:
        """Claim the job (queued -> running, one more attempt), contour into a folder of this
        attempt, and publish it as the job's results only while the attempt still holds the job.

        At-least-once with a fence: a job whose worker died is re-queued by the reaper and run
        again; every attempt writes its own folder, and only the attempt that sets ``done`` moves
        its folder into place (in the same transaction), so delivered results are never
        overwritten or deleted by an attempt that was given up on."""
        now = utcnow()
        with self.db.session() as s:
            claimed = s.execute(
                update(Job).where(Job.id == job_id, Job.state == "queued").values(
                    state="running", stage="starting", progress=0.0, started_at=now, heartbeat_at=now,
                    attempts=Job.attempts + 1, error=None, finished_at=None, worker=WORKER_ID)
            ).rowcount
            if claimed != 1:
                return  # done, failed, deleted, or claimed by another worker
            job = s.get(Job, job_id)
            study = job.study
            attempt = job.attempts
            study_id, kind, rel, model, structures = study.id, study.kind, study.input_path, job.model, job.structures
            title = study.name
        out = self.storage.results_dir(study_id, job_id)
        work = out.with_name(f".{job_id}.attempt{attempt}")
        shutil.rmtree(work, ignore_errors=True)
        beat_stop = threading.Event()

        def heartbeat() -> None:
            while not beat_stop.wait(self.settings.job_heartbeat_s):
                if self._set(job_id, attempt, heartbeat_at=utcnow()) == 0:
                    return  # given up on, deleted, or finished

        threading.Thread(target=heartbeat, name=f"heartbeat-{job_id[:8]}", daemon=True).start()

        def progress(stage: str, fraction: float) -> None:
            self._set(job_id, attempt, stage=stage, progress=float(max(0.0, min(1.0, fraction))), heartbeat_at=utcnow())

        from delineo import api
        from delineo.errors import DelineoError

        try:
            source = self.storage.input_path(study_id, rel)
            if kind == "dicom":
                source = self.dicom_input(study_id, source)
            t0 = time.perf_counter()
            api.contour(source, work, model=model, structures=structures, device=self.settings.device, progress=progress,
                        title=title)
            summary_path = work / "summary.json"
            if summary_path.is_file():
                summary = json.loads(summary_path.read_text())
                summary["service_seconds"] = round(time.perf_counter() - t0, 3)
                summary_path.write_text(json.dumps(summary, indent=2) + "\n")
            carried = self._add_to_current(study_id, job_id, model, structures, work, source if kind == "dicom" else None,
                                           image=source, title=title)
            if not self._publish(job_id, attempt, work, out, carried):
                shutil.rmtree(work, ignore_errors=True)
                with self.db.session() as s:
                    if s.get(Job, job_id) is None:  # the study was deleted meanwhile: leave no folder behind
                        self.storage.delete_study(study_id)
                log.warning("job %s attempt %d finished after it was given up on or deleted; its output is discarded", job_id, attempt)
        except DelineoError as exc:
            self._fail(job_id, attempt, self._clean_message(str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported on the job; the consumer keeps going
            log.exception("job %s failed", job_id)
            self._fail(job_id, attempt, self._clean_message(f"contouring failed: {exc.__class__.__name__}: {exc}"))
        finally:
            beat_stop.set()

    def _add_to_current(self, study_id: str, job_id: str, model: str, structures: list[str] | None, work: Path,
                        dicom_input: Path | None, image: Path | None = None, title: str = "") -> tuple | None:
        """A job on a subset of the model's structures adds to the study's current version (see
        :mod:`delineo.service.versions`): the other structures are copied into ``work`` with their
        corrections; returns what :meth:`_publish` needs to carry their reviews over, or None."""
        if not structures:
            return None
        from delineo.service import review, versions

        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None:
                return None
            base = versions.current_job(self.storage.study_dir(study_id), [j for j in study.jobs if j.id != job_id])
            if base is None or base.model != model:
                return None
            base_id = base.id
        sd = self.storage.study_dir(study_id)
        base_dir = review.result_dir(sd, self.storage.results_dir(study_id, base_id), base_id)
        state = versions.merge_into(work, base_dir, review.read_state(sd, base_id), base_job=base_id, subset=list(structures))
        try:
            versions.write_merged_dicom(work, dicom_input, model)
        except Exception:  # noqa: BLE001 - the masks are merged; the DICOM files stay the subset's
            log.exception("writing the merged RT Structure Set of job %s failed", job_id)
        if image is not None and (work / "overview.png").is_file():
            try:
                versions.write_merged_overview(work, image, title)
            except Exception:  # noqa: BLE001 - the overview stays the subset's
                log.exception("drawing the merged overview of job %s failed", job_id)
        return (state, dicom_input, model) if state else None

    def _publish(self, job_id: str, attempt: int, work: Path, out: Path, carried: tuple | None = None) -> bool:
        """Set ``done`` and move ``work`` to ``out`` in one transaction, if ``attempt`` still holds
        the job. Readers see ``done`` only once the files are in place (with ``carried``: the
        reviews and corrections a subset job keeps, see :meth:`_add_to_current`)."""
        if carried:
            from delineo.service import versions

            study_dir = out.parent.parent
            versions.carry_over(study_dir, job_id, work, *carried)
        with self.db.session() as s:
            done = s.execute(update(Job).where(Job.id == job_id, Job.state == "running", Job.attempts == attempt).values(
                state="done", stage="done", progress=1.0, finished_at=utcnow(), heartbeat_at=utcnow())).rowcount
            if done != 1:
                return False
            if out.exists():  # written by an attempt that never reached done: never delivered
                shutil.rmtree(out)
            work.replace(out)
        for stale in out.parent.glob(f".{job_id}.attempt*"):  # folders of attempts given up on
            shutil.rmtree(stale, ignore_errors=True)
        return True

    def _fail(self, job_id: str, attempt: int | None, message: str) -> None:
        self._set(job_id, attempt, state="failed", stage="failed", error=message[:2000], finished_at=utcnow())

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
                from delineo.service.public import public_summary_bytes

                zf.writestr("summary.json", public_summary_bytes(results / "summary.json"))  # no server paths
        return buf.getvalue()


def latest_done_job(study: Study) -> Job | None:
    done = [j for j in study.jobs if j.state == "done"]
    return max(done, key=lambda j: (j.finished_at or j.created_at)) if done else None
