"""RT Structure Set interoperability: delineo against rt-utils and plastimatch, both directions.

For each development case (and the first one resampled in-plane to ~1 mm pixels), write the CT as
a DICOM series, then per structure the Dice of:

- ``rt-utils -> delineo``: rt-utils writes the structure set from the mask, delineo's reader imports it;
- ``plastimatch -> delineo``: the same with ``plastimatch convert --input-prefix ... --output-dicom``;
- ``delineo -> rt-utils`` / ``delineo -> plastimatch`` (its default, contours OR'd) /
  ``delineo -> plastimatch --xor-contours``: delineo writes, the peer reads;
- ``delineo -> delineo``: the own round trip (must be 1.000);
- ``before``: the reader and writer before issue 35 (pixel centres strictly inside; vertices
  exactly on the voxel edges) for ``rt-utils -> delineo`` and ``delineo -> rt-utils``.

Each Dice is against the mask the writer was given.

    python benchmarks/rtstruct_interop.py --data ../shared/data/openkbp/validation --cases 3 \\
        --out benchmarks/results/rtstruct-interop

Only aggregate numbers are written (no images, masks or DICOM from the data).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

STRUCTURES = ["PTV70", "PTV63", "PTV56", "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus",
              "Larynx", "Mandible"]
DIRECTIONS = ["rt-utils -> delineo", "plastimatch -> delineo", "delineo -> rt-utils", "delineo -> plastimatch",
              "delineo -> plastimatch --xor-contours", "delineo -> delineo", "before: rt-utils -> delineo",
              "before: delineo -> rt-utils"]


def legacy_read(path: Path, series) -> dict[str, np.ndarray]:
    """The reader before issue 35: pixel centres strictly inside (skimage.draw.polygon), even-odd."""
    import pydicom
    from skimage.draw import polygon

    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    shape = series.image.shape
    inv = np.linalg.inv(series.lps_affine)
    out = {n: np.zeros(shape, bool) for n in names.values()}
    for rc in ds.ROIContourSequence:
        for c in rc.get("ContourSequence", []):
            xyz = np.asarray(c.ContourData, float).reshape(-1, 3)
            ijk = (inv @ np.column_stack([xyz, np.ones(len(xyz))]).T).T[:, :3]
            k = int(round(float(ijk[:, 2].mean())))
            rr, cc = polygon(ijk[:, 0], ijk[:, 1], shape[:2])
            layer = np.zeros(shape[:2], bool)
            layer[rr, cc] = True
            out[names[int(rc.ReferencedROINumber)]][:, :, k] ^= layer
    return out


def cases(data: Path, n: int, upsample: int) -> list[tuple[str, object, dict]]:
    """``(label, Image, masks)``: the first ``n`` cases on their grid, the first also at ``upsample``x
    finer in-plane pixels (CT and masks by linear interpolation, masks thresholded at 0.5)."""
    from scipy import ndimage

    from delineo.data.datasets import open_dataset
    from delineo.data.io import Image

    ds = open_dataset(data, STRUCTURES, None)
    out = []
    for i in range(min(n, len(ds))):
        s = ds[i]
        masks = {name: s["label"][c].astype(bool) for c, name in enumerate(STRUCTURES) if s["present"][c] and s["label"][c].any()}
        img = Image(s["image"][0], s["affine"])
        px = float(np.linalg.norm(s["affine"][:3, 0]))
        out.append((f"{ds.cases[i]} ({px:.2f} mm)", img, masks))
        if i == 0 and upsample > 1:
            aff = s["affine"].copy()
            aff[:3, :2] /= upsample
            aff[:3, 3] -= (s["affine"][:3, 0] + s["affine"][:3, 1]) * (upsample - 1) / (2 * upsample)  # same field of view
            zoom = (upsample, upsample, 1)
            fine = {k: ndimage.zoom(m.astype(np.float32), zoom, order=1) > 0.5 for k, m in masks.items()}
            out.append((f"{ds.cases[i]} ({px / upsample:.2f} mm)", Image(ndimage.zoom(s["image"][0], zoom, order=1), aff), fine))
    return out


def measure(image, masks: dict) -> dict[str, dict[str, float]]:
    from delineo.dicom import peers
    from delineo.dicom.rtstruct import read_rtstruct, slice_contours, write_rtstruct
    from delineo.dicom.series import read_series
    from delineo.dicom.write_ct import write_ct_series
    from delineo.metrics.segmentation import dice

    import delineo.dicom.rtstruct as rtstruct

    with tempfile.TemporaryDirectory(prefix="delineo-interop-") as tmp:
        tmp = Path(tmp)
        ct = tmp / "ct"
        write_ct_series(image, ct)
        series = read_series(ct)
        flip = np.rint(np.linalg.inv(image.affine) @ series.image.affine).astype(int)
        masks = {k: (m[:, :, ::-1] if flip[2, 2] < 0 else m) for k, m in masks.items()}
        got: dict[str, dict] = {}
        rtu = peers.rtutils_write(ct, masks, tmp / "rtutils.dcm")
        got["rt-utils -> delineo"] = read_rtstruct(rtu, series)
        got["before: rt-utils -> delineo"] = legacy_read(rtu, series)
        plm = peers.plastimatch_write(series, ct, masks, tmp / "plastimatch.dcm")
        got["plastimatch -> delineo"] = read_rtstruct(plm, series)
        mine = write_rtstruct(series, masks, tmp / "delineo.dcm")
        got["delineo -> delineo"] = read_rtstruct(mine, series)
        got["delineo -> rt-utils"] = peers.rtutils_read(ct, mine)
        got["delineo -> plastimatch"] = peers.plastimatch_read(series, ct, mine)
        got["delineo -> plastimatch --xor-contours"] = peers.plastimatch_read(series, ct, mine, xor_contours=True)
        with mock.patch.object(rtstruct, "slice_contours", lambda m: slice_contours(m, inset=0.0)):
            old = write_rtstruct(series, masks, tmp / "delineo-before.dcm")  # the writer before: vertices on the edges
        got["before: delineo -> rt-utils"] = peers.rtutils_read(ct, old)
        return {name: {d: round(float(dice(got[d].get(name, np.zeros_like(m)), m)), 4) for d in DIRECTIONS}
                for name, m in masks.items()}


def thickness_voxels(mask: np.ndarray) -> float:
    from scipy import ndimage

    return max((2.0 * float(ndimage.distance_transform_edt(mask[:, :, k]).max()) for k in range(mask.shape[2]) if mask[:, :, k].any()),
               default=0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DELINEO_DATA", "../shared/data")) / "openkbp" / "validation")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--upsample", type=int, default=4, help="the first case also at this many times finer in-plane pixels")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rtstruct-interop"))
    args = ap.parse_args(argv)
    import torch

    from delineo.dicom import peers
    from delineo.machine import hardware_description

    if peers.rtutils_version() is None or peers.plastimatch_program() is None:
        print("needs rt-utils (pip install -e '.[test]') and plastimatch (sudo make system-deps)", file=sys.stderr)
        return 2
    rows = []
    t0 = time.perf_counter()
    for label, image, masks in cases(args.data, args.cases, args.upsample):
        scores = measure(image, masks)
        for name, per in scores.items():
            rows.append({"case": label, "structure": name, "thickness_voxels": round(thickness_voxels(masks[name]), 1), **per})
        print(label, {n: p["rt-utils -> delineo"] for n, p in scores.items()}, flush=True)
    worst = {d: min(r[d] for r in rows) for d in DIRECTIONS}
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": hardware_description(torch.device("cpu")),
        "peers": {"rt-utils": peers.rtutils_version(), "plastimatch": peers.plastimatch_version()},
        "seconds": round(time.perf_counter() - t0, 1),
        "directions": DIRECTIONS, "worst": worst, "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    short = {"rt-utils -> delineo": "rt-utils → delineo", "plastimatch -> delineo": "plastimatch → delineo",
             "delineo -> rt-utils": "delineo → rt-utils", "delineo -> plastimatch": "delineo → plastimatch (default: OR)",
             "delineo -> plastimatch --xor-contours": "delineo → plastimatch --xor-contours",
             "delineo -> delineo": "delineo → delineo", "before: rt-utils -> delineo": "before: rt-utils → delineo",
             "before: delineo -> rt-utils": "before: delineo → rt-utils"}
    lines = [f"Dice per structure against the mask the writer was given; {result['machine']}; rt-utils "
             f"{result['peers']['rt-utils']}, {result['peers']['plastimatch']}; {result['date']}.", "",
             f"`{result['command']}`", "",
             "| case (pixel) | structure | thickness (voxels) | " + " | ".join(short[d] for d in DIRECTIONS) + " |",
             "|---|---|---:|" + "---:|" * len(DIRECTIONS)]
    for r in rows:
        lines.append(f"| {r['case']} | {r['structure']} | {r['thickness_voxels']} | " + " | ".join(f"{r[d]:.3f}" for d in DIRECTIONS) + " |")
    lines.append("| **worst** | | | " + " | ".join(f"**{worst[d]:.3f}**" for d in DIRECTIONS) + " |")
    (args.out / "README.md").write_text("# RT Structure Set interoperability (issue 35)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
