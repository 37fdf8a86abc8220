"""Issue 36, the web service's items 2, 3, 5, 9 and 11, through HTTP: NIfTI decompression bombs
and lying headers at study upload and at an edited mask's upload are refused before their data
is read (checked by the status, the message and the memory the request allocated, measured with
tracemalloc); the access log's patient pseudonym is keyed with a per-installation secret; its
CSV export cannot carry a spreadsheet formula; users are shown no server paths and no send
destination's host or port unless they are administrators."""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import json
import stat
import time
import tracemalloc
import zipfile
from contextlib import contextmanager

import nibabel as nib
import numpy as np
import pytest

from service.svc import ADMIN_PASSWORD, make_settings, nifti_bytes, upload, wait_job

MB = 1 << 20
#: what a refused request may allocate at most (the bombs below would need 128 MB to 1 GB)
SMALL = 48 * MB


@contextmanager
def allocated():
    """``box["peak"]``: the most memory Python and numpy held at once inside the block, beyond
    what was held when it began (tracemalloc sees every thread: the server's too)."""
    box: dict = {}
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    try:
        yield box
    finally:
        box["peak"] = tracemalloc.get_traced_memory()[1] - base
        box["seconds"] = time.monotonic() - t0
        tracemalloc.stop()


@pytest.fixture(scope="module")
def zeros_16mb_gz() -> bytes:
    """One gzip member holding 16 MB of zeros (16 kB); repeated, a .nii.gz of any size."""
    return gzip.compress(bytes(16 * MB), 9)


def _header(shape, dtype=np.int16) -> bytes:
    """A single-file NIfTI-1 header (352 bytes, data follows) claiming ``shape``."""
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(dtype)
    h.set_zooms((1.0,) * len(shape))
    h["vox_offset"] = 352
    h.set_qform(np.eye(4), code=1)
    return h.binaryblock + b"\0" * 4


def _client(settings):
    from fastapi.testclient import TestClient

    from delineo.service.api import create_app

    c = TestClient(create_app(settings))
    c.__enter__()
    assert c.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code == 200
    return c


def _user(client, name: str):
    from fastapi.testclient import TestClient

    assert client.post("/api/users", json={"username": name, "password": f"{name}-password"}).status_code == 201
    c = TestClient(client.app)
    assert c.post("/api/auth/login", json={"username": name, "password": f"{name}-password"}).status_code == 200
    return c


# ---- item 3: study upload ---------------------------------------------------------------------

def test_nii_gz_bomb_is_refused_at_upload_before_its_data_is_read(client, settings, zeros_16mb_gz):
    """The probe's file: 1.2 MB of .nii.gz holding 1024 x 1024 x 512 voxels (1 GB) was accepted
    (201, 2 GB more server memory). Now 413 from the header, naming the file and the cap."""
    bomb = gzip.compress(_header((1024, 1024, 512))) + zeros_16mb_gz * 64
    assert len(bomb) < 2 * MB
    with allocated() as mem:
        r = upload(client, [("bomb.nii.gz", bomb)])
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert detail.startswith("bomb.nii.gz:") and "1024 x 1024 x 512" in detail and "DELINEO_MAX_VOXELS" in detail, detail
    assert mem["peak"] < SMALL, f"the refusal allocated {mem['peak'] / MB:.0f} MB"
    assert client.get("/api/studies").json() == []
    assert not any(settings.home.joinpath("studies").iterdir()) and not any(settings.home.joinpath("uploads").iterdir())


def test_nii_gz_expanding_past_its_header_is_refused_while_decompressing(client, zeros_16mb_gz):
    """A small, valid CT followed by 128 MB of zeros in the same .nii.gz: refused as a bomb as
    soon as the decompressed size passes what the header declares (it was accepted)."""
    bomb = nifti_bytes(16) + zeros_16mb_gz * 8
    with allocated() as mem:
        r = upload(client, [("padded.nii.gz", bomb)])
    assert r.status_code == 413, r.text
    assert r.json()["detail"].startswith("padded.nii.gz: refused as a decompression bomb"), r.text
    assert mem["peak"] < SMALL, f"the refusal allocated {mem['peak'] / MB:.0f} MB"
    assert upload(client, [("ct.nii.gz", nifti_bytes(16))]).status_code == 201  # a real CT still goes in


