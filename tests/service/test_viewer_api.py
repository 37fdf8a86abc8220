"""The viewer's side of the API (issue 22): inputs that are not a CT in Hounsfield units are
refused with the file named; a study's detail names the job whose result is shown, so a new job
does not leave the viewer asking for ``?job=null``; local API documentation."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from service.svc import nifti_bytes, storage_scp, upload, wait_job


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


def _masks_zip(content: bytes) -> dict[str, np.ndarray]:
    import io
    import zipfile

    out = {}
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        for n in zf.namelist():
            if n.endswith(".nii.gz"):
                out[n.split("/")[-1][: -len(".nii.gz")]] = np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(zf.read(n))).dataobj)
    return out


def test_edit_and_review_make_a_new_version(client):
    """A corrected mask (as the viewer PUTs it) becomes the result: NIfTI zip, summary, viewer
    mask; the model's original stays at ?original=true; reviews carry user and time; both go
    into the access log."""
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    d = client.get(f"/api/studies/{sid}").json()
    name = d["structures"][0]["name"]
    original = _masks_zip(client.get(f"/api/studies/{sid}/results/nifti").content)[name]
    edited = np.zeros_like(original)
    edited[2:6, 2:6, 2:6] = 1
    # what NiiVue sends: an uncompressed NIfTI with the CT's header
    body = nib.Nifti1Image(edited.astype(np.uint8), np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes()
    r = client.put(f"/api/studies/{sid}/masks/{name}.nii", params={"job": job}, content=body,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["edited"] == [name]
    now = _masks_zip(client.get(f"/api/studies/{sid}/results/nifti").content)[name]
    assert (now > 0).sum() == 64 and ((now > 0) == (edited > 0)).all()
    again = _masks_zip(client.get(f"/api/studies/{sid}/results/nifti", params={"original": True}).content)[name]
    assert (again == original).all()
    d = client.get(f"/api/studies/{sid}").json()
    row = next(s for s in d["structures"] if s["name"] == name)
    assert row["edited"] and d["edit_version"] == 1
    assert abs(row["volume"] - 64 * 12 / 1000) < 1e-6
    # wrong grid: refused, named
    bad = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)).to_bytes()
    r = client.put(f"/api/studies/{sid}/masks/{name}.nii", content=bad)
    assert r.status_code == 422 and name in r.json()["detail"]
    # reviews
    r = client.put(f"/api/studies/{sid}/reviews/{name}", json={"state": "approved"})
    assert r.status_code == 200 and r.json()["reviews"][name]["user"] == "admin"
    row = next(s for s in client.get(f"/api/studies/{sid}").json()["structures"] if s["name"] == name)
    assert row["review"]["state"] == "approved" and row["review"]["at"]
    assert client.put(f"/api/studies/{sid}/reviews/{name}", json={"state": "maybe"}).status_code == 422
    summary = client.get(f"/api/studies/{sid}/results/summary").json()
    assert summary["structures"][name]["approval"]["state"] == "approved"
    ctx = client.app.state.ctx
    from sqlalchemy import select

    from delineo.service.models import AccessEvent

    with ctx.db.session() as s:
        actions = [a for a, in s.execute(select(AccessEvent.action).where(AccessEvent.study_id == sid))]
    assert "edit" in actions and "review" in actions


def test_edit_and_approval_in_the_rt_structure_set(client):
    import io

    import pydicom

    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    sid = upload(client, [("series.zip", dicom_series_zip(16, 8))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    names = [s["name"] for s in client.get(f"/api/studies/{sid}").json()["structures"]]
    masks = _masks_zip(client.get(f"/api/studies/{sid}/results/nifti").content)
    m = np.zeros_like(masks[names[0]])
    m[4:10, 4:10, 1:5] = 1
    body = gzip.compress(nib.Nifti1Image(m.astype(np.uint8), np.eye(4)).to_bytes())
    assert client.put(f"/api/studies/{sid}/masks/{names[0]}.nii.gz", content=body).status_code == 200
    for n in names:
        assert client.put(f"/api/studies/{sid}/reviews/{n}", json={"state": "approved", "note": "checked"}).status_code == 200
    rt = pydicom.dcmread(io.BytesIO(client.get(f"/api/studies/{sid}/results/rtstruct").content))
    orig = pydicom.dcmread(io.BytesIO(client.get(f"/api/studies/{sid}/results/rtstruct", params={"original": True}).content))
    assert rt.ApprovalStatus == "APPROVED" and rt.ReviewerName == "admin" and orig.ApprovalStatus == "UNAPPROVED"
    number = {str(r.ROIName): int(r.ROINumber) for r in rt.StructureSetROISequence}[names[0]]
    roi = next(r for r in rt.StructureSetROISequence if int(r.ROINumber) == number)
    assert "approved by admin" in roi.ROIDescription and "edited" in roi.ROIDescription
    obs = next(o for o in rt.RTROIObservationsSequence if int(o.ReferencedROINumber) == number)
    assert obs.ROIInterpreter == "admin"
    contours = next(c for c in rt.ROIContourSequence if int(c.ReferencedROINumber) == number).ContourSequence
    assert len(contours) == 4  # the edited block spans 4 slices


def test_one_structure_set_version_per_change_set(client):
    """Issue 37 item 9: review clicks do not each raise the RT Structure Set's version; the changes
    between two downloads (or sends) of the DICOM results are one version."""
    import io

    import pydicom

    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    sid = upload(client, [("series.zip", dicom_series_zip(16, 8))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    names = [s["name"] for s in client.get(f"/api/studies/{sid}").json()["structures"]]

    def rtstruct():
        r = client.get(f"/api/studies/{sid}/results/rtstruct")
        assert r.status_code == 200, r.text
        return pydicom.dcmread(io.BytesIO(r.content))

    clicks = [(names[0], "approved"), (names[1], "needs_work"), (names[1], None), (names[1], "approved")]
    for n, state in clicks:
        r = client.put(f"/api/studies/{sid}/reviews/{n}", json={"state": state})
        assert r.status_code == 200 and r.json()["set_version"] == 1, r.json()
    d = client.get(f"/api/studies/{sid}").json()
    assert d["edit_version"] == len(clicks) and d["set_version"] == 1
    first = rtstruct()
    assert first.SeriesDescription.endswith("(version 1)"), first.SeriesDescription
    assert first.ApprovalStatus == "APPROVED"
    again = rtstruct()  # a second download without a change: the same set
    assert again.SOPInstanceUID == first.SOPInstanceUID and again.SeriesDescription == first.SeriesDescription
    # changes after the download: the next version, again one for several clicks
    for state in ("needs_work", "approved"):
        assert client.put(f"/api/studies/{sid}/reviews/{names[0]}", json={"state": state}).json()["set_version"] == 2
    second = rtstruct()
    assert second.SeriesDescription.endswith("(version 2)") and second.SOPInstanceUID != first.SOPInstanceUID
    assert client.get(f"/api/studies/{sid}").json()["set_version"] == 2
    summary = client.get(f"/api/studies/{sid}/results/summary").json()
    assert summary["set_version"] == 2 and summary["edit_version"] == len(clicks) + 2


def test_reference_nifti_and_rtstruct_metrics(client):
    """Reference contours: NIfTI masks (a zip) for a NIfTI study, an RT Structure Set for a DICOM
    study; Dice, HD95 and surface Dice per structure; wrong grids refused with the file named."""
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    assert client.get(f"/api/studies/{sid}/reference").json()["present"] is False
    r = client.post(f"/api/studies/{sid}/reference", files=[("files", ("Ball.nii.gz", b"x", "application/octet-stream"))])
    assert r.status_code == 422 and "contour the study first" in r.json()["detail"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    zipped = client.get(f"/api/studies/{sid}/results/nifti").content
    r = client.post(f"/api/studies/{sid}/reference", files=[("files", ("reference.zip", zipped, "application/zip"))])
    assert r.status_code == 201, r.text
    ref = r.json()
    assert ref["present"] and ref["source"] == "reference.zip" and ref["user"] == "admin"
    rows = {m["structure"]: m for m in ref["metrics"]}
    for name, m in rows.items():
        masks = _masks_zip(zipped)
        if masks[name].any():
            assert m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["surface_dice"] == 1.0, m
    # a shifted reference for one structure (named differently in case): lower agreement
    name = next(n for n, a in _masks_zip(zipped).items() if a.any())
    shifted = np.roll(_masks_zip(zipped)[name], 3, axis=0).astype(np.uint8)
    r = client.post(f"/api/studies/{sid}/reference", files=[("files", (f"{name.lower()}.nii.gz", _nii(shifted), "application/gzip"))])
    assert r.status_code == 201, r.text
    m = next(x for x in r.json()["metrics"] if x["structure"] == name)
    assert m["reference"] == name.lower() and m["dice"] < 1.0 and m["hd95_mm"] > 0
    assert client.get(f"/api/studies/{sid}/reference/masks/{name.lower()}.nii.gz").status_code == 200
    r = client.post(f"/api/studies/{sid}/reference", files=[("files", ("small.nii.gz", _nii(np.zeros((4, 4, 4), np.uint8)), "application/gzip"))])
    assert r.status_code == 422 and "small.nii.gz" in r.json()["detail"] and "grid" in r.json()["detail"]


def test_reference_rt_structure_set(client):
    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    sid = upload(client, [("series.zip", dicom_series_zip(16, 8))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    rt = client.get(f"/api/studies/{sid}/results/rtstruct").content
    r = client.post(f"/api/studies/{sid}/reference", files=[("files", ("clinician.dcm", rt, "application/dicom"))])
    assert r.status_code == 201, r.text
    rows = [m for m in r.json()["metrics"] if m.get("reference") and m.get("volume_cc")]
    assert rows and all(m["dice"] > 0.8 for m in rows), rows


@pytest.fixture
def tps():
    """A planning system stand-in that keeps what it receives (:func:`svc.storage_scp`)."""
    scp = storage_scp()
    yield scp
    scp["server"].shutdown()


def test_send_to_a_destination(client, tps):
    import time

    from service.svc import dicom_available, dicom_series_zip

    if not dicom_available():
        pytest.skip("delineo.dicom is not importable")
    assert client.get("/api/send/destinations").json() == []
    assert client.put("/api/send/destinations/TPS", json={"address": "nonsense"}).status_code == 422
    r = client.put("/api/send/destinations/TPS", json={"address": tps["address"]})
    assert r.status_code == 200 and r.json()[0]["target"] == tps["address"]
    sid = upload(client, [("series.zip", dicom_series_zip(16, 8))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    name = client.get(f"/api/studies/{sid}").json()["structures"][0]["name"]
    assert client.put(f"/api/studies/{sid}/reviews/{name}", json={"state": "approved"}).status_code == 200
    assert client.post(f"/api/studies/{sid}/send", json={"destination": "nowhere"}).status_code == 404
    r = client.post(f"/api/studies/{sid}/send", json={"destination": "TPS"})
    assert r.status_code == 202, r.text
    for _ in range(100):
        sends = client.get(f"/api/studies/{sid}/sends").json()
        if sends[0]["state"] in ("sent", "failed"):
            break
        time.sleep(0.1)
    assert sends[0]["state"] == "sent", sends
    modalities = sorted(str(ds.Modality) for ds in tps["received"])
    assert modalities == ["RTSTRUCT", "SEG"]
    rt = next(ds for ds in tps["received"] if ds.Modality == "RTSTRUCT")
    assert any("approved by admin" in str(r.get("ROIDescription", "")) for r in rt.StructureSetROISequence)
    # a destination that does not answer: failed, with the reason, after its retries
    import delineo.service.send as send_mod

    send_mod.RETRY_S = (0.01,)
    client.put("/api/send/destinations/Down", json={"address": "DOWN@127.0.0.1:9"})
    client.post(f"/api/studies/{sid}/send", json={"destination": "Down"})
    for _ in range(300):
        down = [s for s in client.get(f"/api/studies/{sid}/sends").json() if s["destination"] == "Down"]
        if down and down[0]["state"] == "failed":
            break
        time.sleep(0.1)
    assert down[0]["state"] == "failed" and "no association" in down[0]["error"], down
    # a user who is not an administrator cannot add destinations
    from fastapi.testclient import TestClient

    assert client.post("/api/users", json={"username": "carol", "password": "carol-password"}).status_code == 201
    carol = TestClient(client.app)
    carol.post("/api/auth/login", json={"username": "carol", "password": "carol-password"})
    assert carol.put("/api/send/destinations/X", json={"address": tps["address"]}).status_code == 403


def test_flags_and_quality_reach_the_structure_table(client):
    """Anatomy-check flags and the model's quality estimate in summary.json come out per structure
    (the page lists flagged structures first, with a warning sign)."""
    import json

    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    ctx = client.app.state.ctx
    path = ctx.storage.results_dir(sid, job) / "summary.json"
    summary = json.loads(path.read_text())
    names = list(summary["structures"])
    summary["structures"][names[-1]]["flags"] = ["left/right swapped?"]
    summary["structures"][names[0]].update(quality=0.31, review=True)
    summary["checks"] = [{"name": "laterality", "passed": False, "message": "left/right swapped?"}]
    path.write_text(json.dumps(summary))
    d = client.get(f"/api/studies/{sid}").json()
    rows = {s["name"]: s for s in d["structures"]}
    assert rows[names[-1]]["flags"] == ["left/right swapped?"]
    assert rows[names[0]]["quality"] == {"quality": 0.31, "review": True} and rows[names[0]]["review"] is None
    assert d["checks"][0]["passed"] is False
    # a reviewer's mark does not clobber the model's needs-review flag
    client.put(f"/api/studies/{sid}/reviews/{names[0]}", json={"state": "needs_work"})
    row = next(s for s in client.get(f"/api/studies/{sid}").json()["structures"] if s["name"] == names[0])
    assert row["review"]["state"] == "needs_work" and row["quality"]["review"] is True


def test_overview_title_is_the_study_name(client, monkeypatch):
    """The overview PNG is titled with the study's name (it said 'dicom — hn-ct' / 'ct.nii.gz — ...')."""
    import delineo.api as api_mod

    seen = []
    original = api_mod.write_overview

    def spy(*args, **kwargs):
        seen.append(kwargs.get("title"))
        return original(*args, **kwargs)

    monkeypatch.setattr(api_mod, "write_overview", spy)
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))], data={"name": "HN patient 7"}).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    assert seen and seen[-1].startswith("HN patient 7 — "), seen
