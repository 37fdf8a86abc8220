"""One real OpenKBP CT through every way in: the same contours in patient coordinates.

The reference is ``delineo contour`` of the case's own ct.nii.gz. The same CT as a left-right
flipped NIfTI (affine adjusted), as a DICOM series (written slice by slice as a scanner exports
it, head-first and feet-first supine), uploaded to the web service as a DICOM zip, and sent to the
DICOM node with dcmtk's storescu must give per-structure Dice >= 0.98 against it, compared as sets
of voxel centres in world millimetres (each output's own affine; no reorientation code of
delineo's involved in the comparison). Skipped when the data or the bundled hn-ct is absent.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from delineo.metrics.segmentation import patient_dice
from delineo.settings import models_dir

pytestmark = pytest.mark.data
MIN_DICE = 0.98


@pytest.fixture(scope="module")
def case(request) -> Path:
    from delineo.settings import data_dir

    root = data_dir() / "openkbp" / "validation"
    if not root.is_dir() or not (models_dir() / "hn-ct" / "model.json").is_file():
        pytest.skip(f"OpenKBP validation data ({root}) or the bundled hn-ct model not found")
    return sorted(p for p in root.iterdir() if (p / "ct.nii.gz").is_file())[0]


def cli_contour(src: Path, out: Path) -> None:
    delineo = Path(sys.executable).with_name("delineo")
    r = subprocess.run([str(delineo), "contour", str(src), "-o", str(out), "--model", "hn-ct", "--device", "cpu", "--no-overview"],
                       capture_output=True, text=True, env={**os.environ, "DELINEO_PROGRESS": "off"})
    assert r.returncode == 0, r.stderr[-2000:]


def nifti_masks(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for p in sorted(folder.glob("*.nii.gz")):
        img = nib.load(str(p))
        out[p.name[: -len(".nii.gz")]] = (np.asarray(img.dataobj) > 0, img.affine)
    return out


@pytest.fixture(scope="module")
def reference(case, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = tmp_path_factory.mktemp("nifti")
    cli_contour(case / "ct.nii.gz", out)
    masks = nifti_masks(out / "segmentations")
    assert len(masks) == 10 and sum(m.any() for m, _ in masks.values()) >= 7, "the reference contours are mostly empty"
    return masks


def assert_agrees(got: dict[str, tuple[np.ndarray, np.ndarray]], reference, path: str) -> None:
    assert set(got) == set(reference), path
    low = {n: round(patient_dice(*got[n], *reference[n]), 4) for n in reference}
    assert all(d >= MIN_DICE for d in low.values()), f"{path}: {low}"


def flipped(ct_path: Path) -> nib.Nifti1Image:
    img = nib.load(str(ct_path))
    a = img.affine.copy()
    a[:3, 0] *= -1
    a[:3, 3] = img.affine[:3, 3] + img.affine[:3, 0] * (img.shape[0] - 1)
    return nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), a)


def write_dicom(ct_path: Path, folder: Path, position: str = "HFS") -> list[Path]:
    from delineo.data.io import Image
    from delineo.dicom.write_ct import write_ct_series

    img = flipped(ct_path) if position == "FFS" else nib.load(str(ct_path))  # FFS: columns to the patient's right
    return write_ct_series(Image(np.asarray(img.dataobj), img.affine), folder, patient_position=position)


def test_flipped_nifti_through_the_cli(case, reference, tmp_path):
    nib.save(flipped(case / "ct.nii.gz"), str(tmp_path / "flipped.nii.gz"))
    cli_contour(tmp_path / "flipped.nii.gz", tmp_path / "out")
    assert_agrees(nifti_masks(tmp_path / "out" / "segmentations"), reference, "flipped NIfTI")


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_dicom_series_through_the_cli(case, reference, tmp_path, position):
    write_dicom(case / "ct.nii.gz", tmp_path / "ct", position)
    cli_contour(tmp_path / "ct", tmp_path / "out")
    assert_agrees(nifti_masks(tmp_path / "out" / "segmentations"), reference, f"DICOM {position} (NIfTI masks)")
    # and the RT Structure Set, read back by the independent rasteriser on the series' own grid
    from delineo.dicom.rtstruct import read_rtstruct
    from delineo.dicom.series import read_series

    series = read_series(tmp_path / "ct")
    back = read_rtstruct(tmp_path / "out" / "rtstruct.dcm", series)
    assert_agrees({n: (m, series.image.affine) for n, m in back.items()}, reference, f"DICOM {position} (RT Structure Set)")


def test_dicom_zip_through_the_web_service(case, reference, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from delineo.service.api import create_app
    from delineo.service.config import Settings

    files = write_dicom(case / "ct.nii.gz", tmp_path / "ct")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in files:
            z.write(f, f"series/{f.name}")
    monkeypatch.setenv("DELINEO_MODELS", str(models_dir()))
    settings = Settings(home=tmp_path / "var", admin_password="admin-test-password", device="cpu")
    with TestClient(create_app(settings)) as c:
        assert c.post("/api/auth/login", json={"username": "admin", "password": "admin-test-password"}).status_code == 200
        r = c.post("/api/studies", files=[("files", ("ct.zip", buf.getvalue(), "application/zip"))])
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        job = c.post(f"/api/studies/{sid}/jobs", json={"model": "hn-ct"}).json()
        import time

        t0 = time.monotonic()
        while (job := c.get(f"/api/jobs/{job['id']}").json())["state"] not in ("done", "failed"):
            assert time.monotonic() - t0 < 600, job
            time.sleep(0.5)
        assert job["state"] == "done", job
        z = zipfile.ZipFile(io.BytesIO(c.get(f"/api/studies/{sid}/results/nifti").content))
        z.extractall(tmp_path / "web")
    assert_agrees(nifti_masks(tmp_path / "web" / "segmentations"), reference, "web service, DICOM zip")


def test_dicom_series_through_the_node(case, reference, tmp_path):
    """storescu -> delineo's DICOM node (contours with hn-ct) -> storescp as the planning system."""
    import socket
    import time

    from delineo.dicom.node import DicomNode, NodeConfig
    from delineo.dicom.rtstruct import read_rtstruct
    from delineo.dicom.series import read_series

    from system_tools import dcmtk

    tools = {t: dcmtk(t) for t in ("storescu", "storescp")}  # dcmtk's, not pynetdicom's same-named entry points
    if not all(Path(p).is_file() for p in tools.values()):
        pytest.skip("dcmtk not installed (make system-deps)")
    files = write_dicom(case / "ct.nii.gz", tmp_path / "ct")

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    dest_port, node_port = free_port(), free_port()
    (tmp_path / "tps").mkdir()
    scp = subprocess.Popen([tools["storescp"], "--output-directory", str(tmp_path / "tps"), "--aetitle", "TPS", str(dest_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = DicomNode(NodeConfig(storage=tmp_path / "node", port=node_port, host="127.0.0.1", forward=("TPS", "127.0.0.1", dest_port),
                                idle_seconds=1.0, model="hn-ct", device="cpu", poll_s=0.1, send_seg=False)).start()
    try:
        subprocess.run([tools["storescu"], "-aec", "DELINEO", "127.0.0.1", str(node_port), *map(str, files)], check=True, capture_output=True)
        t0 = time.monotonic()
        while not any(e["state"] == "sent" for e in node.events):
            assert not any(e["state"] == "failed" for e in node.events), node.events
            assert time.monotonic() - t0 < 600, node.events
            time.sleep(0.2)
    finally:
        node.stop()
        scp.terminate()
    received = [p for p in (tmp_path / "tps").iterdir() if p.name.startswith("RS")]
    assert len(received) == 1, sorted(p.name for p in (tmp_path / "tps").iterdir())
    series = read_series(tmp_path / "ct")
    back = read_rtstruct(received[0], series)
    assert_agrees({n: (m, series.image.affine) for n, m in back.items()}, reference, "DICOM node (RT Structure Set)")
