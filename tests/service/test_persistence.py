"""Restarts, PostgreSQL, the Redis queue with a real ``delineo worker`` process, a live server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.svc import ADMIN_PASSWORD, LiveServer, make_settings, nifti_bytes, upload, wait_job
from waits import LONG_HANG_S


def _login(c):
    assert c.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    return c


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_restart_keeps_studies_and_requeues_running_jobs(home, models_env, capsys):
    from delineo.service.api import create_app
    from delineo.service.models import Job

    settings = make_settings(home, admin_password=None, start_consumer=False)  # no consumer: the job stays queued
    with TestClient(create_app(settings)) as c:
        password = c.app.state.admin_password
        assert password and password in capsys.readouterr().out  # first start prints the admin password once
        c.post("/api/auth/login", json={"username": "admin", "password": password})
        sid = upload(c, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
        job_id = c.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"]
        with c.app.state.ctx.db.session() as s:  # as if the server died while the job ran
            job = s.get(Job, job_id)
            job.state, job.stage, job.progress = "running", "model", 0.2
    with TestClient(create_app(make_settings(home, admin_password=None))) as c:
        assert c.app.state.admin_password is None and "password" not in capsys.readouterr().out
        c.post("/api/auth/login", json={"username": "admin", "password": password})
        assert [s["id"] for s in c.get("/api/studies").json()] == [sid]
        job = wait_job(c, job_id)
        assert job["state"] == "done" and job["attempts"] == 1, job


def test_postgresql_database(home, models_env, pg_url):
    from sqlalchemy import inspect

    from delineo.service.api import create_app

    with TestClient(create_app(make_settings(home, database_url=pg_url))) as c:
        assert c.app.state.ctx.db.engine.dialect.name == "postgresql"
        assert {"users", "api_tokens", "studies", "jobs", "alembic_version"} <= set(inspect(c.app.state.ctx.db.engine).get_table_names())
        _login(c)
        sid = upload(c, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
        job = wait_job(c, c.post(f"/api/studies/{sid}/jobs", json={}).json()["id"])
        assert job["state"] == "done"
        assert c.delete(f"/api/studies/{sid}").status_code == 204
    with TestClient(create_app(make_settings(home, database_url=pg_url))) as c:  # migrations run again: no-op
        _login(c)
        assert c.get("/api/studies").json() == []


def test_redis_queue_with_worker_process(home, models_env, tmp_path):
    if not _reachable(6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    from delineo.service.api import create_app

    queue = "redis://127.0.0.1:6379/0"
    name = f"delineo-test-{uuid.uuid4().hex[:8]}"
    settings = make_settings(home, queue=queue, queue_name=name)
    env = {**os.environ, "DELINEO_HOME": str(home), "DELINEO_QUEUE": queue, "DELINEO_QUEUE_NAME": name,
           "DELINEO_DATABASE_URL": settings.database_url, "DELINEO_DEVICE": "cpu", "DELINEO_MODELS": str(models_env)}
    with TestClient(create_app(settings)) as c:
        _login(c)
        sid = upload(c, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
        job_id = c.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"]
        time.sleep(0.5)
        assert c.get(f"/api/jobs/{job_id}").json()["state"] == "queued"  # the server runs no jobs in Redis mode
        assert c.get("/api/health").json()["pending_jobs"] == 1
        # the worker's output goes to a file, not a pipe nobody reads (a full pipe would stall it);
        # the deadline only bounds a hang: a loaded 2-core machine has taken over a minute
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen([str(Path(sys.executable).parent / "delineo"), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while c.get(f"/api/jobs/{job_id}").json()["state"] in ("queued", "running") and time.monotonic() - t0 < LONG_HANG_S:
                assert worker.poll() is None, log.read_text(errors="replace")
                time.sleep(0.2)
            job = c.get(f"/api/jobs/{job_id}").json()
            assert job["state"] == "done", (job, log.read_text(errors="replace")[-3000:])
            assert c.get(f"/api/studies/{sid}/results/summary").status_code == 200
        finally:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        c.app.state.ctx.queue.flush()


def test_worker_refuses_embedded_queue(home, monkeypatch):
    from delineo.cli import main

    monkeypatch.setenv("DELINEO_HOME", str(home))
    monkeypatch.delenv("DELINEO_QUEUE", raising=False)
    assert main(["worker"]) == 2


def test_live_server_refuses_big_upload_early_and_keeps_serving(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        _login(c)
        # a client announcing 50 MB gets 413 after sending only its headers
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
        with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
            sock.sendall((f"POST /api/studies HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                          f"Content-Type: multipart/form-data; boundary=abc\r\nContent-Length: {50 * 2**20}\r\n\r\n").encode())
            assert b" 413 " in sock.recv(4096).split(b"\r\n")[0]
        big = b"\0" * (12 * 2**20)
        try:
            r = c.post("/api/studies", files={"files": ("big.nii", big)})
            assert r.status_code == 413
        except httpx.HTTPError:
            pass  # the server may close the connection while the client is still sending: also a refusal
        sid = upload(c, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
        job = wait_job(c, c.post(f"/api/studies/{sid}/jobs", json={}).json()["id"])
        assert job["state"] == "done"
        assert not list((live_server.server.config.app.state.ctx.settings.home / "uploads").iterdir())


def test_stress_command_small(live_server, capsys, tmp_path):
    import json
    import os

    from delineo.cli import main

    # the server's jobs run in this process here: its peak memory stands for a worker's
    rc = main(["stress", "--url", live_server.url, "--users", "3", "--studies", "1", "--admin-password", ADMIN_PASSWORD,
               "--size", "16", "--max-seconds", "60", "--worker-pid", str(os.getpid()), "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3/3 studies" in out and "lost studies 0" in out
    peak = json.loads((tmp_path / "r.json").read_text())["worker_peak_rss_mb"][str(os.getpid())]
    assert 50 < peak < 24 * 1024  # MB: a Python process with torch loaded, less than the machine
    assert f"{peak} MB" in (tmp_path / "r.md").read_text()


def test_stress_refuses_other_hosts():
    from delineo.cli import main

    assert main(["stress", "--url", "http://192.0.2.1:8000", "--admin-password", "x", "--users", "1"]) == 2