def test_voxel_and_size_caps_are_settings(home, models_env):
    """``DELINEO_MAX_VOXELS`` and ``DELINEO_MAX_NIFTI_MB`` (config.py, beside the upload limits)."""
    from delineo.service.config import Settings

    env = Settings.from_env(home=home, max_voxels=20000, max_nifti_mb=0.01)
    assert env.max_voxels == 20000 and env.max_nifti_bytes == int(0.01 * MB)
    c = _client(make_settings(home, max_voxels=20000, max_nifti_mb=0.01))
    try:
        r = upload(c, [("ct.nii.gz", nifti_bytes(32))])  # 32^3 = 32768 voxels
        assert r.status_code == 413 and "32 x 32 x 32 = 32,768 voxels, more than the 20,000 allowed" in r.json()["detail"], r.text
        r = upload(c, [("ct.nii.gz", nifti_bytes(24))])  # 13824 voxels, but float data beyond 10 kB
        assert r.status_code == 413 and "uncompressed" in r.json()["detail"] and "DELINEO_MAX_NIFTI_MB" in r.json()["detail"], r.text
    finally:
        c.__exit__(None, None, None)


# ---- item 2: an edited mask's upload ----------------------------------------------------------

def test_mask_upload_checks_the_header_against_the_grid_before_reading_data(client, zeros_16mb_gz):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    name = client.get(f"/api/studies/{sid}").json()["structures"][0]["name"]
    grid = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(f"/api/studies/{sid}/masks/{name}.nii.gz").content)).shape
    url = f"/api/studies/{sid}/masks/{name}.nii"

    # the probe's body: a 416-byte NIfTI claiming far more voxels than the grid (it made the server
    # allocate them, then answer 500); refused from the header, nothing allocated
    claim = _header((640, 640, 640), np.uint8) + bytes(64)
    assert len(claim) == 416
    with allocated() as mem:
        r = client.put(url, content=claim)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == f"{name}.nii: the mask is (640, 640, 640) voxels, the structure's grid is {tuple(grid)}"
    assert mem["peak"] < SMALL, f"the refusal allocated {mem['peak'] / MB:.0f} MB"

    # a gzip bomb with the right header: 256 MB of zeros behind a valid mask; refused while
    # decompressing, once past the mask's size (it was decompressed whole and accepted)
    mask = np.zeros(grid, np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    good = nib.Nifti1Image(mask, np.eye(4)).to_bytes()
    with allocated() as mem:
        r = client.put(f"{url}.gz", content=gzip.compress(good) + zeros_16mb_gz * 16)
    assert r.status_code == 413 and "decompression bomb" in r.json()["detail"], r.text
    assert mem["peak"] < SMALL, f"the refusal allocated {mem['peak'] / MB:.0f} MB"

    # data cut short, a body that is no NIfTI: 422 naming the problem (no server error)
    r = client.put(url, content=good[:-100])
    assert r.status_code == 422 and "cut short" in r.json()["detail"], r.text
    r = client.put(url, content=b"not a nifti" * 50)
    assert r.status_code == 422 and "not a NIfTI image" in r.json()["detail"], r.text

    # nothing refused was stored; a proper mask, compressed or not, still is
    assert client.get(f"/api/studies/{sid}").json()["edit_version"] == 0
    r = client.put(f"{url}.gz", content=gzip.compress(good))
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    served = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(f"/api/studies/{sid}/masks/{name}.nii.gz").content))
    assert (np.asanyarray(served.dataobj) > 0).sum() == 27


# ---- item 5: the patient pseudonym ------------------------------------------------------------

def test_patient_pseudonym_is_keyed_with_a_per_installation_secret(client, settings, tmp_path):
    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    assert upload(client, [("series.zip", dicom_series_zip(16, 4))]).status_code == 201
    rows = client.get("/api/audit", params={"action": "upload"}).json()
    pseudonym = rows[0]["patient"]
    # not the unsalted hash a brute force over record numbers reverses
    assert pseudonym and not hashlib.sha256(b"SYNTH001").hexdigest().startswith(pseudonym)
    key_file = settings.home / "pseudonym.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32
    assert pseudonym == hmac.new(key, b"SYNTH001", hashlib.sha256).hexdigest()[:16]
    # the same key on the next start; another installation has its own
    from delineo.pseudonym import load_secret

    assert load_secret(settings.home) == key
    other = load_secret(tmp_path / "other-installation")
    assert other != key and stat.S_IMODE((tmp_path / "other-installation" / "pseudonym.key").stat().st_mode) == 0o600


