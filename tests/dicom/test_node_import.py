"""The DICOM node against real dcmtk peers (echoscu, storescu, storescp), and import-dicom."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from delineo.cli import main
from delineo.data.datasets import open_dataset
from delineo.dicom.node import DicomNode, NodeConfig, parse_destination
from delineo.dicom.rtstruct import write_rtstruct
from delineo.dicom.series import read_series
from delineo.errors import ConfigError
from delineo.metrics.segmentation import dice

from waits import HANG_S

from system_tools import dcmtk

from .conftest import needs, phantom


def dcmtk_peers(test):
    """The node tests talk to real dcmtk programs; skipped where dcmtk is not installed."""
    for tool in ("storescu", "storescp", "echoscu"):
        test = needs(tool)(test)
    return test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def storescp(tmp_path):
    """A dcmtk Storage SCP as the forward destination: (port, output folder, start())."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    procs = []

    def start():
        p = subprocess.Popen([dcmtk("storescp"), "--output-directory", str(out), "--aetitle", "TPS", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        time.sleep(0.5)
        return p

    yield port, out, start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@contextmanager
def running_node(tmp_path, model, dest_port, **kw) -> Iterator[DicomNode]:
    """A node accepting TESTSCU and forwarding to TPS on ``dest_port``; stopped on leaving."""
    values = dict(storage=tmp_path / "node", port=free_port(), host="127.0.0.1", allowed_ae=["TESTSCU"],
                  forward=("TPS", "127.0.0.1", dest_port), idle_seconds=1.0, model=str(model), device="cpu",
                  retry_initial_s=0.5, poll_s=0.2)
    cfg = NodeConfig(**{**values, **kw})
    node = DicomNode(cfg).start()
    try:
        yield node
    finally:
        node.stop()


def wait_for(predicate, timeout=HANG_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def storescu(port, files, aet="TESTSCU"):
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", "DELINEO", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=HANG_S)


def received(out: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.Modality): ds for ds in (pydicom.dcmread(f) for f in out.iterdir() if f.is_file())}


def test_destination_parsing():
    assert parse_destination("TPS@10.0.0.5:104") == ("TPS", "10.0.0.5", 104)
    for bad in ("TPS10.0.0.5:104", "TPS@host", "@h:1", "A" * 17 + "@h:1"):
        with pytest.raises(ConfigError, match="AE@HOST:PORT"):
            parse_destination(bad)


@dcmtk_peers
def test_echo_store_contour_forward(tmp_path, ct_dir, tiny_ct_model, storescp, caplog):
    dest_port, out, start_scp = storescp
    start_scp()
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        echo = subprocess.run([dcmtk("echoscu"), "-aet", "TESTSCU", "-aec", "DELINEO", "127.0.0.1", str(node.cfg.port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        files = sorted(ct_dir.glob("*.dcm"))
        sent = storescu(node.cfg.port, files)
        assert sent.returncode == 0, sent.stderr
        # stored durably before the acknowledgement: every instance is on disk now
        stored = list((tmp_path / "node").rglob("*.dcm"))
        assert len([p for p in stored if "incoming" in p.parts or "work" in p.parts or "done" in p.parts]) >= len(files)
        assert wait_for(lambda: {"RTSTRUCT", "SEG"} <= set(received(out))), node.events
        rt = received(out)["RTSTRUCT"]
        series = read_series(ct_dir)
        ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert ref.SeriesInstanceUID == series.series_instance_uid
        assert {r.ROIName for r in rt.StructureSetROISequence} == {"PTV70", "Mandible"}
        assert "Doe" not in caplog.text and "Jane" not in caplog.text  # no patient names in the log


@dcmtk_peers
def test_unknown_calling_ae_is_refused(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, out, _ = storescp
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        sent = storescu(node.cfg.port, sorted(ct_dir.glob("*.dcm"))[:1], aet="INTRUDER")
        assert sent.returncode != 0
        assert not list((tmp_path / "node" / "incoming").rglob("*.dcm"))


@dcmtk_peers
def test_retries_until_the_destination_is_up_and_survives_a_bad_study(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, out, start_scp = storescp
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        # a bad study first: a series with a missing slice fails, the node goes on
        from delineo.dicom.write_ct import write_ct_series

        bad = tmp_path / "bad"
        write_ct_series(phantom()[0], bad)
        sorted(bad.glob("*.dcm"))[4].unlink()
        assert storescu(node.cfg.port, sorted(bad.glob("*.dcm"))).returncode == 0
        assert wait_for(lambda: any(e["state"] == "failed" for e in node.events))
        assert "missing slice" in next(iter((tmp_path / "node" / "failed").rglob("error.txt"))).read_text()
        # the destination is down: the structure set waits in the outbox and is retried
        assert storescu(node.cfg.port, sorted(ct_dir.glob("*.dcm"))).returncode == 0
        def attempts() -> int:
            states = list((tmp_path / "node" / "outbox").glob("*/state.json"))
            return int(json.loads(states[0].read_text())["attempts"]) if states else 0

        assert wait_for(lambda: attempts() >= 1)
        start_scp()
        assert wait_for(lambda: any(e["state"] == "sent" for e in node.events)), node.events
        assert "RTSTRUCT" in received(out)
        sent = [e for e in node.events if e["state"] == "sent"]
        assert sent and sent[0]["attempts"] >= 2


def test_import_dicom_with_roi_map(tmp_path, ct_dir):
    series = read_series(ct_dir)
    _, masks = phantom()
    renamed = {"PTV_7000": masks["PTV70"], "Mandible ": masks["Mandible"], "Couch": masks["Mandible"]}
    write_rtstruct(series, renamed, ct_dir / "rtstruct.dcm")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"ptv_7000": "PTV70", "Mandible": "Mandible"}))
    rc = main(["import-dicom", str(ct_dir), str(tmp_path / "dataset"), "--roi-map", str(tmp_path / "map.yaml")])
    assert rc in (0, None)
    ds = open_dataset(tmp_path / "dataset", ["PTV70", "Mandible", "Brainstem"], None)
    assert ds.cases == ["P123"]
    s = ds[0]
    assert list(s["present"]) == [True, True, False]  # Brainstem not contoured: unknown, not empty
    np.testing.assert_allclose(s["affine"], series.image.affine, atol=1e-4)
    assert dice(s["label"][0], masks["PTV70"]) >= 0.95 and dice(s["label"][1], masks["Mandible"]) >= 0.95
    assert not (tmp_path / "dataset" / "P123" / "segmentations" / "Couch.nii.gz").exists()


def test_import_dicom_skips_a_structure_set_without_its_ct(tmp_path, ct_dir):
    series = read_series(ct_dir)
    write_rtstruct(series, {"PTV70": phantom()[1]["PTV70"]}, tmp_path / "only" / "rt.dcm")
    from delineo.dicom.importer import import_dicom

    report = import_dicom(tmp_path / "only", tmp_path / "out")
    assert report["cases"] == [] and "not in" in report["skipped"][0]["reason"]


def test_dicom_node_cli_needs_allowed_ae_and_a_valid_destination(tmp_path, capsys):
    rc = main(["dicom-node", "--port", str(free_port()), "--storage", str(tmp_path / "n"), "--forward", "TPS@127.0.0.1:1"])
    assert rc == 2 and "--allowed-ae" in capsys.readouterr().err
    rc = main(["dicom-node", "--allowed-ae", "CT1", "--storage", str(tmp_path / "n"), "--forward", "TPS-127.0.0.1"])
    assert rc == 2 and "AE@HOST:PORT" in capsys.readouterr().err
