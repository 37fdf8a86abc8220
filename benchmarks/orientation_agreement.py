"""Orientation: the same CT through every input form gives the same contours in patient coordinates.

For each case of a case-folder dataset (OpenKBP validation), contour it with a model (default the
bundled ``hn-ct``) from:

- ``nifti``            its own ct.nii.gz (the reference)
- ``nifti_flip_lr``    the array flipped left-right, the affine adjusted (every voxel keeps its place)
- ``nifti_swap_xy``    the first two array axes swapped, the affine adjusted
- ``dicom_hfs``        a CT series written slice by slice (head-first supine), read back by delineo
- ``dicom_ffs``        the same CT as a feet-first-supine series (columns to the patient's right)

and compare every form's masks with the reference's by Dice in patient coordinates
(:func:`delineo.metrics.segmentation.patient_dice`: voxel centres in world mm, no reorientation
code involved), per structure. The DICOM node and the web service are checked on one real case by
``tests/test_real_data.py``; the node's turnaround benchmark compares against the NIfTI path too.

    python benchmarks/orientation_agreement.py --data ../shared/data/openkbp/validation \
        --out benchmarks/results/orientation [--cases 33] [--model hn-ct]

Only aggregate numbers are written (no images, masks or DICOM from the data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMS = ("nifti_flip_lr", "nifti_swap_xy", "dicom_hfs", "dicom_ffs")


def reordered(array: np.ndarray, affine: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored in another array order, the affine adjusted by hand."""
    if form == "nifti_flip_lr" or form == "dicom_ffs":
        a = affine.copy()
        a[:3, 0] *= -1
        a[:3, 3] = affine[:3, 3] + affine[:3, 0] * (array.shape[0] - 1)
        return np.flip(array, 0).copy(), a
    if form == "nifti_swap_xy":
        return array.transpose(1, 0, 2).copy(), affine[:, [1, 0, 2, 3]]
    return array, affine


def case_agreement(case_dir: Path, model: str, work: Path, forms=FORMS) -> dict:
    """Contour one case in every form; ``{form: {structure: patient Dice vs the NIfTI path}}`` and timings."""
    import nibabel as nib

    from delineo import api
    from delineo.data.io import Image, read_image, write_image
    from delineo.dicom.write_ct import write_ct_series
    from delineo.metrics.segmentation import patient_dice

    def masks_of(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        res = {}
        for p in sorted((out / "segmentations").glob("*.nii.gz")):
            img = nib.load(str(p))
            res[p.name[: -len(".nii.gz")]] = (np.asarray(img.dataobj) > 0, img.affine)
        return res

    ct = read_image(case_dir / "ct.nii.gz")
    t0 = time.perf_counter()
    api.contour(case_dir / "ct.nii.gz", work / "nifti", model=model, device="cpu", overview=False)
    seconds = {"nifti": round(time.perf_counter() - t0, 2)}
    ref = masks_of(work / "nifti")
    result: dict = {}
    for form in forms:
        arr, aff = reordered(np.asarray(ct.array), ct.affine, form)
        if form.startswith("dicom"):
            write_ct_series(Image(arr, aff), work / f"{form}_ct", patient_position="FFS" if form == "dicom_ffs" else "HFS")
            src = work / f"{form}_ct"
        else:
            src = write_image(work / f"{form}.nii.gz", Image(arr, aff))
        t0 = time.perf_counter()
        api.contour(src, work / form, model=model, device="cpu", overview=False)
        seconds[form] = round(time.perf_counter() - t0, 2)
        got = masks_of(work / form)
        result[form] = {n: patient_dice(got[n][0], got[n][1], m, a) for n, (m, a) in ref.items()}
    return {"dice": result, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--cases", type=int, default=None, help="first N cases (sorted); default all")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cases = sorted(p for p in args.data.iterdir() if (p / "ct.nii.gz").is_file())[: args.cases]
    per_case = {}
    for i, case in enumerate(cases, 1):
        with tempfile.TemporaryDirectory() as tmp:
            per_case[case.name] = case_agreement(case, args.model, Path(tmp))
        print(f"[{i}/{len(cases)}] {case.name}: min Dice " + ", ".join(
            f"{f} {min(d.values()):.4f}" for f, d in per_case[case.name]["dice"].items()), file=sys.stderr, flush=True)
    structures = sorted({n for c in per_case.values() for d in c["dice"].values() for n in d})
    table = {f: {n: [c["dice"][f][n] for c in per_case.values() if n in c["dice"][f]] for n in structures} for f in FORMS}
    summary = {f: {n: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for n, v in t.items() if v} for f, t in table.items()}
    result = {
        "command": "python benchmarks/orientation_agreement.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads, cpu",
        "model": args.model,
        "cases": [c.name for c in cases],
        "summary": summary,
        "per_case": per_case,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "orientation.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Same CT, other input forms vs its NIfTI path: Dice in patient coordinates per structure, "
             f"{len(cases)} cases of {args.data}, model {args.model} ({result['machine']}). "
             f"Command: `{result['command']}`", "",
             "| structure | " + " | ".join(f"{f} mean (min)" for f in FORMS) + " |", "|---|" + "---|" * len(FORMS)]
    for n in structures:
        lines.append(f"| {n} | " + " | ".join(
            f"{summary[f][n]['mean']:.4f} ({summary[f][n]['min']:.4f})" if n in summary[f] else "-" for f in FORMS) + " |")
    lines += ["", "An empty mask in both forms counts as agreement (1.0). Masks compared as sets of voxel centres in "
              "world mm, computed from each output's own affine."]
    (args.out / "orientation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
