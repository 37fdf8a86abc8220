"""`delineo contour --dicomweb URL --study UID` and `api.contour_dicomweb` against Orthanc's DICOMweb
plugin (basic authentication on, as deploy/orthanc/orthanc.json has it): QIDO-RS, WADO-RS, STOW-RS."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from delineo import api
from delineo.cli import main
from delineo.data.io import read_image
from delineo.dicom.dicomweb import DicomwebAuth, Pacs, session
from delineo.dicom.series import read_series
from delineo.dicom.write_ct import write_ct_series
from delineo.errors import ConfigError, InputError

from .conftest import phantom
from .orthanc import make_tls_files, needs_orthanc, running_orthanc, tls_proxy
from .test_node_import import free_port
from .test_orthanc import check_results_reference_the_ct, study_results


@pytest.fixture
def orthanc(tmp_path):
    with running_orthanc(tmp_path / "orthanc", free_port(), free_port()) as server:
        yield server


def test_auth_options_reach_the_http_session(tmp_path):
    cert, key, ca = (tmp_path / n for n in ("client.pem", "client.key", "ca.pem"))
    for f in (cert, key, ca):
        f.write_text("-----BEGIN-----\n")
    s = session(DicomwebAuth(token="t0ken"))
    assert s.headers["Authorization"] == "Bearer t0ken" and s.auth is None and s.verify is True
    s = session(DicomwebAuth(username="u", password="p", client_cert=cert, client_key=key, ca_bundle=ca))
    assert s.auth == ("u", "p") and s.cert == (str(cert), str(key)) and s.verify == str(ca)
    assert "Authorization" not in s.headers
    with pytest.raises(ConfigError, match="either a bearer token or"):
        DicomwebAuth(token="t", username="u")
    with pytest.raises(InputError, match="no such file"):
        DicomwebAuth(ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(InputError, match="starts with http"):
        Pacs("pacs.example.org/dicom-web")


@needs_orthanc
def test_contour_a_study_from_dicomweb_and_store_the_results_back(tmp_path, ct_dir, tiny_ct_model, orthanc):
    files = sorted(ct_dir.glob("*.dcm"))
    orthanc.upload(files)
    series = read_series(ct_dir)
    auth = DicomwebAuth(username=orthanc.user, password=orthanc.password)

    found = Pacs(orthanc.dicomweb, auth).find_studies(patient_id="P123")
    assert [s["study_uid"] for s in found] == [series.study_instance_uid] and found[0]["patient_name"] == "Doe^Jane"

    summary = api.contour_dicomweb(orthanc.dicomweb, series.study_instance_uid, tmp_path / "out", auth=auth,
                                   model=str(tiny_ct_model), device="cpu", overview=False)
    web = summary["dicomweb"]
    assert web["series_instance_uid"] == series.series_instance_uid and len(web["stored"]) == 2
    assert set(summary["seconds"]) >= {"fetch", "model", "store"}

    results = study_results(orthanc, series.study_instance_uid)
    assert len(results["CT"]) == len(files)
    masks = check_results_reference_the_ct(results, series, tmp_path)
    assert {str(results["RTSTRUCT"][0].SOPInstanceUID), str(results["SEG"][0].SOPInstanceUID)} == set(web["stored"])
    # what Orthanc holds is what was written locally, voxel for voxel
    local = pydicom.dcmread(summary["seg"])
    assert local.SOPInstanceUID == results["SEG"][0].SOPInstanceUID
    for name, s in summary["structures"].items():
        m = read_image(s["file"]).array > 0.5
        assert np.array_equal(masks["seg"][name], m), name


@needs_orthanc
def test_cli_dicomweb_errors_are_one_line(tmp_path, ct_dir, tiny_ct_model, orthanc, capsys, monkeypatch):
    write_ct_series(phantom()[0], tmp_path / "ct2", patient_id="P123", study_uid=read_series(ct_dir).study_instance_uid,
                    series_description="CT second")
    orthanc.upload(sorted(ct_dir.glob("*.dcm")) + sorted((tmp_path / "ct2").glob("*.dcm")))
    study = read_series(ct_dir).study_instance_uid
    base = ["contour", "--dicomweb", orthanc.dicomweb, "--study", study, "-o", str(tmp_path / "out"), "--model", str(tiny_ct_model),
            "--device", "cpu", "--no-overview", "--dicomweb-user", orthanc.user]

    monkeypatch.setenv("DELINEO_DICOMWEB_PASSWORD", "wrong")
    assert main(base) != 0
    err = capsys.readouterr().err
    assert "refused the credentials (HTTP 401)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    monkeypatch.setenv("DELINEO_DICOMWEB_PASSWORD", orthanc.password)
    assert main(base) != 0
    err = capsys.readouterr().err
    assert "has 2 CT series, pick one with --series" in err and "CT second" in err

    assert main(["contour", "--dicomweb", orthanc.dicomweb, "-o", str(tmp_path / "x")]) != 0
    assert "takes --study" in capsys.readouterr().err

    # the one series named, stored back: the CLI says so
    assert main([*base, "--series", read_series(ct_dir).series_instance_uid]) == 0
    out = capsys.readouterr().out
    assert "2 result(s) stored back in study " + study in out
    assert {"RTSTRUCT", "SEG"} <= set(study_results(orthanc, study))

    # an unreachable server is one line too
    monkeypatch.delenv("DELINEO_DICOMWEB_PASSWORD")
    assert main(["contour", "--dicomweb", f"http://127.0.0.1:{free_port()}/dicom-web", "--study", study, "-o", str(tmp_path / "y")]) != 0
    assert "cannot reach the DICOMweb server" in capsys.readouterr().err


@needs_orthanc
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl (the CLI) makes the test certificates")
def test_client_certificate_and_ca_bundle_over_https(tmp_path, ct_dir, tiny_ct_model, orthanc):
    """Orthanc behind a TLS reverse proxy that accepts only clients with a certificate from the
    hospital's CA (here a throw-away one): the DICOMweb round trip works with the client certificate,
    its key and the CA bundle, and fails in one line without the client certificate or the CA bundle."""
    tls = make_tls_files(tmp_path / "tls")
    orthanc.upload(sorted(ct_dir.glob("*.dcm")))
    study = read_series(ct_dir).study_instance_uid
    user = dict(username=orthanc.user, password=orthanc.password)
    with tls_proxy(tls, orthanc.http_port) as port:
        url = f"https://127.0.0.1:{port}/dicom-web"
        with pytest.raises(InputError, match="TLS|cannot reach"):  # no client certificate: the handshake is refused
            Pacs(url, DicomwebAuth(**user, ca_bundle=tls.ca)).find_studies(patient_id="P123")
        with pytest.raises(InputError, match="TLS failed"):  # the server's certificate is not from a CA the system knows
            Pacs(url, DicomwebAuth(**user, client_cert=tls.client_cert, client_key=tls.client_key)).find_studies()
        auth = DicomwebAuth(**user, client_cert=tls.client_cert, client_key=tls.client_key, ca_bundle=tls.ca)
        assert [s["study_uid"] for s in Pacs(url, auth).find_studies(patient_id="P123")] == [study]
        summary = api.contour_dicomweb(url, study, tmp_path / "out", auth=auth, model=str(tiny_ct_model), device="cpu", overview=False)
    assert len(summary["dicomweb"]["stored"]) == 2
    assert {"RTSTRUCT", "SEG"} <= set(study_results(orthanc, study))
