"""Issue 36, 4: a web job on a volume that is not a plausible CT ends "failed" with the reason
(it finished "done" with garbage or empty contours), and a plausible one is still contoured."""

from __future__ import annotations

import gzip
import io
import zipfile

import nibabel as nib
import numpy as np

from service.svc import needs_dicom, upload, wait_job


def nifti(volume: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes())


def run_job(client, files) -> tuple[str, dict]:
    r = upload(client, files)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    job = wait_job(client, client.post(f"/api/studies/{sid}/jobs", json={"model": "tiny-ct"}).json()["id"])
    return sid, job


def test_implausible_volumes_fail_their_job_with_what_was_wrong(client):
    from delineo.service.synthetic import synthetic_volume

    ct = synthetic_volume(24)[0].astype(np.float32)  # -100 HU background, 150 and 300 HU shapes
    nan = ct.copy()
    nan[np.random.default_rng(0).random(ct.shape) < 0.1] = np.nan
    cases = {  # (an MR-like NIfTI, nothing below 0, is refused already at upload: hounsfield_problem)
        "no image structure": np.random.default_rng(1).uniform(-1000, 1000, ct.shape).astype(np.float32),
        "far above the CT range": ct * 1000.0,
        "not numbers": nan,
        "too small for the model": ct[:, :, :2].copy(),
    }
    for words, volume in cases.items():
        sid, job = run_job(client, [("ct.nii.gz", nifti(volume))])
        assert job["state"] == "failed", (words, job)
        assert "ct.nii.gz: not a plausible CT" in job["error"] and words in job["error"], job["error"]
        assert str(client.app.state.ctx.settings.home) not in job["error"]
        assert not client.get(f"/api/studies/{sid}").json()["results"]
    _, job = run_job(client, [("ct.nii.gz", nifti(ct))])
    assert job["state"] == "done", job


@needs_dicom
def test_a_dicom_zip_with_mr_like_values_labelled_ct_fails_its_job(client, tmp_path):
    from delineo.data.io import Image
    from delineo.dicom.write_ct import write_ct_series
    from delineo.service.synthetic import synthetic_volume

    ct, _, affine = synthetic_volume(24)
    write_ct_series(Image(ct.astype(np.float32) + 1124.0, affine), tmp_path / "mr")  # Modality CT, values of an MR
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted((tmp_path / "mr").glob("*.dcm")):
            zf.write(f, f"series/{f.name}")
    sid, job = run_job(client, [("series.zip", buf.getvalue())])
    assert job["state"] == "failed" and "not a plausible CT" in job["error"] and "nothing dark" in job["error"], job
    assert client.get(f"/api/studies/{sid}/results/rtstruct").status_code == 404
