"""nnU-Net's per-structure probabilities -> one binary NIfTI mask per structure, in delineo's layout
(``<out>/<case>/segmentations/<ROI>.nii.gz``), for ``delineo evaluate --predictions`` (issue 20).

``nnUNetv2_predict --save_probabilities`` writes ``<case>.npz`` with ``probabilities`` ``(C, z, y, x)``
(SimpleITK's array order of the input image; for a region-based dataset one sigmoid per region, in the
order of ``dataset.json``'s labels without background) beside ``<case>.nii.gz``, its label map. Each
structure is its probability > 0.5, transposed to nibabel's ``(x, y, z)`` and written with the input
image's affine. The label map is a cross-check of that geometry: where it says structure ``c`` (the
structure that wins a voxel, later regions winning, as nnU-Net exports it) the probability mask of
``c`` must be set too, read through nibabel from nnU-Net's own file, or the case fails.

Needs numpy and nibabel (either virtual environment)::

    python benchmarks/nnunet/to_masks.py --predictions runs/nnunet/predictions \\
        --raw runs/nnunet/nnUNet_raw/Dataset501_OpenKBP --out runs/nnunet/masks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictions", type=Path, required=True, help="nnUNetv2_predict output folder")
    ap.add_argument("--raw", type=Path, required=True, help="the dataset's nnUNet_raw folder (dataset.json, imagesTs)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args(argv)

    labels = json.loads((args.raw / "dataset.json").read_text())["labels"]
    structures = [name for name in labels if name != "background"]
    files = sorted(args.predictions.glob("*.npz"))
    if not files:
        raise SystemExit(f"{args.predictions}: no .npz probabilities (predict with --save_probabilities)")
    for npz in files:
        case = npz.stem
        ct = nib.load(str(args.raw / "imagesTs" / f"{case}_0000.nii.gz"))
        probs = np.load(npz)["probabilities"]
        if probs.shape[0] != len(structures):
            raise SystemExit(f"{npz}: {probs.shape[0]} probability maps, dataset.json has {len(structures)} structures")
        masks = probs.transpose(0, 3, 2, 1) > args.threshold  # (C, z, y, x) -> (C, x, y, z)
        if masks.shape[1:] != ct.shape:
            raise SystemExit(f"{npz}: probabilities {masks.shape[1:]} after transposing, image {ct.shape}")
        seg = np.asarray(nib.load(str(args.predictions / f"{case}.nii.gz")).dataobj)
        for c, roi in enumerate(structures):
            winner = seg == c + 1
            if (winner & ~masks[c]).sum() > 0.01 * winner.sum():  # exactly 0 when the geometry agrees
                raise SystemExit(f"{case}: {roi} in nnU-Net's label map is outside its probability > 0.5: geometry differs")
        folder = args.out / case / "segmentations"
        folder.mkdir(parents=True, exist_ok=True)
        for c, roi in enumerate(structures):
            nib.save(nib.Nifti1Image(masks[c].astype(np.uint8), ct.affine), str(folder / f"{roi}.nii.gz"))
        print(f"{case}: {', '.join(f'{r} {int(m.sum())}' for r, m in zip(structures, masks))}", flush=True)
    print(f"{len(files)} cases -> {args.out}")


if __name__ == "__main__":
    main()
