"""The web service against a hostile or careless client (issue 18): damaged zips, sessions and
tokens after a password change, security headers, the viewer's volume endpoint, and the DICOM
node's outbox in the administrators' view."""

from __future__ import annotations

import io
import json
import struct
import time
import zipfile

import pytest
from fastapi.testclient import TestClient

from service.svc import ADMIN_PASSWORD, dicom_series_zip, nifti_bytes, upload


def _stored_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
    return buf.getvalue()


def _no_files_left(client) -> None:
    home = client.app.state.ctx.settings.home
    assert not list((home / "uploads").iterdir()) and not list((home / "studies").iterdir())
    assert client.get("/api/studies").json() == []


# ---- 6. damaged zips --------------------------------------------------------------------------

def test_zip_with_a_bad_crc_is_refused_with_422_naming_the_entry(client, caplog):
    with zipfile.ZipFile(io.BytesIO(dicom_series_zip(16, 4))) as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = bytearray(_stored_zip(files))
    victim = sorted(files)[2]
    at = bytes(data).index(files[victim][-64:])  # a byte inside that entry's pixel data
    data[at] ^= 0xFF
    r = upload(client, [("damaged.zip", bytes(data))])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "damaged.zip" in detail and victim in detail and "CRC" in detail
    assert "Traceback" not in caplog.text
    _no_files_left(client)


def test_zip_with_an_unknown_compression_method_is_refused_with_422(client):
    data = bytearray(_stored_zip({"series/slice000.dcm": b"x" * 300, "series/slice001.dcm": b"y" * 300}))
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local headers and central directory: method 98 (PPMd)
        start = 0
        while (i := bytes(data).find(sig, start)) >= 0:
            data[i + offset:i + offset + 2] = struct.pack("<H", 98)
            start = i + 4
    r = upload(client, [("ppmd.zip", bytes(data))])
    assert r.status_code == 422, r.text
    assert "ppmd.zip" in r.json()["detail"] and "slice000.dcm" in r.json()["detail"] and "method 98" in r.json()["detail"]
    _no_files_left(client)


# ---- 7. password change and revocation ------------------------------------------------------------

def _new_user(client, name: str, password: str) -> int:
    r = client.post("/api/users", json={"username": name, "password": password})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _signed_in(client, name: str, password: str) -> TestClient:
    c = TestClient(client.app)
    assert c.post("/api/auth/login", json={"username": name, "password": password}).status_code == 200
    return c


def test_password_change_ends_other_sessions_and_tokens(client):
    _new_user(client, "alice", "alice-password")
    here = _signed_in(client, "alice", "alice-password")
    elsewhere = _signed_in(client, "alice", "alice-password")
    token = here.post("/api/auth/tokens", json={"name": "script"}).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    anon = TestClient(client.app)
    assert elsewhere.get("/api/auth/me").status_code == 200 and anon.get("/api/auth/me", headers=bearer).status_code == 200
    r = here.post("/api/auth/password", json={"old_password": "alice-password", "new_password": "a-new-password"})
    assert r.status_code == 204, r.text
    assert here.get("/api/auth/me").status_code == 200  # the session that changed it goes on
    assert elsewhere.get("/api/auth/me").status_code == 401  # an old session cookie no longer works
    assert anon.get("/api/auth/me", headers=bearer).status_code == 401  # nor an old token
    assert TestClient(client.app).post("/api/auth/login", json={"username": "alice", "password": "alice-password"}).status_code == 401
    _signed_in(client, "alice", "a-new-password")


def test_administrator_revokes_a_users_sessions_and_tokens(client):
    uid = _new_user(client, "bob", "bob-password")
    bob = _signed_in(client, "bob", "bob-password")
    token = bob.post("/api/auth/tokens", json={"name": "t"}).json()["token"]
    assert bob.delete(f"/api/users/{uid}/sessions").status_code == 403  # administrators only
    r = client.delete(f"/api/users/{uid}/sessions")
    assert r.status_code == 200 and r.json()["revoked"] == 2
    assert bob.get("/api/auth/me").status_code == 401
    assert TestClient(client.app).get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.get("/api/auth/me").status_code == 200  # the administrator is still signed in
    assert client.delete("/api/users/9999/sessions").status_code == 404


# ---- 8. security headers ---------------------------------------------------------------------------

def _check_headers(r) -> None:
    h = r.headers
    csp = h.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp, (r.url, csp)
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "'unsafe-eval'" not in csp.replace("'wasm-unsafe-eval'", "")
    assert "worker-src 'self' blob:" in csp
    assert h.get("x-content-type-options") == "nosniff" and h.get("x-frame-options") == "DENY"
    assert h.get("referrer-policy") == "no-referrer"


def test_security_headers_on_every_response(client):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    anon = TestClient(client.app)
    for c, path, status in [(client, "/", 200), (client, "/api/health", 200), (client, "/static/app.js", 200),
                            (client, "/api/openapi.json", 200), (client, f"/api/studies/{sid}/volume/ct.nii.gz", 200),
                            (client, "/api/studies/nope", 404), (anon, "/api/studies", 401), (client, "/static/nope.js", 404)]:
        r = c.get(path)
        assert r.status_code == status, (path, r.status_code)
        _check_headers(r)
        assert "strict-transport-security" not in r.headers  # plain HTTP: no HSTS
    r = client.post("/api/auth/login", json={"username": "admin", "password": "wrong"})
    _check_headers(r)
    secure = TestClient(client.app, base_url="https://testserver")
    r = secure.get("/api/health")
    _check_headers(r)
    assert r.headers["strict-transport-security"].startswith("max-age=")


# ---- 9. the viewer's volume endpoint -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_volume_endpoint_serves_only_the_study_image(client, kind):
    data = [("ct.nii.gz", nifti_bytes(16))] if kind == "nifti" else [("series.zip", dicom_series_zip(16, 8))]
    sid = upload(client, data).json()["id"]
    ok = client.get(f"/api/studies/{sid}/volume/ct.nii.gz")
    assert ok.status_code == 200 and ok.content[:2] == b"\x1f\x8b"
    for name in ("seg.nii.gz", "Ball.nii.gz", "summary.json", "..%2F..%2Fdelineo.db", "ct.nii.gz.bak"):
        r = client.get(f"/api/studies/{sid}/volume/{name}")
        assert r.status_code == 404, (name, r.status_code)
        assert r.content[:2] != b"\x1f\x8b"


# ---- 3. the DICOM node's outbox in the administrators' view -------------------------------------

def test_administrators_see_undeliverable_dicom_results(client):
    assert client.get("/api/dicom-node").json()["exists"] is False
    home = client.app.state.ctx.settings.home
    entry = home / "dicom-node" / "outbox" / "1.2.3"
    entry.mkdir(parents=True)
    (entry / "state.json").write_text(json.dumps({"series": "1.2.3", "attempts": 40, "next_try": time.time() + 300,
                                                  "received_at": time.time() - 3 * 86400, "undeliverable": True,
                                                  "last_error": "no association with TPS@10.0.0.5:104"}))
    status = client.get("/api/dicom-node").json()
    assert status["undeliverable"] == 1 and status["outbox"][0]["last_error"].startswith("no association")
    _new_user(client, "carol", "carol-password")
    assert _signed_in(client, "carol", "carol-password").get("/api/dicom-node").status_code == 403