# ---- item 9: formulas in the CSV export -------------------------------------------------------

def test_access_log_csv_neutralises_formulas(client):
    from fastapi.testclient import TestClient

    from delineo.service.audit import node_recorder

    ctx = client.app.state.ctx
    on_event = node_recorder(ctx.db)
    on_event("refuse", '=2+5+HYPERLINK("http://x")', "1.2.3", "P1", "10.0.0.9", "not an allowed AE title")
    on_event("refuse", "@SUM(1+9)*cmd", "1.2.4", None, "10.0.0.9", "-1+cmd|' /C calc'!A0")
    stranger = TestClient(client.app)
    assert stranger.post("/api/auth/login", json={"username": "+1+1", "password": "x"}).status_code in (401, 429)
    r = client.get("/api/audit.csv")
    assert r.status_code == 200
    rows = list(csv.reader(io.StringIO(r.text)))
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    assert "'=2+5+HYPERLINK(\"http://x\")" in cells and "'@SUM(1+9)*cmd" in cells and "'-1+cmd|' /C calc'!A0" in cells
    assert "'+1+1" in cells
    assert r.text.splitlines()[0].startswith('"at","actor_kind"')  # every cell quoted
    # the JSON view keeps the values as they are
    assert '=2+5+HYPERLINK("http://x")' in [e["actor"] for e in client.get("/api/audit").json()]


# ---- item 11: server paths, destinations ------------------------------------------------------

def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_users_see_no_server_paths_and_only_administrators_see_where_sends_go(client, settings, monkeypatch):
    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    import delineo.service.send as send_mod

    monkeypatch.setattr(send_mod, "RETRY_S", (0.01,))
    assert client.put("/api/send/destinations/TPS", json={"address": "TPS@10.20.30.40:11112"}).status_code == 200
    assert client.put("/api/send/destinations/Down", json={"address": "DOWN@127.0.0.1:9"}).status_code == 200
    bob = _user(client, "bob")
    sid = upload(bob, [("series.zip", dicom_series_zip(16, 8))]).json()["id"]
    job = bob.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(bob, job)["state"] == "done"

    # summary.json, downloaded and inside the masks zip: relative names only
    home = str(settings.home)
    summary = bob.get(f"/api/studies/{sid}/results/summary").json()
    with zipfile.ZipFile(io.BytesIO(bob.get(f"/api/studies/{sid}/results/nifti").content)) as zf:
        zipped = json.loads(zf.read("summary.json"))
    for s in (summary, zipped):
        leaked = [v for v in _strings(s) if v.startswith("/") or home in v]
        assert not leaked, leaked
        assert all(row["file"] == f"segmentations/{n}.nii.gz" for n, row in s["structures"].items())
        assert s["rtstruct"] == "rtstruct.dcm" and s["overview"] and all("/" not in p for p in s["overview"])
    assert summary["structures"].keys() == zipped["structures"].keys()

    # destinations: the AE title for users, AE@host:port for administrators
    mine = bob.get("/api/send/destinations")
    assert mine.status_code == 200 and "10.20.30.40" not in mine.text and "11112" not in mine.text and "127.0.0.1" not in mine.text
    assert {d["name"]: d["target"] for d in mine.json()} == {"Down": "DOWN", "TPS": "TPS"}
    assert {d["name"]: d["target"] for d in client.get("/api/send/destinations").json()} == {
        "Down": "DOWN@127.0.0.1:9", "TPS": "TPS@10.20.30.40:11112"}
    r = bob.post(f"/api/studies/{sid}/send", json={"destination": "Down"})
    assert r.status_code == 202 and r.json()["target"] == "DOWN", r.text
    for _ in range(600):  # three refused associations to port 9, bounded
        sends = bob.get(f"/api/studies/{sid}/sends")
        if sends.json()[0]["state"] == "failed":
            break
        time.sleep(0.1)
    assert sends.json()[0]["state"] == "failed" and "no association" in sends.json()[0]["error"], sends.text
    assert "127.0.0.1" not in sends.text and ":9" not in sends.text
    theirs = client.get(f"/api/studies/{sid}/sends").json()[0]
    assert theirs["target"] == "DOWN@127.0.0.1:9" and "127.0.0.1:9" in theirs["error"]
