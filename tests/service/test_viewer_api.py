"""The viewer's side of the API (issue 22): inputs that are not a CT in Hounsfield units are
refused with the file named; a study's detail names the job whose result is shown, so a new job
does not leave the viewer asking for ``?job=null``; local API documentation."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from service.svc import nifti_bytes, upload, wait_job


def _nii(array, affine=None) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine).to_bytes())


@pytest.mark.parametrize("name, array, words", [
    ("mask.nii.gz", (np.indices((16, 16, 16)).sum(0) % 5 == 0).astype(np.uint8), "0 and 1: a mask"),
    ("labels.nii.gz", (np.indices((16, 16, 16))[0] // 4).astype(np.int16), "label map"),
    ("normalised.nii.gz", np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), "normalised"),
    ("mr.nii.gz", np.random.default_rng(0).integers(0, 3000, (16, 16, 16)).astype(np.int16), "no value below 0"),
])
def test_not_hounsfield_refused_with_the_file_named(client, name, array, words):
    r = upload(client, [(name, _nii(array))])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(name) and words in detail and "Hounsfield" in detail, detail
    assert client.get("/api/studies").json() == []


def test_ct_accepted_and_detail_names_the_result_job(client):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    assert client.get(f"/api/studies/{sid}").json()["result_job"] is None
    first = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, first)["state"] == "done"
    assert client.get(f"/api/studies/{sid}").json()["result_job"] == first
    second = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    d = client.get(f"/api/studies/{sid}").json()
    # while the second job is queued or running, the detail still names the first (its masks load)
    if d["latest_job"]["state"] != "done":
        assert d["result_job"] == first
        name = d["structures"][0]["name"]
        assert client.get(f"/api/studies/{sid}/masks/{name}.nii.gz", params={"job": first}).status_code == 200
    assert wait_job(client, second)["state"] == "done"
    assert client.get(f"/api/studies/{sid}").json()["result_job"] == second


def test_api_docs_pages_are_local(client):
    for path in ("/api/docs", "/api/redoc"):
        r = client.get(path)
        assert r.status_code == 200 and "cdn" not in r.text.lower() and "<script>" not in r.text
    bundle = client.get("/vendor/redoc/redoc.standalone.js")
    if bundle.status_code == 200:
        assert b"cdn.redoc.ly" not in bundle.content


def test_study_list_patient_id_only_for_the_owner(client):
    from fastapi.testclient import TestClient

    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    assert client.post("/api/users", json={"username": "bob", "password": "bob-password"}).status_code == 201
    bob = TestClient(client.app)
    assert bob.post("/api/auth/login", json={"username": "bob", "password": "bob-password"}).status_code == 200
    r = upload(bob, [("series.zip", dicom_series_zip(16, 4))])
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    mine = bob.get("/api/studies").json()[0]
    assert mine["patient_id"] == "SYNTH001" and mine["study_date"] == "2026-01-01"
    assert bob.get(f"/api/studies/{sid}").json()["patient_id"] == "SYNTH001"
    # an administrator sees the study, not the patient's ID (nor in info)
    theirs = client.get(f"/api/studies/{sid}").json()
    assert theirs["patient_id"] is None and "SYNTH001" not in str(theirs)
    assert all("SYNTH001" not in str(s) for s in client.get("/api/studies", params={"all": True}).json())
