"""The DICOM node of `delineo serve --dicom-port` writes the access log: a series received from a
real storescu (once per series, not per image), contoured, forwarded to a storage SCP; instances
refused at C-STORE and an association from an AE title not allowed. Patients only as the hash."""

from __future__ import annotations

import http.cookiejar
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from delineo.service.audit import patient_pseudonym, use_secret

from waits import HANG_S, LONG_HANG_S

from system_tools import dcmtk
from .test_node_import import dcmtk_peers, free_port, storescp, storescu  # noqa: F401

PASSWORD = "serve-node-audit"


def _wait(predicate, timeout, what, proc, log):
    end = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, log.read_text()
        assert time.time() < end, what
        time.sleep(0.3)


def _signed_in(base: str):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    req = urllib.request.Request(f"{base}/api/auth/login", data=json.dumps({"username": "admin", "password": PASSWORD}).encode(),
                                 headers={"Content-Type": "application/json"})
    with opener.open(req, timeout=30) as r:
        assert r.status == 200
    return opener


@dcmtk_peers
def test_served_node_writes_the_access_log(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, received, start_scp = storescp
    start_scp()
    http_port, dicom_port = free_port(), free_port()
    home = tmp_path / "var"
    env = {**os.environ, "DELINEO_ADMIN_PASSWORD": PASSWORD}
    cmd = [sys.executable, "-m", "delineo", "serve", "--port", str(http_port), "--home", str(home),
           "--dicom-port", str(dicom_port), "--dicom-model", str(tiny_ct_model), "--dicom-idle-seconds", "1",
           "--dicom-allowed-ae", "CT1", "--dicom-forward", f"TPS@127.0.0.1:{dest_port}", "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{http_port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/api/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait(up, HANG_S, "the web service did not come up", proc, log)
        files = sorted(Path(ct_dir).glob("*.dcm"))
        store = storescu(dicom_port, files, aet="CT1")
        assert store.returncode == 0, store.stderr
        _wait(lambda: len([f for f in received.iterdir() if f.is_file()]) >= 2, LONG_HANG_S,
              "the structure set and SEG were not forwarded", proc, log)

        # two instances refused at C-STORE in one association (a UID that is not a UID): one row, counted
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="DELINEO")
        assert assoc.is_established
        try:
            for f in files[:2]:
                ds = pydicom.dcmread(f)
                ds.SeriesInstanceUID = "1.2..3"
                assert assoc.send_c_store(ds).Status == 0xC000
        finally:
            assoc.release()
        # an AE title not allowed: the association is rejected
        other = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "DELINEO", "127.0.0.1", str(dicom_port)],
                               capture_output=True)
        assert other.returncode != 0

        opener = _signed_in(base)

        def events() -> list[dict]:
            with opener.open(f"{base}/api/audit?actor_kind=ae", timeout=30) as r:
                return [e for e in json.load(r) if e["actor_kind"] == "ae"]

        _wait(lambda: {"receive", "contour", "forward", "refuse"} <= {e["action"] for e in events()}
              and sum(e["action"] == "refuse" for e in events()) >= 2, HANG_S, "node events missing from the access log", proc, log)
        rows = events()
        with opener.open(f"{base}/api/audit.csv", timeout=30) as r:
            csv_text = r.read().decode()
        with opener.open(f"{base}/audit", timeout=30) as r:
            page = r.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    by_action: dict[str, list[dict]] = {}
    for e in rows:
        by_action.setdefault(e["action"], []).append(e)
    # one "receive" for the series of many images, with the calling AE title and the peer's address
    assert len(by_action["receive"]) == 1, by_action["receive"]
    rec = by_action["receive"][0]
    assert rec["actor"] == "CT1" and rec["study_id"] == study_uid and rec["address"].startswith("127.0.0.1")
    assert f"{len(files)} images" in rec["detail"]
    (contour,) = by_action["contour"]
    assert contour["actor"] == "CT1" and contour["study_id"] == study_uid and "structures" in contour["detail"]
    (forward,) = by_action["forward"]
    assert forward["actor"] == "TPS" and forward["study_id"] == study_uid and forward["address"] == f"127.0.0.1:{dest_port}"
    assert "rtstruct" in forward["detail"]
    refused = {e["actor"]: e for e in by_action["refuse"]}
    assert "2 instances refused" in refused["CT1"]["detail"] and refused["CT1"]["study_id"] == study_uid
    assert "rejected" in refused["INTRUDER"]["detail"] and refused["INTRUDER"]["address"].startswith("127.0.0.1")
    # the patient as the pseudonym the web service uses (keyed with this installation's secret),
    # never the ID or name in clear
    use_secret(home)
    for e in (rec, contour, forward, refused["CT1"]):
        assert e["patient"] == patient_pseudonym("P123")
    for text in (csv_text, page, json.dumps(rows)):
        assert "P123" not in text and "Doe" not in text and "Jane" not in text
    assert "receive" in page and "forward" in page
