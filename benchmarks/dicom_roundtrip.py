"""DICOM figures for the README: contour-representation loss and the node's turnaround.

1. Round trip, ground truth only (no model): for every case of a case-folder dataset, write the
   CT as a DICOM series, each contoured structure into an RT Structure Set, read that back with
   the independent rasteriser, and take Dice against the original mask (per structure).
2. Node turnaround: start a ``delineo dicom-node`` (in process), a dcmtk ``storescp`` as the
   planning system, send one case with dcmtk ``storescu`` and time until the RT Structure Set and
   SEG have arrived (idle time to decide the series is complete included and reported).

    python benchmarks/dicom_roundtrip.py --data ../shared/data/openkbp/validation \
        --out benchmarks/results/dicom-roundtrip [--model hn-ct] [--idle-seconds 2]

Only aggregate numbers are written (no images, masks or DICOM from the data).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def enclosed_volume_cc(rtstruct: Path) -> dict[str, float]:
    """Per ROI: the volume a planning system measures from the polygons, cc. Each slice's area is
    the even-odd union of its contours (a contour inside an odd number of others is a hole), by the
    shoelace formula on patient x/y (axial slices), times the slice spacing."""
    import pydicom
    from skimage.measure import points_in_poly

    ds = pydicom.dcmread(rtstruct)
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    out = {}
    for rc in ds.ROIContourSequence:
        by_z: dict[float, list[np.ndarray]] = {}
        for c in getattr(rc, "ContourSequence", []):
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            by_z.setdefault(round(float(pts[0, 2]), 3), []).append(pts[:, :2])
        zs = sorted(by_z)
        dz = float(np.median(np.diff(zs))) if len(zs) > 1 else 0.0
        area = 0.0
        for polys in by_z.values():
            for i, p in enumerate(polys):
                a = 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1)))
                depth = sum(bool(points_in_poly(p[:1], q)[0]) for j, q in enumerate(polys) if j != i)
                area += a if depth % 2 == 0 else -a
        out[names[rc.ReferencedROINumber]] = area * dz / 1000.0
    return out


def roundtrip(data: Path, structures: list[str]) -> dict:
    from delineo.data.datasets import open_dataset
    from delineo.data.io import Image
    from delineo.dicom.rtstruct import read_rtstruct, write_rtstruct
    from delineo.dicom.series import read_series
    from delineo.dicom.write_ct import write_ct_series
    from delineo.metrics.segmentation import dice

    ds = open_dataset(data, structures, None)
    per: dict[str, list[float]] = {s: [] for s in structures}
    polygon_pct: dict[str, list[float]] = {s: [] for s in structures}
    seconds: dict[str, list[float]] = {"write_ct": [], "read_ct": [], "write_rtstruct": [], "read_rtstruct": []}
    sizes = []
    for i in range(len(ds)):
        s = ds[i]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_ct_series(Image(s["image"][0], s["affine"]), Path(tmp) / "ct")
            t1 = time.perf_counter()
            series = read_series(Path(tmp) / "ct")
            seconds["read_ct"].append(time.perf_counter() - t1)
            seconds["write_ct"].append(t1 - t0)
            # voxel (series) -> voxel (NIfTI): a permutation/flip of axes, from the two affines
            m = np.rint(np.linalg.inv(s["affine"]) @ series.image.affine).astype(int)
            masks = {}
            for c, name in enumerate(structures):
                if not s["present"][c]:
                    continue
                mask = s["label"][c].astype(bool)
                for axis in range(3):
                    if m[axis, axis] < 0:
                        mask = np.flip(mask, axis)
                masks[name] = np.ascontiguousarray(mask)
            masks = {n: m for n, m in masks.items() if m.any()}  # an empty reference has no contours to compare
            t0 = time.perf_counter()
            rt = write_rtstruct(series, masks, Path(tmp) / "rt.dcm")
            t1 = time.perf_counter()
            back = read_rtstruct(rt, series)
            seconds["read_rtstruct"].append(time.perf_counter() - t1)
            seconds["write_rtstruct"].append(t1 - t0)
            sizes.append(Path(rt).stat().st_size)
            voxel_cc = abs(float(np.linalg.det(series.image.affine[:3, :3]))) / 1000.0
            enclosed = enclosed_volume_cc(Path(rt))
            for name, mask in masks.items():
                per[name].append(dice(back[name], mask))
                polygon_pct[name].append(100.0 * (enclosed[name] / (mask.sum() * voxel_cc) - 1.0))
    return {
        "cases": len(ds),
        "dice": {n: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for n, v in per.items() if v},
        "polygon_volume_vs_voxels_pct": {n: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                                         for n, v in polygon_pct.items() if v},
        "median_seconds_per_case": {k: round(float(np.median(v)), 3) for k, v in seconds.items()},
        "median_rtstruct_kb": round(float(np.median(sizes)) / 1024, 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_turnaround(data: Path, model: str, idle_seconds: float, device: str) -> dict:
    from delineo.data.datasets import open_dataset
    from delineo.data.io import Image
    from delineo.dicom.node import DicomNode, NodeConfig
    from delineo.dicom.write_ct import write_ct_series

    ds = open_dataset(data, ["PTV70"], None)
    s = ds[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_ct_series(Image(s["image"][0], s["affine"]), tmp / "ct")
        dest_port, node_port = _free_port(), _free_port()
        (tmp / "tps").mkdir()
        scp = subprocess.Popen(["/usr/bin/storescp", "--output-directory", str(tmp / "tps"), "--aetitle", "TPS", str(dest_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node = DicomNode(NodeConfig(storage=tmp / "node", port=node_port, host="127.0.0.1", forward=("TPS", "127.0.0.1", dest_port),
                                    idle_seconds=idle_seconds, model=model, device=device, poll_s=0.1)).start()
        node._predictor_for()  # load the model before the clock starts, as a running node has
        try:
            time.sleep(0.5)
            t0 = time.perf_counter()
            subprocess.run(["/usr/bin/storescu", "-aec", "DELINEO", "127.0.0.1", str(node_port), *map(str, files)], check=True,
                           capture_output=True)
            t_sent = time.perf_counter()
            while not any(e["state"] == "sent" for e in node.events):
                if any(e["state"] == "failed" for e in node.events) or time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"node did not deliver: {node.events}")
                time.sleep(0.05)
            t_done = time.perf_counter()
        finally:
            node.stop()
            scp.terminate()
        contoured = next(e for e in node.events if e["state"] == "contoured")
        received = sorted(p.name.split(".")[0] for p in (tmp / "tps").iterdir())
        # the node's contours against the NIfTI path's contours of the same case, in patient coordinates
        from delineo import api
        from delineo.dicom.rtstruct import read_rtstruct
        from delineo.dicom.series import read_series
        from delineo.metrics.segmentation import patient_dice

        reference = api.contour(Path(s["path"]), tmp / "nifti", model=model, device=device, overview=False)
        series = read_series(tmp / "ct")
        rs = next(p for p in (tmp / "tps").iterdir() if p.name.startswith("RS"))
        node_masks = read_rtstruct(rs, series)
        import nibabel as nib

        agreement = {}
        for name, info in reference["structures"].items():
            ref = nib.load(info["file"])
            agreement[name] = round(patient_dice(node_masks[name], series.image.affine, np.asarray(ref.dataobj) > 0, ref.affine), 4)
    return {
        "model": model,
        "slices": len(files),
        "idle_seconds": idle_seconds,
        "seconds_store_by_storescu": round(t_sent - t0, 3),
        "seconds_contour": contoured["seconds"],
        "seconds_total_receive_to_delivered": round(t_done - t0, 3),
        "seconds_total_minus_idle_wait": round(t_done - t0 - idle_seconds, 3),
        "received_by_destination": received,
        "case": s["case"],
        "dice_node_rtstruct_vs_nifti_path": agreement,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--idle-seconds", type=float, default=2.0)
    ap.add_argument("--structures", default="PTV70,PTV63,PTV56,Brainstem,SpinalCord,RightParotid,LeftParotid,Esophagus,Larynx,Mandible")
    args = ap.parse_args()
    import os

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    structures = args.structures.split(",")
    result = {
        "command": "python benchmarks/dicom_roundtrip.py " + " ".join(sys.argv[1:]),
        "data": str(args.data),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads, device {args.device}",
        "roundtrip": roundtrip(args.data, structures),
    }
    if shutil.which("/usr/bin/storescu"):
        result["node"] = node_turnaround(args.data, args.model, args.idle_seconds, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roundtrip.json").write_text(json.dumps(result, indent=2) + "\n")
    rt = result["roundtrip"]
    lines = [f"NIfTI mask -> RT Structure Set -> mask, {rt['cases']} cases of {args.data} ({result['machine']}):", "",
             "| structure | n | mean Dice | min Dice | polygon volume vs voxels, % (mean) | (min) | (max) |",
             "|---|---|---|---|---|---|---|"]
    pv = rt["polygon_volume_vs_voxels_pct"]
    lines += [f"| {n} | {d['n']} | {d['mean']:.4f} | {d['min']:.4f} | {pv[n]['mean']:+.2f} | {pv[n]['min']:+.2f} | {pv[n]['max']:+.2f} |"
              for n, d in rt["dice"].items()]
    sec = rt["median_seconds_per_case"]
    lines += ["", "Dice: the mask read back (pixel centres inside the polygons, even-odd rule) against the source mask. "
              "Polygon volume: the contours' enclosed area (holes subtracted) x slice spacing, what a planning system "
              "measures, against the voxel count; the contours run through the boundary voxels' edge midpoints, so "
              "they cut corners and enclose less.", "",
              f"Median per case: write CT series {sec['write_ct']} s, read it {sec['read_ct']} s, write RTSTRUCT "
              f"{sec['write_rtstruct']} s ({rt['median_rtstruct_kb']} kB), read it back {sec['read_rtstruct']} s."]
    if "node" in result:
        nd = result["node"]
        lines += ["", f"Node turnaround (one {nd['slices']}-slice study, model {nd['model']}): storescu {nd['seconds_store_by_storescu']} s, "
                  f"contouring {nd['seconds_contour']} s, receive to RTSTRUCT+SEG delivered {nd['seconds_total_receive_to_delivered']} s "
                  f"(of which {nd['idle_seconds']} s is the idle wait that decides the series is complete).",
                  "", f"The node's RT Structure Set (read back on the series grid) against `delineo contour` of the same case's "
                  f"NIfTI ({nd['case']}), Dice in patient coordinates: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in nd["dice_node_rtstruct_vs_nifti_path"].items()) + "."]
    (args.out / "roundtrip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
