"""Several ``delineo worker`` processes on the machine's Redis and PostgreSQL (issue 24, item 1):
every job done exactly once; a worker killed with SIGKILL in the middle of a job: the job is run
again by another worker, never lost, never left ``running``; an attempt given up on overwrites
nothing that was delivered."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.svc import ADMIN_PASSWORD, make_settings, nifti_bytes, reachable, upload, wait_job
from waits import HANG_S, LONG_HANG_S

#: a ``delineo worker`` whose jobs pause ``argv[1]`` seconds at their first progress report (inside
#: ``api.contour``, after the claim): time to kill it in the middle of a job
SLOW_WORKER = """
import sys, time
import delineo.api as api
real, pause = api.contour, float(sys.argv[1])
def contour(source, out, progress=None, **kw):
    slept = []
    def report(stage, fraction):
        if not slept:
            slept.append(1)
            print("pausing in", stage, flush=True)
            time.sleep(pause)
        if progress is not None:
            progress(stage, fraction)
    return real(source, out, progress=report, **kw)
api.contour = contour
from delineo.cli import main
sys.exit(main(["worker"]))
"""


def _login(c):
    assert c.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    return c


class Workers:
    """``delineo worker`` processes against one queue and database, output in files."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def start(self, pause_s: float | None = None) -> subprocess.Popen:
        i = len(self.procs)
        cmd = ([sys.executable, "-c", SLOW_WORKER, str(pause_s)] if pause_s is not None
               else [str(Path(sys.executable).parent / "delineo"), "worker"])
        with (self.logs / f"worker{i}.log").open("wb") as out:
            p = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def log(self, i: int) -> str:
        return (self.logs / f"worker{i}.log").read_text(errors="replace")

    def wait_ready(self) -> None:
        t0 = time.monotonic()
        for i, p in enumerate(self.procs):
            while "delineo worker: queue" not in self.log(i):
                assert p.poll() is None, self.log(i)[-3000:]
                assert time.monotonic() - t0 < HANG_S, f"worker {i} did not start: {self.log(i)[-3000:]}"
                time.sleep(0.2)

    def all_logs(self) -> str:
        return "\n".join(f"--- worker {i}\n{self.log(i)[-2000:]}" for i in range(len(self.procs)))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def scaled_out(home, models_env, pg_url, tmp_path):
    """(server settings, worker environment) on PostgreSQL and a fresh Redis queue name; short
    heartbeat so that a dead worker's job is taken back in seconds."""
    if not reachable(6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    queue, name = "redis://127.0.0.1:6379/0", f"delineo-test-{uuid.uuid4().hex[:8]}"
    timing = dict(job_heartbeat_s=0.5, job_stale_s=6.0)
    settings = make_settings(home, queue=queue, queue_name=name, database_url=pg_url, **timing)
    env = {**os.environ, "DELINEO_HOME": str(home), "DELINEO_QUEUE": queue, "DELINEO_QUEUE_NAME": name,
           "DELINEO_DATABASE_URL": pg_url, "DELINEO_DEVICE": "cpu", "DELINEO_MODELS": str(models_env),
           "DELINEO_JOB_HEARTBEAT_S": str(timing["job_heartbeat_s"]), "DELINEO_JOB_STALE_S": str(timing["job_stale_s"]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    workers = Workers(env, tmp_path)
    yield settings, workers
    workers.stop()
    import redis

    r = redis.Redis.from_url(queue)
    for key in r.keys(f"huey.*{name}*"):
        r.delete(key)


def _jobs(ctx) -> dict[str, dict]:
    from sqlalchemy import select

    from delineo.service.models import Job

    with ctx.db.session() as s:
        return {j.id: {"state": j.state, "attempts": j.attempts, "worker": j.worker, "study": j.study_id}
                for j in s.scalars(select(Job))}


def _wait_all_finished(c, workers: Workers, job_ids: list[str], timeout: float = LONG_HANG_S) -> dict[str, dict]:
    t0 = time.monotonic()
    while True:
        jobs = _jobs(c.app.state.ctx)
        if all(jobs[j]["state"] in ("done", "failed") for j in job_ids):
            return jobs
        assert time.monotonic() - t0 < timeout, (jobs, workers.all_logs())
        time.sleep(0.3)


def _submit(c, n: int) -> list[str]:
    ids = []
    for i in range(n):
        sid = upload(c, [(f"ct{i}.nii.gz", nifti_bytes(16, seed=i))]).json()["id"]
        r = c.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def _complete(c, sid: str) -> None:
    """The study's results are all there: summary with both structures, one mask each."""
    summary = c.get(f"/api/studies/{sid}/results/summary")
    assert summary.status_code == 200, summary.text
    assert set(summary.json()["structures"]) == {"Ball", "Box"}
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(c.get(f"/api/studies/{sid}/results/nifti").content)).namelist()
    assert sorted(n for n in names if n.startswith("segmentations/")) == ["segmentations/Ball.nii.gz", "segmentations/Box.nii.gz"]


def test_three_workers_a_dozen_jobs_each_done_exactly_once(scaled_out):
    from delineo.service.api import create_app

    settings, workers = scaled_out
    with TestClient(create_app(settings)) as c:
        _login(c)
        for _ in range(3):
            workers.start()
        workers.wait_ready()
        ids = _submit(c, 12)
        jobs = _wait_all_finished(c, workers, ids)
        assert all(jobs[j]["state"] == "done" for j in ids), (jobs, workers.all_logs())
        assert [jobs[j]["attempts"] for j in ids] == [1] * 12, jobs  # each claimed, and run, once
        pids = {p.pid for p in workers.procs}
        ran = {jobs[j]["worker"] for j in ids}
        assert {int(w.rsplit(":", 1)[1]) for w in ran} <= pids and len(ran) >= 2, ran
        for j in ids:
            _complete(c, jobs[j]["study"])
        assert c.app.state.ctx.queue.pending() == 0
        assert not list((settings.home / "studies").glob("*/results/.*"))  # no attempt folders left


def test_worker_killed_mid_job_job_runs_again_on_another_worker(scaled_out):
    from delineo.service.api import create_app

    settings, workers = scaled_out
    host = socket.gethostname()
    with TestClient(create_app(settings)) as c:
        _login(c)
        doomed = workers.start(pause_s=30.0)  # its jobs stop at the first progress report, long enough to be killed there
        workers.wait_ready()
        ids = _submit(c, 4)
        t0 = time.monotonic()
        while True:  # the doomed worker holds a job, mid-way through contouring
            held = [j for j, v in _jobs(c.app.state.ctx).items() if v["state"] == "running" and v["worker"] == f"{host}:{doomed.pid}"]
            if held and "pausing in" in workers.log(0):
                break
            assert doomed.poll() is None and time.monotonic() - t0 < HANG_S, workers.all_logs()
            time.sleep(0.2)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        killed = held[0]
        assert _jobs(c.app.state.ctx)[killed]["state"] == "running"  # as a dead worker leaves it
        workers.start()
        workers.start()
        jobs = _wait_all_finished(c, workers, ids)
        assert all(jobs[j]["state"] == "done" for j in ids), (jobs, workers.all_logs())
        assert jobs[killed]["attempts"] == 2 and jobs[killed]["worker"] != f"{host}:{doomed.pid}", jobs[killed]
        assert sorted(jobs[j]["attempts"] for j in ids if j != killed) == [1, 1, 1], jobs
        for j in ids:
            _complete(c, jobs[j]["study"])
        assert not list((settings.home / "studies").glob("*/results/.*"))  # the killed attempt's folder is gone
        assert c.app.state.ctx.queue.pending() == 0


def test_an_attempt_given_up_on_overwrites_nothing_delivered(home, models_env, monkeypatch):
    """A worker that froze (its job re-queued and done by another) and then wakes up: its late
    output, its late failure and its heartbeats change nothing."""
    from delineo import api
    from delineo.service.api import create_app
    from delineo.service.models import Job

    with TestClient(create_app(make_settings(home, start_consumer=False))) as c:
        _login(c)
        sid = upload(c, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
        job_id = c.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"]
        ctx = c.app.state.ctx
        real, entered, release = api.contour, threading.Event(), threading.Event()

        def contour(source, out, **kw):
            if threading.current_thread().name == "frozen":
                entered.set()
                release.wait(HANG_S)
                real(source, out, **kw)
                (out / "summary.json").write_text(json.dumps({"from": "the frozen attempt"}))
                return None
            return real(source, out, **kw)

        monkeypatch.setattr(api, "contour", contour)
        frozen = threading.Thread(target=ctx.run_job, args=(job_id,), name="frozen")
        frozen.start()
        assert entered.wait(HANG_S)
        assert ctx.requeue_interrupted(stale_after_s=None) == [job_id]  # as the reaper does with a silent worker
        ctx.run_job(job_id)  # attempt 2, on "another worker"
        job = wait_job(c, job_id)
        assert job["state"] == "done" and job["attempts"] == 2
        delivered = {p.name: p.read_bytes() for p in (ctx.storage.results_dir(sid, job_id)).rglob("*") if p.is_file()}
        assert "summary.json" in delivered
        release.set()
        frozen.join(HANG_S)
        assert not frozen.is_alive()
        assert {p.name: p.read_bytes() for p in (ctx.storage.results_dir(sid, job_id)).rglob("*") if p.is_file()} == delivered
        assert ctx._set(job_id, 1, heartbeat_at=None) == 0
        ctx._fail(job_id, 1, "late failure of the frozen attempt")
        with ctx.db.session() as s:
            j = s.get(Job, job_id)
            assert (j.state, j.attempts, j.error) == ("done", 2, None)
        assert not list(ctx.storage.results_dir(sid, job_id).parent.glob(".*"))
        ctx.run_job(job_id)  # a duplicate message for a done job: nothing happens
        assert {p.name: p.read_bytes() for p in (ctx.storage.results_dir(sid, job_id)).rglob("*") if p.is_file()} == delivered


def test_lost_queue_message_is_sent_again(home, models_env, pg_url):
    """A worker killed between taking the message and claiming the job: the job is still
    ``queued`` but no message is left; the reaper sends it again."""
    if not reachable(6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    from datetime import timedelta

    from delineo.service.api import create_app
    from delineo.service.models import Job, utcnow

    name = f"delineo-test-{uuid.uuid4().hex[:8]}"
    settings = make_settings(home, queue="redis://127.0.0.1:6379/0", queue_name=name, database_url=pg_url,
                             job_heartbeat_s=0.5, job_stale_s=2.0)
    with TestClient(create_app(settings)) as c:
        _login(c)
        ctx = c.app.state.ctx
        sid = upload(c, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
        job_id = c.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"]
        assert ctx.requeue_interrupted(stale_after_s=2.0) == []  # in the queue, not stale: nothing to do
        ctx.queue.flush()  # the message is gone
        assert ctx.requeue_interrupted(stale_after_s=2.0) == []  # too recent to call lost
        with ctx.db.session() as s:
            s.get(Job, job_id).created_at = utcnow() - timedelta(seconds=5)
        assert ctx.requeue_interrupted(stale_after_s=2.0) == [job_id]
        assert ctx.queue.pending() == 1
        assert ctx.requeue_interrupted(stale_after_s=2.0) == []  # sent again: not twice
        ctx.queue.flush()
