"""Versions of a study's contours (issue 37, items 1 and 5): every job's result is kept; a job on a
subset of the structures adds to the current version, keeping the others' corrections and
approvals; replacing corrected or reviewed structures needs a confirmation; an earlier version
can be opened and restored; the quality estimate stays in the RT Structure Set after a review."""

from __future__ import annotations

import io
import json

import nibabel as nib
import numpy as np
import pytest

from service.svc import dicom_available, dicom_series_zip, nifti_bytes, upload, wait_job
from service.test_viewer_api import _masks_zip


def _edit(client, sid, job, name):
    edited = np.zeros((16, 16, 16), np.uint8)
    edited[2:6, 2:6, 2:6] = 1
    body = nib.Nifti1Image(edited, np.diag([2.0, 2.0, 3.0, 1.0])).to_bytes()
    r = client.put(f"/api/studies/{sid}/masks/{name}.nii", params={"job": job}, content=body,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text


def test_subset_job_adds_to_the_current_version_and_versions_restore(client):
    sid = upload(client, [("ct.nii.gz", nifti_bytes(16))]).json()["id"]
    first = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, first)["state"] == "done"
    d = client.get(f"/api/studies/{sid}").json()
    names = [s["name"] for s in d["structures"]]
    assert names == ["Ball", "Box"]
    # approve Ball and correct it; mark Box needs work
    _edit(client, sid, first, "Ball")
    assert client.put(f"/api/studies/{sid}/reviews/Ball", params={"job": first}, json={"state": "approved"}).status_code == 200
    assert client.put(f"/api/studies/{sid}/reviews/Box", params={"job": first}, json={"state": "needs_work"}).status_code == 200

    # re-contouring Box (reviewed) without confirmation: refused, naming it; Ball is not named
    r = client.post(f"/api/studies/{sid}/jobs", json={"structures": ["Box"]})
    assert r.status_code == 409 and "Box (needs work)" in r.json()["detail"] and "Ball" not in r.json()["detail"], r.text
    # a whole new set would replace both
    r = client.post(f"/api/studies/{sid}/jobs", json={})
    assert r.status_code == 409 and "Ball (edited, approved)" in r.json()["detail"], r.text
    second = client.post(f"/api/studies/{sid}/jobs", json={"structures": ["Box"], "confirm_replace": True}).json()["id"]
    assert wait_job(client, second)["state"] == "done"

    d = client.get(f"/api/studies/{sid}").json()
    assert d["result_job"] == second
    rows = {s["name"]: s for s in d["structures"]}
    assert sorted(rows) == ["Ball", "Box"], "the subset job replaced the whole set"
    assert rows["Ball"]["review"]["state"] == "approved" and rows["Ball"]["edited"], rows["Ball"]
    assert rows["Box"]["review"] is None and not rows["Box"]["edited"]
    masks = _masks_zip(client.get(f"/api/studies/{sid}/results/nifti").content)
    assert sorted(masks) == ["Ball", "Box"] and int((masks["Ball"] > 0).sum()) == 64  # the corrected Ball
    # Ball (kept with its correction and approval) still asks before it is replaced
    assert client.post(f"/api/studies/{sid}/jobs", json={"structures": ["Ball"]}).status_code == 409

    # versions: both kept, newest first, the second based on the first
    v = client.get(f"/api/studies/{sid}/versions").json()
    assert [x["job"] for x in v] == [second, first]
    assert v[0]["current"] and not v[1]["current"] and v[0]["based_on"] == first
    assert v[1]["approved"] == 1 and v[1]["needs_work"] == 1 and v[1]["edited"] == 1
    assert v[0]["approved"] == 1 and v[0]["needs_work"] == 0 and v[0]["requested"] == ["Box"]
    # open the earlier version (without making it current)
    old = client.get(f"/api/studies/{sid}", params={"job": first}).json()
    assert old["result_job"] == first and {s["name"]: s["review"]["state"] for s in old["structures"]} == {"Ball": "approved", "Box": "needs_work"}
    assert client.get(f"/api/studies/{sid}").json()["result_job"] == second
    # restore it
    r = client.post(f"/api/studies/{sid}/versions/{first}/restore")
    assert r.status_code == 200 and r.json()[1]["current"], r.text
    d = client.get(f"/api/studies/{sid}").json()
    assert d["result_job"] == first and {s["name"]: (s["review"] or {}).get("state") for s in d["structures"]} == {"Ball": "approved", "Box": "needs_work"}
    assert client.post(f"/api/studies/{sid}/versions/nope/restore").status_code == 404
    # a new job after a restore becomes current
    third = client.post(f"/api/studies/{sid}/jobs", json={"structures": ["Box"], "confirm_replace": True}).json()["id"]
    assert wait_job(client, third)["state"] == "done"
    d = client.get(f"/api/studies/{sid}").json()
    assert d["result_job"] == third and json.loads(client.get(f"/api/studies/{sid}/results/summary").content)["based_on"]["job"] == first


@pytest.mark.skipif(not dicom_available(), reason="delineo.dicom is not importable")
def test_quality_stays_in_the_rt_structure_set_after_a_review(client):
    """Item 5: the unreviewed structures keep 'delineo quality ... REVIEW' in their ROI Description
    once another structure is approved (they were emptied)."""
    import pydicom

    sid = upload(client, [("series.zip", dicom_series_zip(16, 10))]).json()["id"]
    job = client.post(f"/api/studies/{sid}/jobs", json={}).json()["id"]
    assert wait_job(client, job)["state"] == "done"
    path = client.app.state.ctx.storage.results_dir(sid, job) / "summary.json"
    summary = json.loads(path.read_text())
    summary["structures"]["Box"].update(quality=0.55, review=True)
    summary["structures"]["Ball"].update(quality=0.9, review=False)
    path.write_text(json.dumps(summary))
    assert client.put(f"/api/studies/{sid}/reviews/Ball", json={"state": "approved"}).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(client.get(f"/api/studies/{sid}/results/rtstruct").content))
    desc = {str(r.ROIName): str(r.get("ROIDescription", "")) for r in ds.StructureSetROISequence}
    assert desc["Box"] == "delineo quality 0.55 (estimated Dice), REVIEW", desc
    assert desc["Ball"].startswith("approved by admin") and "quality 0.90" in desc["Ball"], desc
    # re-contouring Box alone (not reviewed: no question) keeps Ball and its approval in the RT Structure Set
    second = client.post(f"/api/studies/{sid}/jobs", json={"structures": ["Box"]})
    assert second.status_code == 202, second.text
    assert wait_job(client, second.json()["id"])["state"] == "done"
    ds = pydicom.dcmread(io.BytesIO(client.get(f"/api/studies/{sid}/results/rtstruct").content))
    desc = {str(r.ROIName): str(r.get("ROIDescription", "")) for r in ds.StructureSetROISequence}
    assert sorted(desc) == ["Ball", "Box"] and desc["Ball"].startswith("approved by admin"), desc
