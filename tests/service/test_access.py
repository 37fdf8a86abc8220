"""Access log, sign-in throttling and retention (issue 24, items 3-5)."""

from __future__ import annotations

import csv
import io
import os
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from service.svc import ADMIN_PASSWORD, dicom_series_zip, make_settings, nifti_bytes, upload, wait_job


def _login(c, user="admin", password=ADMIN_PASSWORD):
    return c.post("/api/auth/login", json={"username": user, "password": password})


def _app(home, **kw):
    from delineo.service.api import create_app

    return TestClient(create_app(make_settings(home, **kw)))


# ---- access log ------------------------------------------------------------------------------

def test_access_log_records_who_did_what_without_patient_identity(home, models_env):
    with _app(home) as c:
        assert _login(c).status_code == 200
        assert c.post("/api/users", json={"username": "alice", "password": "alice-password"}).status_code == 201
        with TestClient(c.app) as a:
            assert _login(a, "alice", "alice-password").status_code == 200
            sid = upload(a, [("Smith_John.nii.gz", nifti_bytes(16))]).json()["id"]
            did = upload(a, [("series.zip", dicom_series_zip(16, 4))]).json()["id"]
            job = wait_job(a, a.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"])
            assert job["state"] == "done"
            assert a.get(f"/api/studies/{sid}/volume/ct.nii.gz").status_code == 200
            assert a.get(f"/api/studies/{sid}/results/summary").status_code == 200
            assert a.get("/api/audit").status_code == 403  # administrators only
            assert a.get("/api/audit.csv").status_code == 403
            assert a.get("/audit").status_code == 403
            assert a.delete(f"/api/studies/{did}").status_code == 204

        events = c.get("/api/audit").json()
        mine = [(e["actor"], e["action"], e["study_id"]) for e in events if e["actor_kind"] == "user" and e["study_id"]]
        assert mine == [("alice", "delete", did), ("alice", "download", sid), ("alice", "view", sid),
                        ("alice", "contour", sid), ("alice", "upload", did), ("alice", "upload", sid)]
        assert all(e["address"] == "testclient" and e["at"].endswith(("Z", "+00:00")) for e in events)
        dicom_rows = [e for e in events if e["study_id"] == did]
        from delineo.service.audit import patient_pseudonym

        assert {e["patient"] for e in dicom_rows} == {patient_pseudonym("SYNTH001")}

        text = c.get("/api/audit.csv").text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(events) and rows[0]["action"] == "delete" and rows[0]["actor"] == "alice"
        page = c.get("/audit")
        assert page.status_code == 200 and "Access log" in page.text and "alice" in page.text
        # never the patient's name or ID in clear, nor the file name that held one
        for body in (text, page.text, str(events)):
            assert "SYNTH001" not in body and "Synthetic" not in body and "Smith" not in body
        only = c.get("/api/audit", params={"action": "upload", "actor": "alice"}).json()
        assert [e["study_id"] for e in only] == [did, sid]


# ---- sign-in throttling ----------------------------------------------------------------------

def test_hundred_wrong_passwords_do_not_get_through_and_the_right_one_works_after_the_wait(home, models_env):
    lockout = 10.0
    with _app(home, login_max_failures=5, login_lockout_s=lockout) as c:
        t0 = time.monotonic()
        codes = [_login(c, "admin", f"guess-{i:03d}").status_code for i in range(5)]
        r = _login(c)  # the right password while refused: refused too, saying why and for how long
        assert r.status_code == 429 and "too many failed sign-ins" in r.json()["detail"] and "try again in" in r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= lockout
        codes += [_login(c, "admin", f"guess-{i:03d}").status_code for i in range(5, 100)]
        elapsed = time.monotonic() - t0
        assert codes[:6] == [401] * 5 + [429] and set(codes) == {401, 429}, codes
        # 5 checked passwords per lock window: on a machine slower than 100 attempts in one window, a few more
        assert codes.count(401) <= 5 * (1 + int(elapsed // lockout)), (codes, elapsed)
        r = _login(c)
        assert r.status_code == 429
        time.sleep(float(r.headers["Retry-After"]) + 0.2)
        assert _login(c).status_code == 200
        assert c.get("/api/auth/me").json()["username"] == "admin"
        actions = [e["action"] for e in c.get("/api/audit", params={"actor": "admin"}).json()]
        assert actions.count("login-failed") == codes.count(401)
        assert 1 <= actions.count("login-refused") <= 1 + int(elapsed // lockout)  # once per lock, not per attempt
        # a success clears the user's count: one more failure is not refused
        assert _login(c, "admin", "wrong-again").status_code == 401
        assert _login(c).status_code == 200


def test_throttling_per_address_across_user_names(home, models_env):
    with _app(home, login_max_failures=50, login_max_failures_per_address=4, login_lockout_s=30) as c:
        codes = [_login(c, f"nobody{i}", "whatever-password").status_code for i in range(8)]
        assert codes == [401] * 4 + [429] * 4
        assert _login(c).status_code == 429  # the address is refused, whoever it is


def test_parallel_wrong_passwords_do_not_pass_the_limit(home, models_env):
    from concurrent.futures import ThreadPoolExecutor

    with _app(home, login_max_failures=3, login_lockout_s=30) as c:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: _login(c, "admin", f"guess-{i}").status_code, range(24)))
        assert codes.count(401) <= 3 and codes.count(200) == 0 and codes.count(429) >= 21, codes


def test_throttle_settings_from_environment(monkeypatch):
    from delineo.service.config import Settings

    monkeypatch.setenv("DELINEO_LOGIN_MAX_FAILURES", "7")
    monkeypatch.setenv("DELINEO_LOGIN_LOCKOUT_S", "60")
    monkeypatch.setenv("DELINEO_RETENTION_DAYS", "30")
    monkeypatch.setenv("DELINEO_JOB_HEARTBEAT_S", "2")
    monkeypatch.setenv("DELINEO_JOB_STALE_S", "10")
    s = Settings.from_env(home="x")
    assert (s.login_max_failures, s.login_lockout_s, s.retention_days, s.job_heartbeat_s, s.job_stale_s) == (7, 60, 30, 2, 10)
    assert Settings(home="x").retention_days == 0  # off by default
    with pytest.raises(ValueError):
        Settings(home="x", job_heartbeat_s=10, job_stale_s=15)


# ---- retention -------------------------------------------------------------------------------

def test_retention_deletes_old_studies_and_logs_it(home, models_env):
    from delineo.service.models import Study, utcnow
    from delineo.service.retention import purge_expired

    with _app(home, start_consumer=False) as c:
        assert _login(c).status_code == 200
        old = upload(c, [("old.nii.gz", nifti_bytes(16))]).json()["id"]
        new = upload(c, [("new.nii.gz", nifti_bytes(16, seed=1))]).json()["id"]
        ctx = c.app.state.ctx
        with ctx.db.session() as s:
            s.get(Study, old).created_at = utcnow() - timedelta(days=40)
        node_done = home / "dicom-node" / "done"
        (node_done / "1.2.3.old" / "4.5.6").mkdir(parents=True)
        (node_done / "1.2.3.old" / "4.5.6" / "rtstruct.dcm").write_bytes(b"x")
        (node_done / "1.2.3.new").mkdir(parents=True)
        (node_done / "1.2.3.new" / "rtstruct.dcm").write_bytes(b"x")
        stamp = time.time() - 40 * 86400
        for p in [*(node_done / "1.2.3.old").rglob("*"), node_done / "1.2.3.old"]:
            os.utime(p, (stamp, stamp))

        assert purge_expired(ctx) == []  # off by default
        assert ctx.storage.study_dir(old).is_dir()
        assert sorted(purge_expired(ctx, days=30)) == sorted([old, "dicom-node/done/1.2.3.old"])
        assert [s["id"] for s in c.get("/api/studies").json()] == [new]
        assert not ctx.storage.study_dir(old).exists() and ctx.storage.study_dir(new).is_dir()
        assert not (node_done / "1.2.3.old").exists() and (node_done / "1.2.3.new").is_dir()
        logged = c.get("/api/audit", params={"action": "retention-delete"}).json()
        assert {e["study_id"] for e in logged} == {old, "1.2.3.old"}
        assert all(e["actor_kind"] == "system" and e["actor"] == "retention" for e in logged)
        assert purge_expired(ctx, days=30) == []


def test_retention_thread_runs_in_the_server(home, models_env):
    from delineo.service.models import Study, utcnow

    with _app(home, start_consumer=False) as c:
        assert _login(c).status_code == 200
        sid = upload(c, [("old.nii.gz", nifti_bytes(16))]).json()["id"]
        with c.app.state.ctx.db.session() as s:
            s.get(Study, sid).created_at = utcnow() - timedelta(days=3)
    with _app(home, start_consumer=False, retention_days=2, retention_interval_s=1) as c:
        assert _login(c).status_code == 200
        t0 = time.monotonic()
        while c.get("/api/studies").json() and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        assert c.get("/api/studies").json() == []
        assert [e["study_id"] for e in c.get("/api/audit", params={"action": "retention-delete"}).json()] == [sid]


def test_an_upload_holds_no_database_connection_while_it_works(home, models_env, monkeypatch):
    """Found by the production load test (50 users uploading DICOM zips at once): each upload held
    the connection its sign-in check had taken for as long as it ran, and the pool ran out."""
    from delineo.service.storage import Storage

    seen: list[int] = []
    accept = Storage.accept

    def watching(self, *a, **kw):
        seen.append(c.app.state.ctx.db.engine.pool.checkedout())
        return accept(self, *a, **kw)

    with _app(home) as c:
        _login(c)
        monkeypatch.setattr(Storage, "accept", watching)
        r = upload(c, [("ct.nii.gz", nifti_bytes(16))])
        assert r.status_code == 201, r.text
    assert seen == [0]
