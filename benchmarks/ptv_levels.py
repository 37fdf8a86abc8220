"""Where PTV70 Dice is lost: finding the targets, or telling their dose levels apart (issue 19).

OpenKBP stores the three planning target volumes without overlap (PTV70, then what PTV63 adds, then
what PTV56 adds). Whether a region is prescribed 70, 63 or 56 Gy is a clinical decision that the CT
alone does not show. For each validation case this scores, with delineo's Dice, a model's contours
per dose level and the union of all target levels ("any PTV"): if the union scores far higher than
PTV70, most of PTV70's shortfall is the dose-level assignment, not finding the targets.

    python benchmarks/ptv_levels.py --model hn-ct --data ../shared/data/openkbp/validation \
        --out benchmarks/results/hn-ptv-levels
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from delineo.data.datasets import open_dataset
from delineo.data.io import Image
from delineo.inference.predictor import Predictor
from delineo.metrics.segmentation import dice

LEVELS = ["PTV70", "PTV63", "PTV56"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--exclusive", action="store_true",
                    help="one dose level per voxel, the most probable (the model's postprocess.exclusive, added here)")
    args = ap.parse_args()
    predictor = Predictor(args.model, "cpu")
    if args.exclusive:
        predictor.bundle.meta.setdefault("postprocess", {})["exclusive"] = [LEVELS]
    ds = open_dataset(args.data, LEVELS)
    rows = []
    for i, case in enumerate(ds.cases):
        item = ds[i]
        masks = predictor.predict(Image(item["image"][0], item["affine"]), LEVELS)
        ref = {n: item["label"][k].astype(bool) for k, n in enumerate(LEVELS)}
        row = {"case": case, "levels": [n for k, n in enumerate(LEVELS) if item["present"][k]]}
        voxel_cc = float(np.prod(item["spacing_mm"])) / 1000.0
        for k, n in enumerate(LEVELS):
            if item["present"][k]:
                row[n] = float(dice(masks[n], ref[n]))
            else:  # a level this patient was not prescribed: whatever is drawn is a false target
                row[f"{n} drawn where absent (cc)"] = float(np.asarray(masks[n], bool).sum() * voxel_cc)
        union_ref = np.logical_or.reduce([ref[n] for n in LEVELS])
        union_pred = np.logical_or.reduce([np.asarray(masks[n], bool) for n in LEVELS])
        row["any PTV"] = float(dice(union_pred, union_ref))
        # PTV70 against the reference of the levels at 63 Gy and above (is it drawn where a higher level is?)
        row["PTV70 vs PTV70+PTV63"] = float(dice(masks["PTV70"], ref["PTV70"] | ref["PTV63"]))
        rows.append(row)
        print(case, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, file=sys.stderr, flush=True)
    keys = [*LEVELS, "any PTV", "PTV70 vs PTV70+PTV63"]
    summary = {k: round(float(np.mean([r[k] for r in rows if k in r])), 4) for k in keys}
    absent = {n: [r[f"{n} drawn where absent (cc)"] for r in rows if f"{n} drawn where absent (cc)" in r] for n in LEVELS}
    by_levels = {}
    for r in rows:
        by_levels.setdefault("+".join(r["levels"]), []).append(r)
    result = {
        "command": "python benchmarks/ptv_levels.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, CPU, {platform.processor() or ''}".strip(", "),
        "model": args.model,
        "postprocess": predictor.bundle.postprocess,
        "cases": len(rows),
        "mean_dice": summary,
        "drawn_where_absent_cc": {n: {"cases": len(v), "mean_cc": round(float(np.mean(v)), 1)} for n, v in absent.items() if v},
        "by_levels": {k: {"cases": len(v), "PTV70": round(float(np.mean([r["PTV70"] for r in v])), 4),
                          "any PTV": round(float(np.mean([r["any PTV"] for r in v])), 4)} for k, v in sorted(by_levels.items())},
        "per_case": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
             "| " + " | ".join(f"{summary[k]:.3f}" for k in keys) + " |", "",
             "| dose levels contoured | cases | PTV70 | any PTV |", "|---|---|---|---|"]
    for k, v in result["by_levels"].items():
        lines.append(f"| {k} | {v['cases']} | {v['PTV70']:.3f} | {v['any PTV']:.3f} |")
    if result["drawn_where_absent_cc"]:
        lines += ["", "| level not prescribed | cases | volume drawn (cc, mean) |", "|---|---|---|"]
        lines += [f"| {n} | {v['cases']} | {v['mean_cc']:.1f} |" for n, v in result["drawn_where_absent_cc"].items()]
    lines += ["", f"Mean Dice over {len(rows)} validation cases, model `{result['model']}`; "
              f"`{result['command']}` on {result['machine']}."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
