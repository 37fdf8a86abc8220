"""Two or more `delineo evaluate` reports side by side, on the cases they all scored (issue 20).

    python benchmarks/nnunet/compare.py nnU-Net=benchmarks/results/nnunet-same-budget/validation.json \\
        "delineo U-Net step=benchmarks/results/hn-ablation/runs/01-u-net/evaluation.json" > table.md
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(args: list[str]) -> None:
    reports = {}
    for arg in args:
        name, _, path = arg.partition("=")
        reports[name] = json.loads(open(path).read())
    common = set.intersection(*({str(c["case"]) for c in r["cases"]} for r in reports.values()))
    structures = [s for s in next(iter(reports.values()))["structures"] if all(s in r["structures"] for r in reports.values())]
    print("| report | " + " | ".join(structures) + " | mean |")
    print("|---|" + "---|" * (len(structures) + 1))
    for name, r in reports.items():
        means = []
        for s in structures:
            vals = [c[s]["dice"] for c in r["cases"] if str(c["case"]) in common and s in c and c[s]["dice"] is not None]
            means.append(float(np.mean(vals)) if vals else float("nan"))
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {np.nanmean(means):.3f} |")
    print(f"\nMean Dice per structure over the {len(common)} cases every report scored ({', '.join(sorted(common))}).")


if __name__ == "__main__":
    main(sys.argv[1:])
