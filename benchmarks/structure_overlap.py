"""Which structures share voxels in the reference contours of a dataset (issue 19).

A model with one sigmoid per structure may draw two structures over the same voxel. Where the
reference contours of a pair never overlap (OpenKBP stores PTV70, PTV63 and PTV56 as disjoint dose
levels), the model's ``postprocess.exclusive`` groups can give each voxel to the most probable member
only. This counts, per pair of structures contoured in the same case, the cases where they share at
least one voxel and the shared volume, on the *training* cases (the basis for the choice, so that
no held-out case decides it).

    python benchmarks/structure_overlap.py --data ../shared/data/openkbp/train \
        --out benchmarks/results/hn-ptv-levels/train-overlap.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
from pathlib import Path

import numpy as np

from delineo.data.datasets import open_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ds = open_dataset(args.data, None)
    names = list(ds.structures)
    pairs = {f"{a}&{b}": {"cases_both": 0, "cases_overlapping": 0, "overlap_cc": 0.0} for a, b in itertools.combinations(names, 2)}
    for i, case in enumerate(ds.cases):
        item = ds[i]
        voxel_cc = float(np.prod(item["spacing_mm"])) / 1000.0
        for (j, a), (k, b) in itertools.combinations(enumerate(names), 2):
            if not (item["present"][j] and item["present"][k]):
                continue
            shared = int(np.logical_and(item["label"][j], item["label"][k]).sum())
            p = pairs[f"{a}&{b}"]
            p["cases_both"] += 1
            p["cases_overlapping"] += int(shared > 0)
            p["overlap_cc"] = round(p["overlap_cc"] + shared * voxel_cc, 3)
        print(f"{i + 1}/{len(ds.cases)} {case}", file=sys.stderr, flush=True)
    never = sorted(k for k, v in pairs.items() if v["cases_both"] and not v["cases_overlapping"])
    result = {
        "command": "python benchmarks/structure_overlap.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, CPU",
        "cases": len(ds.cases),
        "never_overlapping": never,
        "pairs": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"cases": len(ds.cases), "never_overlapping": never}, indent=1))


if __name__ == "__main__":
    main()
