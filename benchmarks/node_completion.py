"""How long the DICOM node waits before it contours a series (issue 34, 3): the idle timeout alone
(before) against completion at the release of the association (after).

    python benchmarks/node_completion.py --out benchmarks/results/node-completion [--repeats 5] [--model MODEL]

One CT series (the DICOM tests' phantom, 24 x 20 x 12, or ``--slices``/``--pixels`` of it repeated)
is sent by dcmtk ``storescu`` to an in-process node that forwards to a dcmtk ``storescp``; timed
from ``storescu``'s exit (the last image stored and the association released) to the RT Structure
Set received by ``storescp``. Modes: ``idle`` (``settle_seconds=None``: the idle timeout of 10 s
alone, the node before the change), ``release`` (default: a complete stack without an image
count waits the 2 s settle time), ``counted`` (the images carry ImagesInAcquisition: judged at
once). Without ``--model`` an untrained tiny 3D U-Net (like the tests') stands in: the contouring
is then a fraction of a second and the figure is the node's own waiting. Timings under load (the
load average is recorded) are upper bounds of the same machine idle.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = {"idle": {"settle_seconds": None}, "release": {}, "counted": {}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path) -> Path:
    from delineo.models.networks import NetworkSpec, build_network
    from delineo.models.registry import save_model

    net = build_network(NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8], head_bias=8.0))
    meta = {"name": "tiny-ct", "structures": ["PTV70", "Mandible"], "roi_types": {"PTV70": "PTV", "Mandible": "ORGAN"},
            "preprocess": {"intensity": {"kind": "window", "low": -200, "high": 400}}}
    return save_model(folder / "tiny-ct", net, meta)


def phantom_series(folder: Path, counted: bool, source: Path | None = None) -> list[Path]:
    """The series to send, written into ``folder``: the phantom, or a copy of the DICOM files in ``source``."""
    import shutil

    import pydicom

    from delineo.data.io import Image
    from delineo.dicom.write_ct import write_ct_series

    if source is not None:
        folder.mkdir(parents=True, exist_ok=True)
        files = [Path(shutil.copy(f, folder / f.name)) for f in sorted(source.iterdir()) if f.is_file()]
    else:
        a = np.full((24, 20, 12), -1000.0, np.float32)
        a[3:21, 3:17, 1:11] = 0.0
        a[8:14, 6:12, 4:9] = 700.0
        affine = np.array([[-2.0, 0, 0, 50.0], [0, -2.5, 0, 30.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
        files = [Path(f) for f in write_ct_series(Image(a, affine), folder)]
    if counted:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.ImagesInAcquisition, ds.AcquisitionNumber = len(files), 1
            ds.save_as(f, enforce_file_format=True)
    return files


def run_once(tmp: Path, model: str, mode: str, source: Path | None = None) -> float:
    from delineo.dicom.node import DicomNode, NodeConfig

    files = phantom_series(tmp / "ct", counted=mode == "counted", source=source)
    dest_port, node_port = _free_port(), _free_port()
    (tmp / "tps").mkdir()
    scp = subprocess.Popen(["/usr/bin/storescp", "--output-directory", str(tmp / "tps"), "--aetitle", "TPS", str(dest_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = DicomNode(NodeConfig(storage=tmp / "node", port=node_port, host="127.0.0.1", forward=("TPS", "127.0.0.1", dest_port),
                                model=model, device="cpu", poll_s=0.1, **MODES[mode])).start()
    node._predictor_for()  # loaded before the clock starts, as in a running node
    try:
        time.sleep(0.5)
        subprocess.run(["/usr/bin/storescu", "-aec", "DELINEO", "127.0.0.1", str(node_port), *map(str, files)], check=True,
                       capture_output=True, timeout=300)
        t_sent = time.perf_counter()
        while not any(p.name.startswith("RS") for p in (tmp / "tps").iterdir()):
            if any(e["state"] == "failed" for e in node.events) or time.perf_counter() - t_sent > 300:
                raise RuntimeError(f"node did not deliver: {node.events}")
            time.sleep(0.02)
        return time.perf_counter() - t_sent
    finally:
        node.stop()
        scp.terminate()
        scp.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--note", default="")
    ap.add_argument("--series", type=Path, default=None,
                    help="A DICOM CT series folder to send instead of the phantom (e.g. the 512 x 512 one of clinical_size.py).")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = ap.parse_args()
    import torch

    from delineo.machine import hardware_description

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory() as root:
        model = args.model or str(tiny_model(Path(root)))
        for k in range(args.repeats):
            for mode in args.modes:
                with tempfile.TemporaryDirectory() as tmp:
                    runs[mode].append(round(run_once(Path(tmp), model, mode, args.series), 3))
    series = "phantom 24 x 20 x 12 (the tests' CT)"
    if args.series is not None:
        made = args.series.parent / "made.json"
        series = f"{args.series}" + (f" ({json.loads(made.read_text())['shape']} voxels)" if made.is_file() else "")
    options = [("out", args.out), ("repeats", args.repeats)] + ([("model", args.model)] if args.model else []) \
        + ([("series", args.series)] if args.series else []) + ([("modes", " ".join(args.modes))] if args.modes != list(MODES) else [])
    report = {"command": "python benchmarks/node_completion.py " + " ".join(f"--{k} {v}" for k, v in options),
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": hardware_description(torch.device("cpu")),
              "model": args.model or "untrained tiny 3D U-Net (as in the tests)", "series": series,
              "load_average_before": [round(v, 2) for v in load_before], "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "note": args.note, "seconds_last_image_to_rtstruct": runs,
              "median": {m: statistics.median(v) for m, v in runs.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = "\n".join(f"| {m} | {report['median'][m]:.2f} | {min(v):.2f} – {max(v):.2f} |" for m, v in runs.items())
    (args.out / "README.md").write_text(
        f"# DICOM node: last image sent → RT Structure Set received\n\nCommand: `{report['command']}`  \nDate: {report['date']}  \n"
        f"Machine: {report['machine']}; load average {report['load_average_before']} before, {report['load_average_after']} after "
        f"(timings under load are upper bounds).  \nModel: {report['model']}; series: {report['series']}. {args.note}\n\n"
        f"| completion | median s ({args.repeats} runs) | range s |\n|---|---|---|\n{rows}\n\n"
        "`idle`: the idle timeout alone (10 s; the node before issue 34, 3); `release`: complete at the release of the "
        "association, after the 2 s settle time; `counted`: the images carry ImagesInAcquisition, judged at the release.\n")
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
