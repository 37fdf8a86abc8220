"""OpenKBP case folders -> an nnU-Net v2 raw dataset (region-based), for the same-budget comparison
(issue 20; benchmarks/results/nnunet-same-budget/README.md).

delineo's layout: ``<split>/<case>/ct.nii.gz`` + ``segmentations/<ROI>.nii.gz``, one binary mask per
contoured structure, a missing file = not contoured. nnU-Net wants one integer label map per case, but
the structures overlap (the PTVs nest and overlap the organs), so the dataset is **region-based**:
every combination of structures that occurs in a voxel of the training set gets its own label value,
and each structure is the region made of the label values whose combination contains it
(``dataset.json``: ``"PTV70": [3, 7, ...]``). nnU-Net then trains one sigmoid per structure, like
delineo, and predicting with ``--save_probabilities`` gives every structure's own probability map, so
the overlaps survive (the exported label map, by ``regions_class_order``, would not).

A missing structure file (not contoured) cannot be told to nnU-Net per case and structure: it becomes
background there, which penalises nnU-Net a little on the cases that lack a structure; the number of
such case/structure pairs is written to ``conversion.json``. Scoring uses delineo's metrics, which skip
a structure in a case without a reference, as for delineo's own model.

Needs only numpy and nibabel (either virtual environment)::

    python benchmarks/nnunet/convert_openkbp.py --data ../shared/data/openkbp --out runs/nnunet/nnUNet_raw --id 501
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

STRUCTURES = ["PTV70", "PTV63", "PTV56", "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]


def combination_map(case: Path, shape, affine) -> tuple[np.ndarray, list[str]]:
    """Per voxel, a bit mask of the structures present there (uint16), and the structures missing."""
    bits = np.zeros(shape, np.uint16)
    missing = []
    for k, roi in enumerate(STRUCTURES):
        p = case / "segmentations" / f"{roi}.nii.gz"
        if not p.is_file():
            missing.append(roi)
            continue
        m = nib.load(str(p))
        if m.shape != tuple(shape) or not np.allclose(m.affine, affine, atol=1e-3):
            raise ValueError(f"{p}: grid differs from the CT's")
        bits |= (np.asarray(m.dataobj) > 0).astype(np.uint16) << k
    return bits, missing


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="OpenKBP folder with train/ and validation/")
    ap.add_argument("--out", type=Path, required=True, help="nnUNet_raw folder")
    ap.add_argument("--id", type=int, default=501)
    args = ap.parse_args(argv)

    ds = args.out / f"Dataset{args.id:03d}_OpenKBP"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    combos: dict[int, int] = {0: 0}  # structure bit mask -> label value
    state_path = ds / "conversion.json"
    record = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if record.get("combos"):
        combos = {int(k): v for k, v in record["combos"].items()}
    missing_pairs = record.get("missing", {})
    train_cases = sorted(p for p in (args.data / "train").iterdir() if (p / "ct.nii.gz").is_file())
    val_cases = sorted(p for p in (args.data / "validation").iterdir() if (p / "ct.nii.gz").is_file())
    for i, case in enumerate(train_cases, 1):
        img_out, lab_out = ds / "imagesTr" / f"{case.name}_0000.nii.gz", ds / "labelsTr" / f"{case.name}.nii.gz"
        if lab_out.is_file() and img_out.is_file():
            continue  # converted earlier (resumable)
        ct = nib.load(str(case / "ct.nii.gz"))
        bits, missing = combination_map(case, ct.shape, ct.affine)
        labels = np.zeros(bits.shape, np.uint8)
        for b in np.unique(bits):
            if int(b) not in combos:
                combos[int(b)] = len(combos)
            labels[bits == b] = combos[int(b)]
        if len(combos) > 255:
            raise ValueError("more than 255 structure combinations")
        nib.save(nib.Nifti1Image(np.asarray(ct.dataobj).astype(np.int16), ct.affine), str(img_out))
        tmp = lab_out.parent / f".{case.name}.tmp.nii.gz"  # the label map last: a case is done once it is there
        nib.save(nib.Nifti1Image(labels, ct.affine), str(tmp))
        tmp.replace(lab_out)
        missing_pairs[case.name] = missing
        state_path.write_text(json.dumps({"combos": {str(k): v for k, v in combos.items()}, "missing": missing_pairs}, indent=1))
        print(f"train {i}/{len(train_cases)} {case.name}: {len(combos)} combinations so far", flush=True)
    for case in val_cases:  # images only: predicted, then scored against the case folders
        img_out = ds / "imagesTs" / f"{case.name}_0000.nii.gz"
        if not img_out.is_file():
            ct = nib.load(str(case / "ct.nii.gz"))
            nib.save(nib.Nifti1Image(np.asarray(ct.dataobj).astype(np.int16), ct.affine), str(img_out))
    regions = {roi: sorted(v for b, v in combos.items() if b & (1 << k)) for k, roi in enumerate(STRUCTURES)}
    labels = {"background": 0, **{roi: r for roi, r in regions.items() if r}}
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        # needed by nnU-Net for region-based training; the export's label map follows it (later wins),
        # so the comparison reads the per-structure probabilities instead (--save_probabilities)
        "regions_class_order": list(range(1, len(labels))),
        "numTraining": len(train_cases),
        "file_ending": ".nii.gz",
        "description": "OpenKBP train split, region-based (one label value per structure combination); converted by delineo benchmarks/nnunet/convert_openkbp.py",
    }
    (ds / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    n_missing = sum(len(v) for v in missing_pairs.values())
    rec = {"combos": {str(k): v for k, v in combos.items()}, "missing": missing_pairs, "missing_pairs": n_missing,
           "n_train": len(train_cases), "n_validation": len(val_cases), "structures": STRUCTURES}
    state_path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"{ds}: {len(train_cases)} training cases, {len(val_cases)} validation images, "
          f"{len(combos)} label values, {n_missing} structure files missing (background for nnU-Net)")


if __name__ == "__main__":
    main()
