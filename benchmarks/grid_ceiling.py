"""How much Dice a model grid costs before any learning: the reference contours of the validation
cases taken to a coarser grid and back, exactly as the model's training labels and its predictions
travel (:func:`delineo.data.transforms.preprocess_labels`: linear + 0.5 threshold onto the model grid;
:func:`delineo.data.transforms.resample`: linear back onto the input grid, then 0.5), scored with
delineo's Dice against the originals. A perfect network on that grid could not score higher.

    python benchmarks/grid_ceiling.py --data ../shared/data/openkbp/validation \
        --grid 5,5,3.5 --grid 4,4,2.5 --out benchmarks/results/hn-grid-ceiling
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from delineo.data.datasets import open_dataset
from delineo.data.transforms import preprocess_labels, resample
from delineo.metrics.segmentation import dice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--grid", action="append", required=True, help="model voxel size in mm, e.g. 4,4,2.5 (repeat)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    grids = [tuple(float(v) for v in g.split(",")) for g in args.grid]
    ds = open_dataset(args.data, orientation="LPI")
    names = list(ds.structures)
    scores = {g: {n: [] for n in names} for g in grids}
    for i, case in enumerate(ds.cases):
        item = ds[i]  # brought to LPI, as the model sees it
        label = np.asarray(item["label"])
        for g in grids:
            low = preprocess_labels(label, item["spacing_mm"], {"spacing_mm": list(g)})
            back = (resample(low.float(), label.shape[1:], "linear") >= 0.5).numpy()
            for k, n in enumerate(names):
                if item["present"][k]:
                    scores[g][n].append(float(dice(back[k], label[k].astype(bool))))
        print(case, file=sys.stderr, flush=True)
    result = {
        "command": "python benchmarks/grid_ceiling.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, CPU",
        "cases": len(ds.cases),
        "grids": {"x".join(f"{v:g}" for v in g): {n: round(float(np.mean(v)), 4) for n, v in scores[g].items() if v} for g in grids},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Dice of the validation reference contours after a round trip through the model grid "
             f"({result['cases']} cases; `{result['command']}`): the ceiling a perfect network on that grid could reach.", "",
             "| grid (mm) | " + " | ".join(names) + " | organs at risk, mean |", "|---" * (len(names) + 2) + "|"]
    oars = [n for n in names if not n.startswith("PTV")]
    for g, per in result["grids"].items():
        mean_oar = np.mean([per[n] for n in oars if n in per])
        lines.append(f"| {g} | " + " | ".join(f"{per.get(n, float('nan')):.3f}" for n in names) + f" | {mean_oar:.3f} |")
    (args.out / "ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
