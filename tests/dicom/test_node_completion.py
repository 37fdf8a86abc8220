"""When the node judges a series complete (issue 34, 3): at the release of the association that sent
it when its images form a complete stack, otherwise after the idle time; a sender that splits one
series over several associations gets it contoured once, from all its images."""

from __future__ import annotations

import logging
import time

import pydicom

from delineo.dicom.node import COUNTED, NOT_COMPLETE, UNCOUNTED, SliceInfo, stack_state

from waits import HANG_S

from .test_node_import import dcmtk_peers, received, running_node, storescp, storescu, wait_for  # noqa: F401

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
IDLE_S = 60.0  # far longer than the release path may take: a series contoured before it came by the release


def stack(n: int, count: int | None = None, first: int = 1, dz: float = 2.5, skip: int | None = None) -> list[SliceInfo]:
    return [SliceInfo((0.0, 0.0, -40.0 + dz * k), AXIAL, first + k, count, "1") for k in range(n) if k != skip]


def test_stack_state():
    assert stack_state(stack(12), 10) == UNCOUNTED
    assert stack_state(stack(12, count=12), 10) == COUNTED
    assert stack_state(stack(6, count=12), 4) == NOT_COMPLETE  # the first half of a counted series
    assert stack_state(stack(6), 4) == UNCOUNTED  # ... which, without a count, is a complete stack too
    assert stack_state(stack(13, skip=5), 10) == NOT_COMPLETE  # a gap
    assert stack_state(stack(12, first=7), 10) == NOT_COMPLETE  # instance numbers not from 1
    assert stack_state(stack(8), 10) == NOT_COMPLETE  # fewer than min_slices
    uneven = stack(12)
    uneven[-1] = SliceInfo((0.0, 0.0, 100.0), AXIAL, 12, None, "1")
    assert stack_state(uneven, 10) == NOT_COMPLETE
    tilted = stack(12)
    tilted[3] = SliceInfo(tilted[3].position, (1.0, 0.0, 0.0, 0.0, 0.0, 1.0), 4, None, "1")
    assert stack_state(tilted, 10) == NOT_COMPLETE
    mixed = [SliceInfo(s.position, s.orientation, s.instance, 12, "1" if k < 6 else "2") for k, s in enumerate(stack(12))]
    assert stack_state(mixed, 10) == UNCOUNTED  # a count per acquisition says nothing of a mixed series


def _contoured(node) -> list[dict]:
    return [e for e in node.events if e["state"] == "contoured"]


def _release_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "complete at the release" in r.getMessage()]


@dcmtk_peers
def test_one_association_is_contoured_at_its_release_not_after_the_idle_time(tmp_path, ct_dir, tiny_ct_model, storescp, caplog):
    dest_port, out, start_scp = storescp
    start_scp()
    files = sorted(ct_dir.glob("*.dcm"))
    with caplog.at_level(logging.INFO, logger="delineo.dicom.node"), \
            running_node(tmp_path, tiny_ct_model, dest_port, idle_seconds=IDLE_S) as node:
        node._predictor_for()  # loaded before, as in a running node
        assert storescu(node.cfg.port, files).returncode == 0
        released = time.time()
        assert wait_for(lambda: {"RTSTRUCT", "SEG"} <= set(received(out)), 20.0), node.events
        lines = _release_lines(caplog)
        assert lines and lines[0].created - released < 5.0, [r.getMessage() for r in caplog.records]
        assert [e["images"] for e in _contoured(node)] == [len(files)]


