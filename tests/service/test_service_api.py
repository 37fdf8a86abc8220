"""The HTTP API through FastAPI's TestClient: accounts, uploads and their limits, jobs, results."""

from __future__ import annotations

import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest

from service.svc import ADMIN_PASSWORD, dicom_series_files, dicom_series_zip, needs_dicom, nifti_bytes, upload, wait_job


def _zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
    return buf.getvalue()


def _user(client, name="alice", password="alice-password", admin=False):
    r = client.post("/api/users", json={"username": name, "password": password, "is_admin": admin})
    assert r.status_code == 201, r.text
    r = client.post("/api/auth/tokens", json={"name": "t"}, headers={"Authorization": "Bearer none"})
    assert r.status_code == 401
    from fastapi.testclient import TestClient

    c = TestClient(client.app)
    assert c.post("/api/auth/login", json={"username": name, "password": password}).status_code == 200
    return c


# ---- accounts --------------------------------------------------------------------------------

def test_login_wrong_password_and_me(client):
    from fastapi.testclient import TestClient

    anon = TestClient(client.app)
    assert anon.get("/api/studies").status_code == 401
    r = anon.post("/api/auth/login", json={"username": "admin", "password": "nope"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    assert anon.post("/api/auth/login", json={"username": "ghost", "password": "nope"}).status_code == 401
    me = client.get("/api/auth/me").json()
    assert me["username"] == "admin" and me["is_admin"]
    assert client.post("/api/auth/logout").status_code == 204
    assert client.get("/api/auth/me").status_code == 401


def test_passwords_stored_as_argon2(client):
    from sqlalchemy import select

    from delineo.service.models import User

    ctx = client.app.state.ctx
    with ctx.db.session() as s:
        h = s.scalar(select(User.password_hash).where(User.username == "admin"))
    assert h.startswith("$argon2id$") and ADMIN_PASSWORD not in h


def test_api_token_bearer(client):
    r = client.post("/api/auth/tokens", json={"name": "script"})
    assert r.status_code == 201
    token = r.json()["token"]
    from fastapi.testclient import TestClient

    anon = TestClient(client.app)
    assert anon.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).json()["username"] == "admin"
    assert anon.get("/api/auth/me", headers={"Authorization": "Bearer wrong"}).status_code == 401
    listed = client.get("/api/auth/tokens").json()
    assert listed[0]["token"] is None  # never shown again
    ctx = client.app.state.ctx
    from sqlalchemy import select

    from delineo.service.models import ApiToken

    with ctx.db.session() as s:
        assert token not in {t for t in s.scalars(select(ApiToken.token_hash))}
    assert client.delete(f"/api/auth/tokens/{listed[0]['id']}").status_code == 204
    assert anon.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_only_admin_creates_users_and_studies_are_private(client):
    alice = _user(client, "alice")
    bob = _user(client, "bob", "bob-password")
    assert alice.post("/api/users", json={"username": "eve", "password": "eve-password"}).status_code == 403
    assert alice.get("/api/users").status_code == 403
    assert client.post("/api/users", json={"username": "alice", "password": "other-password"}).status_code == 409
    r = client.post("/api/users", json={"username": "x y", "password": "short"})
    assert r.status_code == 422 and "user names" in r.json()["detail"]
    sid = upload(alice, [("a.nii.gz", nifti_bytes())]).json()["id"]
    assert [s["id"] for s in alice.get("/api/studies").json()] == [sid]
    assert bob.get("/api/studies").json() == []
    for method, path in [("get", f"/api/studies/{sid}"), ("delete", f"/api/studies/{sid}"),
                         ("get", f"/api/studies/{sid}/volume/ct.nii.gz"), ("post", f"/api/studies/{sid}/jobs")]:
        r = getattr(bob, method)(path, **({"json": {}} if method == "post" else {}))
        assert r.status_code == 404, (method, path, r.status_code)
    assert client.get(f"/api/studies/{sid}").status_code == 200  # admins see everything
    assert sid in [s["id"] for s in client.get("/api/studies?all=true").json()]
    assert sid not in [s["id"] for s in client.get("/api/studies").json()]


# ---- uploads ---------------------------------------------------------------------------------

def test_upload_nifti_and_openapi(client):
    r = upload(client, [("patient 1.nii.gz", nifti_bytes(24))])
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["kind"] == "nifti" and s["name"] == "patient 1" and s["info"]["shape"] == [24, 24, 24]
    vol = client.get(f"/api/studies/{s['id']}/volume/ct.nii.gz")
    assert vol.status_code == 200 and vol.content[:2] == b"\x1f\x8b"
    spec = client.get("/api/openapi.json").json()
    for p in ["/api/studies", "/api/studies/{study_id}/jobs", "/api/jobs/{job_id}", "/api/studies/{study_id}/results/{kind}", "/api/auth/login", "/api/users"]:
        assert p in spec["paths"], p


def test_upload_zip_of_nifti_and_dicom(client):
    r = upload(client, [("ct.zip", _zip({"folder/ct.nii.gz": nifti_bytes(16)}))])
    assert r.status_code == 201 and r.json()["kind"] == "nifti", r.text
    r = upload(client, [("series.zip", dicom_series_zip(16, 8))])
    assert r.status_code == 201 and r.json()["kind"] == "dicom", r.text
    assert r.json()["info"]["slices"] == 8
    files = dicom_series_files(16, 5)
    r = upload(client, [(f"My CT/{n}", d) for n, d in files] + [("My CT/.DS_Store", b"junk")])
    assert r.status_code == 201 and r.json()["name"] == "My CT" and r.json()["info"]["slices"] == 5, r.text


def test_same_series_uploaded_twice_is_kept_and_names_the_earlier_study(client):
    """Issue 37 item 9: a second upload of the same series (DICOM: Series Instance UID; NIfTI: the
    same file) is stored, and the answer names the owner's earlier study; other users' are not named."""
    series = dicom_series_zip(16, 8)
    first = upload(client, [("series.zip", series)]).json()
    assert first["duplicate_of"] == []
    again = upload(client, [("again.zip", series)])
    assert again.status_code == 201, again.text
    assert [(d["id"], d["name"], d["match"]) for d in again.json()["duplicate_of"]] == [(first["id"], first["name"], "series")]
    assert {first["id"], again.json()["id"]} <= {s["id"] for s in client.get("/api/studies").json()}
    assert upload(client, [("other.zip", dicom_series_zip(16, 8))]).json()["duplicate_of"] == []  # another series
    data = nifti_bytes(16, seed=3)
    n1 = upload(client, [("a.nii.gz", data)]).json()
    n2 = upload(client, [("b.nii.gz", data)]).json()
    assert [(d["id"], d["match"]) for d in n2["duplicate_of"]] == [(n1["id"], "file")]
    assert upload(client, [("c.nii.gz", nifti_bytes(16, seed=4))]).json()["duplicate_of"] == []
    assert "_sha256" not in n2["info"]
    alice = _user(client)  # another user's upload of the same file: no word of the admin's study
    assert upload(alice, [("b.nii.gz", data)]).json()["duplicate_of"] == []


@pytest.mark.parametrize("files,status,words", [
    ([("notes.txt", b"hello")], 415, "not a DICOM file"),
    ([("ct.nii.gz", b"\x1f\x8b garbage")], 422, "ct.nii.gz"),
    ([("ct.nii", b"not a nifti at all" * 30)], 422, "NIfTI"),
    ([("x.png", b"\x89PNG broken")], 422, "PNG"),
    ([("bad.zip", b"PK\x03\x04 broken zip")], 422, "zip"),
    ([("a.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 40), ("b.dcm", b"\0" * 200)], None, "a.dcm: unreadable DICOM"),
])
def test_bad_files_refused_with_a_message(client, files, status, words):
    r = upload(client, files)
    assert 400 <= r.status_code < 500 and (status is None or r.status_code == status), r.text
    assert words in r.json()["detail"]
    assert client.get("/api/studies").json() == []
    home = client.app.state.ctx.settings.home
    assert not list((home / "uploads").iterdir()) and not list((home / "studies").iterdir())


def test_zip_traversal_and_bomb_refused(client):
    r = upload(client, [("evil.zip", _zip({"../../etc/evil.dcm": b"x"}))])
    assert r.status_code == 422 and "outside its folder" in r.json()["detail"]
    r = upload(client, [("abs.zip", _zip({"/etc/evil.dcm": b"x"}))])
    assert r.status_code == 422
    bomb = _zip({"zeros.dcm": b"\0" * (20 * 2**20)})  # 20 MB of zeros in ~20 kB
    assert len(bomb) < 100_000
    r = upload(client, [("bomb.zip", bomb)])
    assert r.status_code == 413 and "zip bomb" in r.json()["detail"]
    home = client.app.state.ctx.settings.home
    assert not (home.parent / "etc").exists()
    assert not list((home / "uploads").iterdir())


def test_size_cap_413(client):
    big = b"\0" * (9 * 2**20)  # the test settings cap uploads at 8 MB
    r = upload(client, [("big.nii", big)])
    assert r.status_code == 413 and "8 MB" in r.json()["detail"]
    assert client.get("/api/studies").json() == []


def test_dicom_with_unreadable_file_names_it(client):
    files = dicom_series_files(16, 4)
    files[2] = ("broken.dcm", files[2][1][:300])
    r = upload(client, files)
    assert r.status_code == 422 and "broken.dcm" in r.json()["detail"], r.text


# ---- jobs and results ------------------------------------------------------------------------

def test_job_lifecycle_results_and_delete(client):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(24))]).json()["id"]
    r = client.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct", "structures": ["Nope"]})
    assert r.status_code == 422 and "no structure Nope" in r.json()["detail"]
    r = client.post(f"/api/studies/{sid}/jobs", json={"model": "missing-model"})
    assert r.status_code == 422 and "available" in r.json()["detail"]
    assert client.get(f"/api/studies/{sid}/results/summary").status_code == 404
    r = client.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"})
    assert r.status_code == 202 and r.json()["state"] == "queued"
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and job["stage"] == "done" and job["started_at"] and job["finished_at"]
    stages = [s for st, s, p in job["_seen"] if st == "running"]
    assert stages, "progress was never seen while running"
    detail = client.get(f"/api/studies/{sid}").json()
    assert detail["results"][:1] == ["nifti"] and {"overview", "summary"} <= set(detail["results"])
    assert [s["name"] for s in detail["structures"]] == ["Ball", "Box"]
    assert all(s["unit"] == "cc" and len(s["color"]) == 3 for s in detail["structures"])
    summary = client.get(f"/api/studies/{sid}/results/summary").json()
    assert set(summary["structures"]) == {"Ball", "Box"}
    z = client.get(f"/api/studies/{sid}/results/nifti")
    assert z.status_code == 200 and "attachment" in z.headers["content-disposition"]
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert "segmentations/Ball.nii.gz" in names and "summary.json" in names
    png = client.get(f"/api/studies/{sid}/results/overview")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    r = client.get(f"/api/studies/{sid}/results/rtstruct")
    assert r.status_code == 404 and "DICOM" in r.json()["detail"]
    assert client.get(f"/api/studies/{sid}/results/bogus").status_code == 404
    m = client.get(f"/api/studies/{sid}/masks/Ball.nii.gz")
    assert m.status_code == 200
    mask = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(m.content))
    assert mask.shape == (24, 24, 24) and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert client.get(f"/api/studies/{sid}/masks/..%2Fsummary.json").status_code == 404
    # structures subset
    r = client.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct", "structures": ["Box"]})
    assert wait_job(client, r.json()["id"])["structures"] == ["Box"]
    # the subset job contoured Box and added it to the current version (issue 37): Ball is kept
    assert [s["name"] for s in client.get(f"/api/studies/{sid}").json()["structures"]] == ["Ball", "Box"]
    # delete removes rows and files
    home = client.app.state.ctx.settings.home
    assert (home / "studies" / sid).is_dir()
    assert client.delete(f"/api/studies/{sid}").status_code == 204
    assert client.get(f"/api/studies/{sid}").status_code == 404
    assert client.get(f"/api/jobs/{r.json()['id']}").status_code == 404
    assert not (home / "studies" / sid).exists()


