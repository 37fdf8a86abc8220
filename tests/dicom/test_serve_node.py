"""`delineo serve --dicom-port`: the web service and the DICOM node in one process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from delineo.cli import main

from waits import HANG_S, LONG_HANG_S

from system_tools import dcmtk

from .conftest import needs
from .test_node_import import free_port


def test_serve_refuses_an_open_node_without_allowed_ae(tmp_path, capsys):
    rc = main(["serve", "--host", "0.0.0.0", "--port", str(free_port()), "--home", str(tmp_path / "var"),
               "--dicom-port", str(free_port())])
    assert rc == 2 and "--dicom-allowed-ae" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()  # refused before anything was created


@needs("storescu")
@needs("echoscu")
def test_serve_with_dicom_node_contours_a_stored_series(tmp_path, ct_dir, tiny_ct_model):
    http_port, dicom_port = free_port(), free_port()
    home = tmp_path / "var"
    env = {**os.environ, "DELINEO_ADMIN_PASSWORD": "serve-node-test"}
    cmd = [sys.executable, "-m", "delineo", "serve", "--port", str(http_port), "--home", str(home),
           "--dicom-port", str(dicom_port), "--dicom-model", str(tiny_ct_model), "--dicom-idle-seconds", "1",
           "--dicom-allowed-ae", "CT1", "--log-level", "warning"]
    # output to a file, not a pipe read only at the end (a full pipe would stall the server); the
    # deadlines only bound a hang: a loaded 2-core machine has taken over a minute to start it
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + HANG_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.time() < deadline, "the web service did not come up"
                time.sleep(0.3)
        echo = subprocess.run([dcmtk("echoscu"), "-aet", "CT1", "-aec", "DELINEO", "127.0.0.1", str(dicom_port)], capture_output=True)
        assert echo.returncode == 0, echo.stderr
        files = sorted(str(p) for p in Path(ct_dir).glob("*.dcm"))
        store = subprocess.run([dcmtk("storescu"), "-aet", "CT1", "-aec", "DELINEO", "127.0.0.1", str(dicom_port), *files],
                               capture_output=True)
        assert store.returncode == 0, store.stderr
        deadline = time.time() + LONG_HANG_S
        while not list((home / "dicom-node" / "done").rglob("rtstruct.dcm")):
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, "no RT Structure Set under dicom-node/done"
            time.sleep(0.3)
        # the web page tells administrators where the node's series went (issue 37 item 9): listed read only
        import http.cookiejar
        import json

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        login = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/auth/login", method="POST",
                                       data=json.dumps({"username": "admin", "password": "serve-node-test"}).encode(),
                                       headers={"Content-Type": "application/json"})
        assert opener.open(login, timeout=30).status == 200
        with opener.open(f"http://127.0.0.1:{http_port}/api/dicom-node", timeout=30) as r:
            node = json.loads(r.read())
        series = next((home / "dicom-node" / "done").rglob("rtstruct.dcm")).parent.name
        assert [c["series"] for c in node["contoured"]] == [series] and node["contoured"][0]["structures"] > 0, node
        assert node["storage"] == str(home / "dicom-node") and "--status" in node["status_command"]
        # a calling AE title not on the list is refused by the same node
        other = subprocess.run([dcmtk("storescu"), "-aet", "INTRUDER", "-aec", "DELINEO", "127.0.0.1", str(dicom_port), files[0]],
                               capture_output=True)
        assert other.returncode != 0 and b"Rejected" in other.stderr + other.stdout, other
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = log.read_text()
    assert "DICOM node DELINEO" in out and "accepting CT from CT1" in out
