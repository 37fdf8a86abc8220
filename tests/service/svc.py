"""Fixtures for the web service: a tiny 3D model folder, a data directory per test, app clients,
a real uvicorn server on a free loopback port, and synthetic uploads."""

from __future__ import annotations

import gzip
import io
import os
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from waits import HANG_S

ADMIN_PASSWORD = "admin-test-password"


@pytest.fixture(scope="session")
def service_models(tmp_path_factory) -> Path:
    """A models folder holding an untrained tiny 3D model (``tiny-ct``: Ball, Box) and the
    bundled 2D model when present; the service is pointed at it through ``DELINEO_MODELS``."""
    from delineo.service.synthetic import tiny_model
    from delineo.settings import REPO_ROOT

    root = tmp_path_factory.mktemp("service-models")
    tiny_model(root / "tiny-ct")
    bundled = REPO_ROOT / "models" / "cxr-jsrt"
    if (bundled / "model.json").is_file():
        (root / "cxr-jsrt").symlink_to(bundled)
    return root


@pytest.fixture
def models_env(service_models, monkeypatch) -> Path:
    monkeypatch.setenv("DELINEO_MODELS", str(service_models))
    return service_models


def make_settings(home: Path, **kw):
    from delineo.service.config import Settings

    values = dict(home=home, admin_password=ADMIN_PASSWORD, device="cpu", max_upload_mb=8, max_unzipped_mb=32, upload_idle_s=10)
    values.update(kw)
    return Settings(**values)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def settings(home, models_env):
    return make_settings(home)


@pytest.fixture
def client(settings) -> Iterator:
    """A TestClient on a fresh app (embedded queue, consumer threads running), signed in as admin."""
    from fastapi.testclient import TestClient

    from delineo.service.api import create_app

    with TestClient(create_app(settings)) as c:
        r = c.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        yield c


def nifti_bytes(size: int = 24, seed: int = 0) -> bytes:
    from delineo.service.synthetic import synthetic_nifti_bytes

    return synthetic_nifti_bytes(size, seed)


def upload(c, files, **kw):
    """POST /api/studies with ``files`` = [(name, bytes)]."""
    return c.post("/api/studies", files=[("files", (n, d, "application/octet-stream")) for n, d in files], **kw)


def wait_job(c, job_id: str, timeout: float = HANG_S, headers=None) -> dict:
    """Poll a job until done or failed; ``timeout`` (s) only bounds a hang."""
    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < timeout:
        job = c.get(f"/api/jobs/{job_id}", headers=headers).json()
        seen.append((job["state"], job["stage"], job["progress"]))
        if job["state"] in ("done", "failed"):
            job["_seen"] = seen
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {seen[-3:]}")


def dicom_series_zip(size: int = 16, n_slices: int = 8) -> bytes:
    """A zip of a synthetic CT series written with pydicom (one file per slice)."""
    files = dicom_series_files(size, n_slices)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files:
            zf.writestr(f"series/{name}", data)
    return buf.getvalue()


def dicom_series_files(size: int = 16, n_slices: int = 8) -> list[tuple[str, bytes]]:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from delineo.service.synthetic import synthetic_volume

    ct, _, _ = synthetic_volume(size)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "SYNTH001", "Synthetic^Phantom"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesDescription, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "synthetic CT", "20260101", 1, k + 1
        ds.ImagePositionPatient = [-size, -size, 3.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 3.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(ct[:, :, k * size // n_slices].T).astype(np.int16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((f"slice{k:03d}.dcm", buf.getvalue()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, settings):
        import uvicorn

        from delineo.service.api import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def live_server(settings) -> Iterator[LiveServer]:
    with LiveServer(settings) as srv:
        yield srv


def dicom_available() -> bool:
    try:
        import delineo.dicom  # noqa: F401

        return True
    except ImportError:
        return False


needs_dicom = pytest.mark.skipif(not dicom_available(), reason="delineo.dicom (RTSTRUCT/SEG writing) has not landed yet")


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def pg_url():
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust), dropped afterwards."""
    if not reachable(5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import uuid

    import psycopg

    name = f"delineo_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def storage_scp() -> dict:
    """A planning system stand-in: a pynetdicom Storage SCP (RT Structure Set, SEG) on a free loopback
    port that keeps what it receives: ``{"address": "TPS@127.0.0.1:PORT", "received": [...], "server": ...}``
    (call ``server.shutdown()`` when done)."""
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import RTStructureSetStorage, SegmentationStorage

    received: list = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="TPS")
    ae.add_supported_context(RTStructureSetStorage)
    ae.add_supported_context(SegmentationStorage)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return {"address": f"TPS@127.0.0.1:{port}", "received": received, "server": server}
