"""A PACS from the web service (issue 38, item 3), against a real Orthanc with its DICOMweb plugin
and basic authentication (tests/dicom/orthanc.py): an administrator configures it, a user searches
it by Patient ID and study date, contours a CT series from it and stores the results back; the
RT Structure Set and SEG are then in the CT's study on Orthanc (read through its REST API).
Access control: only administrators configure, nobody gets the password or token back, plain
users search and contour, a read-only token cannot fetch."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from dicom.orthanc import needs_orthanc, running_orthanc
from service.svc import dicom_series_files, free_port, wait_job

PATIENT, DATE = "SYNTH001", "20260101"


@pytest.fixture
def orthanc(tmp_path):
    with running_orthanc(tmp_path / "orthanc", free_port(), free_port()) as server:
        yield server


def _ct_in(orthanc, tmp_path: Path, size: int = 16, slices: int = 8) -> dict:
    """A synthetic CT series stored in Orthanc; its UIDs."""
    folder = tmp_path / "ct"
    folder.mkdir()
    paths = []
    for name, data in dicom_series_files(size, slices):
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    orthanc.upload(paths)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID), "files": paths}


def _configure(c, orthanc, name="Orthanc", password=None):
    return c.put(f"/api/pacs/{name}", json={"url": orthanc.dicomweb, "auth": "basic", "username": orthanc.user,
                                             "password": orthanc.password if password is None else password})


def _plain_user(client, name="alice", password="alice-password") -> TestClient:
    assert client.post("/api/users", json={"username": name, "password": password}).status_code == 201
    c = TestClient(client.app)
    assert c.post("/api/auth/login", json={"username": name, "password": password}).status_code == 200
    return c


def _modalities(orthanc, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list] = {}
    for s in orthanc.series_of_study(study_uid):
        out.setdefault(s["MainDicomTags"].get("Modality"), []).extend(
            pydicom.dcmread(io.BytesIO(orthanc.instance_file(i))) for i in s["Instances"])
    return out


@needs_orthanc
def test_search_contour_from_the_pacs_and_store_back(client, orthanc, tmp_path):
    ct = _ct_in(orthanc, tmp_path)
    r = _configure(client, orthanc)
    assert r.status_code == 200, r.text
    assert r.json()["has_secret"] is True and orthanc.password not in r.text

    # search: by Patient ID, by study date (ISO or DICOM), both; a study lists its series
    for params in ({"patient_id": PATIENT}, {"study_date": "2026-01-01"}, {"study_date": DATE, "patient_id": PATIENT},
                   {"study_date": "20251201-20260131"}):
        found = client.get("/api/pacs/Orthanc/studies", params=params)
        assert found.status_code == 200, (params, found.text)
        assert [s["study_uid"] for s in found.json()] == [ct["study"]], params
    study = found.json()[0]
    assert study["patient_id"] == PATIENT and study["study_date"] == DATE
    assert [(x["series_uid"], x["modality"], x["instances"]) for x in study["series"]] == [(ct["series"], "CT", 8)]
    assert client.get("/api/pacs/Orthanc/studies", params={"patient_id": "NOBODY"}).json() == []
    assert client.get("/api/pacs/Orthanc/studies").status_code == 422  # no filter: not the whole PACS
    assert client.get("/api/pacs/Orthanc/studies", params={"study_date": "yesterday"}).status_code == 422

    # contour: the series is fetched into a new study and the usual job runs on it
    r = client.post("/api/pacs/Orthanc/contour", json={"study_uid": ct["study"], "series_uid": ct["series"]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["instances"] == 8 and body["study"]["kind"] == "dicom" and body["study"]["patient_id"] == PATIENT
    assert body["study"]["info"]["pacs"] == "Orthanc" and body["study"]["study_date"] == "2026-01-01"
    job = wait_job(client, body["job"]["id"])
    assert job["state"] == "done", job
    sid = body["study"]["id"]
    assert {"rtstruct", "seg"} <= set(client.get(f"/api/studies/{sid}").json()["results"])

    # store back: the RT Structure Set and the SEG are now in the CT's study on Orthanc
    assert "RTSTRUCT" not in _modalities(orthanc, ct["study"])
    r = client.post(f"/api/studies/{sid}/store-pacs", json={"pacs": "Orthanc"})
    assert r.status_code == 200, r.text
    stored = r.json()
    assert stored["study_uid"] == ct["study"] and stored["files"] == ["rtstruct.dcm", "seg.dcm"] and len(stored["stored"]) == 2
    held = _modalities(orthanc, ct["study"])
    assert len(held["CT"]) == 8 and len(held["RTSTRUCT"]) == 1 and len(held["SEG"]) == 1
    rt = held["RTSTRUCT"][0]
    assert str(rt.SOPInstanceUID) in stored["stored"] and rt.StudyInstanceUID == ct["study"]
    ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct["series"]
    assert {i.ReferencedSOPInstanceUID for i in ref.ContourImageSequence} == {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct["files"]}
    assert {x.ROIName for x in rt.StructureSetROISequence} == {"Ball", "Box"}

    # the access log has each step, the patient as a pseudonym only
    events = client.get("/api/audit").json()
    actions = [e["action"] for e in events]
    for a in ("pacs-set", "pacs-search", "pacs-fetch", "pacs-store"):
        assert a in actions, actions
    assert PATIENT not in str(events) and orthanc.password not in str(events)


@needs_orthanc
def test_only_administrators_configure_and_no_secret_comes_back(client, orthanc, tmp_path):
    ct = _ct_in(orthanc, tmp_path)
    alice = _plain_user(client)
    assert _configure(alice, orthanc).status_code == 403
    assert _configure(client, orthanc).status_code == 200
    assert alice.delete("/api/pacs/Orthanc").status_code == 403
    # a bearer token is stored too, and never shown
    r = client.put("/api/pacs/Cloud", json={"url": "https://pacs.example.org/dicomweb", "auth": "bearer", "token": "s3cret-t0ken"})
    assert r.status_code == 200 and "s3cret-t0ken" not in r.text and r.json()["has_secret"] is True

    listed = client.get("/api/pacs")
    assert {p["name"]: p["auth"] for p in listed.json()} == {"Cloud": "bearer", "Orthanc": "basic"}
    assert orthanc.password not in listed.text and "s3cret-t0ken" not in listed.text
    seen = alice.get("/api/pacs")  # a plain user: the names only
    assert seen.json() == [{"name": n, **{k: None for k in seen.json()[0] if k != "name"}} for n in ("Cloud", "Orthanc")]
    assert orthanc.dicomweb not in seen.text and orthanc.user not in seen.text

    # changing the URL keeps the stored password; changing the kind of authentication needs the new secret
    r = client.put("/api/pacs/Orthanc", json={"url": orthanc.dicomweb + "/", "auth": "basic", "username": orthanc.user})
    assert r.status_code == 200 and r.json()["has_secret"] is True
    assert client.put("/api/pacs/Cloud", json={"url": "https://pacs.example.org/dicomweb", "auth": "basic", "username": "x"}).status_code == 422
    assert client.put("/api/pacs/bad/name", json={"url": orthanc.dicomweb}).status_code in (404, 405, 422)
    assert client.put("/api/pacs/Bad", json={"url": "ftp://pacs"}).status_code == 422

    # a plain user searches and contours (into a study of their own)
    found = alice.get("/api/pacs/Orthanc/studies", params={"patient_id": PATIENT})
    assert found.status_code == 200 and [s["study_uid"] for s in found.json()] == [ct["study"]]
    r = alice.post("/api/pacs/Orthanc/contour", json={"study_uid": ct["study"]})  # the study's only CT series
    assert r.status_code == 202, r.text
    assert r.json()["study"]["owner"] == "alice"
    assert wait_job(alice, r.json()["job"]["id"])["state"] == "done"

    # a read-only token can search, not fetch
    token = alice.post("/api/auth/tokens", json={"name": "ro", "scope": "read"}).json()["token"]
    ro = TestClient(client.app, headers={"Authorization": f"Bearer {token}"})
    assert ro.get("/api/pacs/Orthanc/studies", params={"patient_id": PATIENT}).status_code == 200
    assert ro.post("/api/pacs/Orthanc/contour", json={"study_uid": ct["study"]}).status_code == 403

    # errors: unknown study 422, wrong password 502 with one line that names no URL for a plain user
    r = alice.post("/api/pacs/Orthanc/contour", json={"study_uid": "1.2.3.4"})
    assert r.status_code == 422 and "no study 1.2.3.4" in r.json()["detail"]
    assert alice.post("/api/pacs/Orthanc/contour", json={"study_uid": "../etc"}).status_code == 422
    assert _configure(client, orthanc, password="wrong").status_code == 200
    r = alice.get("/api/pacs/Orthanc/studies", params={"patient_id": PATIENT})
    assert r.status_code == 502 and "refused the credentials" in r.json()["detail"], r.text
    assert orthanc.dicomweb not in r.text and "PACS 'Orthanc'" in r.json()["detail"]
    r = client.get("/api/pacs/Orthanc/studies", params={"patient_id": PATIENT})
    assert r.status_code == 502 and orthanc.dicomweb in r.json()["detail"]  # the administrator sees where
    assert client.delete("/api/pacs/Orthanc").status_code == 204
    assert alice.get("/api/pacs/Orthanc/studies", params={"patient_id": PATIENT}).status_code == 404
    # no study was left behind by the failed attempts
    assert len(alice.get("/api/studies").json()) == 1
