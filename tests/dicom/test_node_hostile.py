"""The DICOM node against a hostile or careless peer (issue 18): UIDs that name paths, truncated
instances, interrupted and repeated series, tiny series, a destination that stays down.

Senders are real peers: pynetdicom (for what dcmtk's storescu will not send: bad UIDs, a cut
pixel data element, an aborted association) and storescu; the receiver is dcmtk's storescp.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from delineo.cli import main
from delineo.dicom.write_ct import write_ct_series

from waits import HANG_S

from system_tools import dcmtk

from .conftest import phantom
from .test_node_import import dcmtk_peers, free_port, running_node, storescp, storescu, wait_for  # noqa: F401


def scu_assoc(port: int, aet: str = "TESTSCU"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", port, ae_title="DELINEO")
    assert assoc.is_established
    return assoc


def modalities(out: Path) -> list[str]:
    """The modalities of the files the peer has received whole: a file it is still writing is left
    for the next poll (a file that never parses keeps its modality from ever showing up)."""
    found = []
    for f in out.iterdir():
        if f.is_file():
            try:
                found.append(str(pydicom.dcmread(f, stop_before_pixels=True).Modality))
            except (InvalidDicomError, EOFError, OSError, AttributeError):
                continue
    return sorted(found)


def node_status(storage: Path) -> dict:
    from delineo.dicom.node import node_status as status

    return status(storage)


def states(node) -> list[str]:
    return [e["state"] for e in node.events]


def series_files(folder: Path, n_slices: int | None = None) -> list[Path]:
    image = phantom()[0]
    if n_slices is not None:
        from delineo.data.io import Image

        image = Image(image.array[:, :, :n_slices], image.affine)
    write_ct_series(image, folder, patient_id="P123")
    return sorted(folder.glob("*.dcm"))


# ---- 1. paths from received UIDs -------------------------------------------------------------

@dcmtk_peers
def test_uids_that_name_paths_are_refused_and_nothing_is_written_outside(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, _, _ = storescp
    outside = Path(f"/tmp/delineo-escape-{os.getpid()}")  # an absolute path short enough to send as a UID
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        ds = pydicom.dcmread(sorted(ct_dir.glob("*.dcm"))[0])
        assoc = scu_assoc(node.cfg.port)
        try:
            for key, value in [("SOPInstanceUID", "../../../../escaped_sop"), ("SOPInstanceUID", str(outside)),
                               ("StudyInstanceUID", "../../escape_study"), ("SeriesInstanceUID", "../escape_series"),
                               ("SeriesInstanceUID", "1.2..3")]:
                bad = copy.deepcopy(ds)
                setattr(bad, key, value)
                if key == "SOPInstanceUID":
                    bad.file_meta.MediaStorageSOPInstanceUID = value
                status = assoc.send_c_store(bad)
                assert int(status.Status) == 0xC000, (key, value, status)
                assert key in str(status.ErrorComment), status
            assert int(assoc.send_c_store(ds).Status) == 0x0000  # a good instance still goes in
        finally:
            assoc.release()
        node_root = (tmp_path / "node").resolve()
        for p in tmp_path.parent.rglob("*escape*"):
            pytest.fail(f"written outside the node's storage: {p}")
        assert not outside.exists() and not Path(f"{outside}.dcm").exists()
        assert [p.name for p in (node_root / "incoming").rglob("*.dcm")] == [f"{ds.SOPInstanceUID}.dcm"]


@dcmtk_peers
def test_an_empty_sop_instance_uid_is_refused_at_once_without_a_traceback(tmp_path, ct_dir, tiny_ct_model, storescp, caplog):
    """Issue 36, 12: a C-STORE whose SOP Instance UID is empty was dropped by pynetdicom after a
    traceback in its logging handler; the sender waited for its DIMSE timeout (the association then
    aborted). Now it gets a failure status at once and the association goes on."""
    from pynetdicom import evt
    from pynetdicom._handlers import standard_dimse_sent_handler

    dest_port, _, _ = storescp
    with caplog.at_level(logging.WARNING), running_node(tmp_path, tiny_ct_model, dest_port) as node:
        ds = pydicom.dcmread(sorted(ct_dir.glob("*.dcm"))[0])
        assoc = scu_assoc(node.cfg.port)
        assoc.dimse_timeout = 15  # today's hang, bounded
        assoc.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)  # this sender's own logger trips on it too
        try:
            bad = copy.deepcopy(ds)
            bad.SOPInstanceUID = ""
            bad.file_meta.MediaStorageSOPInstanceUID = ""
            t0 = time.monotonic()
            status = assoc.send_c_store(bad)
            assert "Status" in status, "no answer: the node dropped the request"
            assert int(status.Status) == 0xC000 and "SOPInstanceUID" in str(status.ErrorComment), status
            assert time.monotonic() - t0 < 10
            assert assoc.is_established and int(assoc.send_c_store(ds).Status) == 0x0000  # the association goes on
        finally:
            if assoc.is_established:
                assoc.release()
        assert [p.name for p in (tmp_path / "node" / "incoming").rglob("*.dcm")] == [f"{ds.SOPInstanceUID}.dcm"]
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert "SOPInstanceUID" in caplog.text  # the node says why it refused


# ---- 4. malformed instances -------------------------------------------------------------------

@dcmtk_peers
def test_truncated_or_incomplete_instance_is_refused_at_c_store(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, _, _ = storescp
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        files = sorted(ct_dir.glob("*.dcm"))
        assoc = scu_assoc(node.cfg.port)
        try:
            cut = pydicom.dcmread(files[0])
            cut.PixelData = cut.PixelData[: len(cut.PixelData) // 2]
            status = assoc.send_c_store(cut)
            assert int(status.Status) == 0xC000 and "truncated" in str(status.ErrorComment), status
            no_geometry = pydicom.dcmread(files[1])
            del no_geometry.ImagePositionPatient
            status = assoc.send_c_store(no_geometry)
            assert int(status.Status) == 0xC000 and "ImagePositionPatient" in str(status.ErrorComment), status
            # a file cut short on disk, sent as it is
            raw = tmp_path / "cut.dcm"
            raw.write_bytes(files[2].read_bytes()[:-200])
            status = assoc.send_c_store(raw)
            assert status and int(status.Status) != 0x0000, status
        finally:
            assoc.release()
        assert not list((tmp_path / "node").rglob("*.dcm"))


# ---- 2. incomplete series, restarts, resends -----------------------------------------------------

@dcmtk_peers
def test_aborted_series_is_held_then_completed_by_a_resend_and_a_repeat_is_not_contoured_twice(
        tmp_path, ct_dir, tiny_ct_model, storescp, caplog):
    dest_port, out, start_scp = storescp
    start_scp()
    files = sorted(ct_dir.glob("*.dcm"))
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        assoc = scu_assoc(node.cfg.port)
        for f in files[: len(files) // 2]:
            assert int(assoc.send_c_store(pydicom.dcmread(f)).Status) == 0
        assoc.abort()  # the sender dies half way
        assert wait_for(lambda: "incomplete" in states(node), 30), node.events
        time.sleep(3 * node.cfg.idle_seconds)
        assert "contoured" not in states(node) and not modalities(out)  # the half series is not contoured
        status = node_status(tmp_path / "node")
        assert status["incoming"][0]["incomplete"] and status["incoming"][0]["images"] == len(files) // 2
        # the sender resends the whole series: it is contoured once, from all its images
        assert storescu(node.cfg.port, files).returncode == 0
        assert wait_for(lambda: "RTSTRUCT" in modalities(out)), node.events
        done = next((tmp_path / "node" / "done").glob("*/*"))
        sent_uids = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
        assert sorted(p.stem for p in (done / "ct").iterdir()) == sent_uids  # all of them once, no nested copy
        assert json.loads((done / "received.json").read_text())["images"] == len(files)
        # the same series once more: recognised, not contoured again
        with caplog.at_level(logging.WARNING, logger="delineo.dicom.node"):
            assert storescu(node.cfg.port, files).returncode == 0
            assert wait_for(lambda: "duplicate" in states(node)), node.events
        time.sleep(1.0)
        assert modalities(out).count("RTSTRUCT") == 1 and states(node).count("contoured") == 1
        assert "already contoured" in caplog.text
        assert not list((tmp_path / "node" / "incoming").iterdir()) and not list((tmp_path / "node" / "work").iterdir())


@dcmtk_peers
def test_node_killed_mid_series_waits_after_restart_and_contours_only_the_full_resend(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, out, start_scp = storescp
    start_scp()
    files = sorted(ct_dir.glob("*.dcm"))
    storage, port = tmp_path / "node", free_port()
    log = (tmp_path / "first-run.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "delineo", "dicom-node", "--port", str(port), "--host", "127.0.0.1",
                              "--storage", str(storage), "--allowed-ae", "TESTSCU", "--idle-seconds", "1",
                              "--model", str(tiny_ct_model), "--device", "cpu", "--forward", f"TPS@127.0.0.1:{dest_port}"],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        deadline = time.monotonic() + HANG_S
        while not (assoc := ae.associate("127.0.0.1", port, ae_title="DELINEO")).is_established:
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first-run.log").read_text()
            time.sleep(0.3)
        for f in files[: len(files) // 2]:
            assert int(assoc.send_c_store(pydicom.dcmread(f)).Status) == 0
        os.kill(first.pid, signal.SIGKILL)  # the node dies mid-series
        first.wait(timeout=30)
        assoc.abort()
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert len(list((storage / "incoming").rglob("*.dcm"))) == len(files) // 2
    # restarted (in this process, same storage and port); the sender resends 3 s later
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        time.sleep(3.0)
        assert "contoured" not in states(node) and not modalities(out), node.events
        assert storescu(node.cfg.port, files).returncode == 0
        assert wait_for(lambda: "RTSTRUCT" in modalities(out)), node.events
        time.sleep(1.0)
    assert modalities(out).count("RTSTRUCT") == 1
    rt = next(pydicom.dcmread(f) for f in out.iterdir() if pydicom.dcmread(f, stop_before_pixels=True).Modality == "RTSTRUCT")
    refs = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence
    assert len(refs) == len(files)  # the structure set covers the whole series


def slow_copy(model: Path, folder: Path) -> Path:
    """The same model with inference settings that make it slow (4-voxel windows, every flip): on the
    phantom it takes seconds, long enough to kill a node while it contours."""
    shutil.copytree(model, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["inference"] = {"patch_size": [4, 4, 4], "overlap": 0.5, "mirror": True}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@dcmtk_peers
def test_node_killed_while_contouring_contours_the_series_again_after_a_restart(tmp_path, ct_dir, tiny_ct_model, storescp, capsys):
    """Issue 36, 1: a SIGKILL mid-contouring left done/<study>/<series> half-made; after a restart
    the series was taken for a resend of a contoured one and failed, and --status counted it."""
    dest_port, out, start_scp = storescp
    start_scp()
    files = sorted(ct_dir.glob("*.dcm"))
    storage, port = tmp_path / "node", free_port()
    log = (tmp_path / "first-run.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "delineo", "dicom-node", "--port", str(port), "--host", "127.0.0.1",
                              "--storage", str(storage), "--allowed-ae", "TESTSCU", "--idle-seconds", "1",
                              "--model", str(slow_copy(tiny_ct_model, tmp_path / "slow-ct")), "--device", "cpu",
                              "--forward", f"TPS@127.0.0.1:{dest_port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        deadline = time.monotonic() + HANG_S
        while not (assoc := ae.associate("127.0.0.1", port, ae_title="DELINEO")).is_established:
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first-run.log").read_text()
            time.sleep(0.3)
        for f in files:
            assert int(assoc.send_c_store(pydicom.dcmread(f)).Status) == 0
        assoc.release()
        # contouring has begun when its masks' folder exists (wherever the node makes its result)
        assert wait_for(lambda: first.poll() is not None or any(storage.rglob("segmentations")), HANG_S)
        assert first.poll() is None, (tmp_path / "first-run.log").read_text()
        os.kill(first.pid, signal.SIGKILL)  # the node dies mid-contouring
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert not modalities(out)
    status = node_status(storage)
    assert status["done"] == 0 and not status["failed"], status  # not counted as contoured
    assert main(["dicom-node", "--status", "--storage", str(storage)]) == 0
    assert "0 series contoured" in capsys.readouterr().out
    # restarted: the series is contoured again and its structure set sent, once
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        assert wait_for(lambda: "RTSTRUCT" in modalities(out)), node.events
        time.sleep(1.0)
        assert "failed" not in states(node), node.events
    assert modalities(out).count("RTSTRUCT") == 1
    status = node_status(storage)
    assert status["done"] == 1 and not status["failed"] and not status["outbox"], status
    done = next((storage / "done").glob("*/*"))
    assert json.loads((done / "received.json").read_text())["images"] == len(files)
    assert sorted(p.name for p in (storage / "work").rglob("*")) == []  # no half-made result left behind
    summary = (done / "summary.json").read_text()
    assert ".contouring" not in summary and str(done.resolve()) in summary  # its files named where they are


@dcmtk_peers
def test_half_made_result_of_an_older_version_is_removed_and_the_series_contoured(tmp_path, ct_dir, tiny_ct_model, storescp):
    """Storage left by a version that made its result in done/ directly and was killed mid-contouring."""
    from delineo.dicom.series import read_series

    dest_port, out, start_scp = storescp
    start_scp()
    ct = read_series(ct_dir)
    study, series = ct.datasets[0].StudyInstanceUID, ct.series_instance_uid
    work = tmp_path / "node" / "work" / study / series
    shutil.copytree(ct_dir, work)
    (tmp_path / "node" / "done" / study / series / "segmentations").mkdir(parents=True)
    assert node_status(tmp_path / "node")["done"] == 0
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        assert wait_for(lambda: "RTSTRUCT" in modalities(out)), node.events
        assert "failed" not in states(node), node.events
    assert node_status(tmp_path / "node")["done"] == 1


# ---- 5. tiny series, repeated failures, clean-up ------------------------------------------------

@dcmtk_peers
def test_tiny_series_fail_with_a_clear_message_in_separate_failed_folders(tmp_path, tiny_ct_model, storescp):
    dest_port, out, start_scp = storescp
    start_scp()
    two = series_files(tmp_path / "two", 2)
    one = series_files(tmp_path / "one", 1)
    with running_node(tmp_path, tiny_ct_model, dest_port) as node:
        for attempt in range(2):  # the same 2-slice series twice
            assert storescu(node.cfg.port, two).returncode == 0
            assert wait_for(lambda: states(node).count("failed") == attempt + 1), node.events
        assert storescu(node.cfg.port, one).returncode == 0
        assert wait_for(lambda: states(node).count("failed") == 3), node.events
    reasons = [e["reason"] for e in node.events if e["state"] == "failed"]
    assert "has 2 images" in reasons[0] and "at least 10" in reasons[0]
    assert "has 1 image;" in reasons[2] and "TypeError" not in reasons[2]
    errors = sorted((tmp_path / "node" / "failed").rglob("error.txt"))
    assert len(errors) == 3 and all(len(e.parent.relative_to(tmp_path / "node" / "failed").parts) == 2 for e in errors)
    for e in errors:  # each failure in its own folder, with its own images, nothing nested
        assert not [d for d in e.parent.iterdir() if d.is_dir()]
    assert not modalities(out)
    assert not list((tmp_path / "node" / "work").iterdir()) and not list((tmp_path / "node" / "incoming").iterdir())


@dcmtk_peers
def test_a_series_labelled_ct_that_is_not_a_plausible_ct_is_not_contoured_nor_sent(tmp_path, tiny_ct_model, storescp, caplog):
    """Issue 36, 4: an MR-like series (Modality CT, nothing below 0) got an RT Structure Set with
    every ROI; now the node refuses it before contouring, logs why and sends nothing."""
    from delineo.data.io import Image

    dest_port, out, start_scp = storescp
    start_scp()
    image = phantom()[0]
    write_ct_series(Image(np.where(image.array < -500, 0.0, image.array + 1024.0).astype(np.float32), image.affine),
                    tmp_path / "mr", patient_id="P123")
    with caplog.at_level(logging.ERROR, logger="delineo.dicom.node"):
        with running_node(tmp_path, tiny_ct_model, dest_port) as node:
            assert storescu(node.cfg.port, sorted((tmp_path / "mr").glob("*.dcm"))).returncode == 0
            assert wait_for(lambda: "failed" in states(node)), node.events
            time.sleep(1.0)
    reason = next(e["reason"] for e in node.events if e["state"] == "failed")
    assert "not a plausible CT" in reason and "nothing dark" in reason and "series " in reason, reason
    assert "contoured" not in states(node) and not modalities(out)  # nothing sent
    assert "not a plausible CT" in caplog.text
    error = next((tmp_path / "node" / "failed").rglob("error.txt")).read_text()
    assert "not a plausible CT" in error
    assert not list((tmp_path / "node" / "done").iterdir()) and not list((tmp_path / "node" / "outbox").iterdir())


# ---- 3. the outbox never gives up ----------------------------------------------------------------

@dcmtk_peers
def test_outbox_retries_without_end_alerts_and_survives_a_restart(tmp_path, ct_dir, tiny_ct_model, storescp, caplog, capsys):
    dest_port, out, start_scp = storescp  # the destination is down
    fast = dict(retry_initial_s=0.02, retry_max_s=0.1, alert_after_s=1.0, alert_every_s=60.0, poll_s=0.05)
    with caplog.at_level(logging.WARNING, logger="delineo.dicom.node"):
        with running_node(tmp_path, tiny_ct_model, dest_port, **fast) as node:
            assert storescu(node.cfg.port, sorted(ct_dir.glob("*.dcm"))).returncode == 0
            state = tmp_path / "node" / "outbox"

            def attempts() -> int:
                s = list(state.glob("*/state.json"))
                return json.loads(s[0].read_text())["attempts"] if s else 0

            assert wait_for(lambda: attempts() > 25), (attempts(), node.events)  # past the old limit of 20
            assert "undeliverable" in states(node)
        assert not list((tmp_path / "node" / "failed").iterdir())
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "NOT DELIVERED" in r.getMessage()]
        assert len(errors) == 1, caplog.text  # once, not on every attempt
    status = node_status(tmp_path / "node")
    assert status["undeliverable"] == 1 and status["outbox"][0]["attempts"] > 25
    rc = main(["dicom-node", "--status", "--storage", str(tmp_path / "node")])
    text = capsys.readouterr().out
    assert rc == 1 and "UNDELIVERABLE" in text and "no association with TPS" in text
    # a restart keeps retrying; the destination comes back: delivered
    with running_node(tmp_path, tiny_ct_model, dest_port, **fast) as node:
        start_scp()
        assert wait_for(lambda: "sent" in states(node)), node.events
    assert "RTSTRUCT" in modalities(out)
    assert node_status(tmp_path / "node")["outbox"] == []


def test_results_parked_by_an_older_version_go_back_to_the_outbox(tmp_path, tiny_ct_model):
    parked = tmp_path / "node" / "failed" / "send-1.2.3"
    parked.mkdir(parents=True)
    (parked / "state.json").write_text(json.dumps({"attempts": 20, "next_try": 0.0, "received_at": time.time()}))
    with running_node(tmp_path, tiny_ct_model, free_port(), retry_initial_s=60) as node:
        assert (tmp_path / "node" / "outbox" / "1.2.3" / "state.json").is_file()
        assert not parked.exists()
        assert node.status()["outbox"][0]["series"] == "1.2.3"