@dcmtk_peers
def test_a_series_split_over_two_associations_is_contoured_once_from_all_its_images(tmp_path, ct_dir, tiny_ct_model, storescp):
    """The first half alone is a complete, evenly spaced stack (min_slices 4): the settle time after
    its release keeps it from being contoured while the second half is on its way."""
    dest_port, out, start_scp = storescp
    start_scp()
    files = sorted(ct_dir.glob("*.dcm"), key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    with running_node(tmp_path, tiny_ct_model, dest_port, idle_seconds=IDLE_S, min_slices=4) as node:
        assert storescu(node.cfg.port, files[:6]).returncode == 0
        assert storescu(node.cfg.port, files[6:]).returncode == 0
        assert wait_for(lambda: "RTSTRUCT" in received(out), 30.0), node.events
        time.sleep(node.cfg.settle_seconds + 1.0)
        assert [e["images"] for e in _contoured(node)] == [len(files)], node.events
        assert not [e for e in node.events if e["state"] in ("failed", "duplicate")], node.events
        rt = received(out)["RTSTRUCT"]
        refs = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert len(refs.ContourImageSequence) == len(files)


@dcmtk_peers
def test_an_image_count_holds_a_half_series_and_completes_the_whole_at_once(tmp_path, ct_dir, tiny_ct_model, storescp, caplog):
    """Images that carry ImagesInAcquisition: the first half waits (even past the settle time), the
    whole is contoured at the second release without waiting for the settle time."""
    dest_port, out, start_scp = storescp
    start_scp()
    files = sorted(ct_dir.glob("*.dcm"), key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImagesInAcquisition, ds.AcquisitionNumber = len(files), 1
        ds.save_as(f, enforce_file_format=True)
    with caplog.at_level(logging.INFO, logger="delineo.dicom.node"), \
            running_node(tmp_path, tiny_ct_model, dest_port, idle_seconds=IDLE_S, min_slices=4, settle_seconds=30.0) as node:
        node._predictor_for()
        assert storescu(node.cfg.port, files[:6]).returncode == 0
        time.sleep(3.0)
        assert not _contoured(node) and not _release_lines(caplog), node.events
        assert storescu(node.cfg.port, files[6:]).returncode == 0
        released = time.time()
        assert wait_for(lambda: "RTSTRUCT" in received(out), 20.0), node.events
        lines = _release_lines(caplog)
        assert lines and "counted" in lines[0].getMessage() and lines[0].created - released < 5.0
        assert [e["images"] for e in _contoured(node)] == [len(files)]


@dcmtk_peers
def test_without_the_release_rule_a_series_waits_for_the_idle_time(tmp_path, ct_dir, tiny_ct_model, storescp):
    dest_port, out, start_scp = storescp
    start_scp()
    with running_node(tmp_path, tiny_ct_model, dest_port, idle_seconds=4.0, settle_seconds=None) as node:
        assert storescu(node.cfg.port, sorted(ct_dir.glob("*.dcm"))).returncode == 0
        time.sleep(2.0)
        assert not _contoured(node)
        assert wait_for(lambda: "RTSTRUCT" in received(out), HANG_S), node.events


def test_a_release_is_a_release_even_when_the_connection_closes_first(tmp_path):
    """pynetdicom sets ``is_released`` only after it has answered the release, in another thread than
    the one that reports the closed connection: under load the close came first and a released
    series was held as interrupted (seen in test_node_hostile). The peer's A-RELEASE-RQ decides."""
    from types import SimpleNamespace

    from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RQ

    from delineo.dicom.node import DicomNode, NodeConfig

    node = DicomNode(NodeConfig(storage=tmp_path / "node"))
    for pdu, interrupted in ((A_RELEASE_RQ(), False), (A_ABORT_RQ(), True)):
        folder = node._series_dir("incoming", "1.2.3", "1.2.3.4")
        folder.mkdir(parents=True, exist_ok=True)
        assoc = SimpleNamespace(is_released=False, is_aborted=False, requestor=SimpleNamespace(ae_title="TESTSCU"))
        node._open[id(assoc)] = {folder}
        node._on_pdu_recv(SimpleNamespace(assoc=assoc, pdu=pdu))
        node._on_conn_close(SimpleNamespace(assoc=assoc))
        assert (folder / ".interrupted").exists() == interrupted
        assert (folder in node._released) != interrupted
        assert not node._release_requested
        (folder / ".interrupted").unlink(missing_ok=True)
