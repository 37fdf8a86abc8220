"""The DICOM node's outbox when the receiver is down for a while, the node restarts meanwhile,
and the receiver comes back: every result is delivered exactly once (issue 24, item 1)."""

from __future__ import annotations

import json
import time
from collections import Counter

import pydicom

from delineo.dicom.write_ct import write_ct_series

from .conftest import phantom
from .test_node_import import dcmtk_peers, running_node, storescp, storescu, wait_for  # noqa: F401


@dcmtk_peers
def test_receiver_down_then_back_every_result_delivered_exactly_once(tmp_path, tiny_ct_model, storescp):
    dest_port, out, start_scp = storescp  # the receiver (the planning system) is down
    image, _ = phantom()
    series = []
    for i in range(3):
        folder = tmp_path / f"ct{i}"
        write_ct_series(image, folder, patient_id=f"P{i:03d}", patient_name=f"Patient^{i}")
        series.append(folder)
    outbox = tmp_path / "node" / "outbox"

    def attempts() -> dict[str, int]:
        return {p.parent.name: int(json.loads(p.read_text())["attempts"]) for p in outbox.glob("*/state.json")}

    fast = dict(retry_initial_s=0.1, retry_max_s=0.4, poll_s=0.1)
    with running_node(tmp_path, tiny_ct_model, dest_port, **fast) as node:
        for folder in series:
            assert storescu(node.cfg.port, sorted(folder.glob("*.dcm"))).returncode == 0
        # all three contoured and waiting, each tried and failed several times
        assert wait_for(lambda: len(attempts()) == 3 and min(attempts().values()) >= 3), (attempts(), node.events)
    # the node restarts while the receiver is still down: the outbox is still there and retried
    with running_node(tmp_path, tiny_ct_model, dest_port, **fast) as node:
        before = attempts()
        assert len(before) == 3
        assert wait_for(lambda: all(attempts().get(k, 0) > v for k, v in before.items())), (before, attempts())
        start_scp()  # the receiver is back
        assert wait_for(lambda: not list(outbox.glob("*/state.json"))), (attempts(), node.events)
        time.sleep(2.0)  # many poll cycles: nothing is sent a second time
    files = [pydicom.dcmread(f, stop_before_pixels=True) for f in out.rglob("*") if f.is_file()]
    per_series = Counter((str(ds.Modality), str(ds.StudyInstanceUID)) for ds in files)
    studies = {str(pydicom.dcmread(next(f.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID) for f in series}
    assert {s for _, s in per_series} == studies
    assert all(n == 1 for n in per_series.values()), per_series  # exactly once each
    assert [m for m, _ in per_series].count("RTSTRUCT") == 3