def test_model_must_fit_the_study(client):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert models["tiny-ct"]["spatial_dims"] == 3
    if "cxr-jsrt" in models:
        r = client.post(f"/api/studies/{sid}/jobs", json={"model": "cxr-jsrt"})
        assert r.status_code == 422 and "2D" in r.json()["detail"]


def test_failed_job_reports_a_message(client):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    home = client.app.state.ctx.settings.home
    (home / "studies" / sid / "input" / "ct.nii.gz").write_bytes(b"\x1f\x8b corrupted later")
    job = wait_job(client, client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"])
    assert job["state"] == "failed" and "ct.nii.gz" in job["error"] and str(home) not in job["error"]


@needs_dicom
def test_dicom_job_writes_rtstruct_and_seg(client):
    import pydicom

    sid = upload(client, [("series.zip", dicom_series_zip(32, 12))]).json()["id"]
    job = wait_job(client, client.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"])
    assert job["state"] == "done", job
    rt = client.get(f"/api/studies/{sid}/results/rtstruct")
    assert rt.status_code == 200
    assert pydicom.dcmread(io.BytesIO(rt.content)).Modality == "RTSTRUCT"
    seg = client.get(f"/api/studies/{sid}/results/seg")
    assert seg.status_code == 200 and pydicom.dcmread(io.BytesIO(seg.content)).Modality == "SEG"
