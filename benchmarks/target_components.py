"""Stray target islands: which small components of the predicted PTVs to drop, chosen on training
cases (issue 39, "what a planner reads").

The bundled hn-ct draws each dose level with HD95 of 50-60 mm on the validation cases while the
union of the three levels has 29 mm: far-away specks that a planner must find and delete. The
organs already keep their largest component (``postprocess.keep_largest``); a target may have
several true components (primary and nodes, both sides of the neck), so it needs a rule of its own.

For a fixed subset of the TRAINING cases (every ``--every``-th of the sorted case names; never the
validation cases, which choose the campaign's epoch and carry its reported figures) the model
contours the three levels once, as bundled but with no rule on the targets; then each candidate
rule is applied to those masks, per level, by the predictor's own functions:

- ``min_cc:V``  drop every 26-connected component under V cm³ (``postprocess.min_component_cc``),
- ``keep:N``    keep the N largest components (``postprocess.keep_largest``),

and scored with delineo's metrics (Dice, HD95, surface Dice at one voxel) against the reference,
plus the volume drawn where the patient has no such level. The rule for each level is chosen by a
criterion fixed before the run: among the rules whose mean Dice is at least the unfiltered Dice
minus 0.002 and that empty no level the reference has, the lowest mean HD95; within 0.5 mm of it,
the first in the order none, min_cc by
rising volume, keep by falling N (the mildest of each family first).

    python benchmarks/target_components.py --model hn-ct --data ../shared/data/openkbp/train \\
        --every 4 --out benchmarks/results/hn-target-components

Writes ``results.json`` and ``results.md`` (aggregate numbers only, no image data). The chosen
rules are then measured ONCE on the validation cases with ``delineo evaluate`` (see
docs/benchmarks/hn-ct-cpu.md).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from delineo.data.datasets import open_dataset
from delineo.data.io import Image
from delineo.inference.predictor import Predictor, keep_largest_components, remove_small_components
from delineo.machine import cpu_name
from delineo.metrics.segmentation import dice, hd95, surface_dice, volume_cc

LEVELS = ["PTV70", "PTV63", "PTV56"]
MIN_CC = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
KEEP = [3, 2, 1]  # mildest first, as MIN_CC
RULES = ["none", *[f"min_cc:{v:g}" for v in MIN_CC], *[f"keep:{n}" for n in KEEP]]
DICE_SLACK = 0.002
HD95_TIE_MM = 0.5


def apply_rule(mask: np.ndarray, rule: str, spacing_mm) -> np.ndarray:
    """One level's bool mask after ``rule`` (the predictor's own post-processing functions)."""
    if rule == "none":
        return mask
    kind, value = rule.split(":")
    if kind == "min_cc":
        return remove_small_components(mask[None], ["t"], {"t": float(value)}, spacing_mm)[0]
    return keep_largest_components(mask[None], ["t"], {"t": int(value)})[0]


def score(pred: np.ndarray, ref: np.ndarray, spacing_mm) -> dict[str, float]:
    return {"dice": dice(pred, ref), "hd95_mm": hd95(pred, ref, spacing_mm),
            "surface_dice_voxel": surface_dice(pred, ref, spacing_mm, float(max(spacing_mm)))}


def choose(summary: dict[str, dict[str, float]]) -> str:
    """The criterion in the module docstring, over one level's ``{rule: summary}``."""
    floor = summary["none"]["dice"] - DICE_SLACK
    ok = [r for r in RULES if summary[r]["dice"] >= floor and summary[r]["emptied"] == 0]
    best = min(summary[r]["hd95_mm"] for r in ok)
    return next(r for r in ok if summary[r]["hd95_mm"] <= best + HD95_TIE_MM)  # RULES: none, then each family mildest first


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--data", required=True, help="the training cases (never the validation cases)")
    ap.add_argument("--every", type=int, default=4, help="every N-th case of the sorted names")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    predictor = Predictor(args.model, "cpu")
    bundled = dict(predictor.bundle.postprocess)
    rules_bundled = {f"{family}:{n}": v for family in ("min_component_cc", "keep_largest")
                     for n, v in bundled.get(family, {}).items() if n in LEVELS}
    # the targets as the network draws them: no target rule (the organs' keep_largest stays)
    predictor.bundle.meta["postprocess"] = {
        **bundled, "min_component_cc": {k: v for k, v in bundled.get("min_component_cc", {}).items() if k not in LEVELS},
        "keep_largest": {k: v for k, v in bundled.get("keep_largest", {}).items() if k not in LEVELS}}
    all_cases = open_dataset(args.data, LEVELS).cases
    cases = sorted(all_cases)[:: args.every]
    ds = open_dataset(args.data, LEVELS, cases)
    # per level and rule: metric lists over the cases that have the level; cc drawn where they have not
    vals = {n: {r: {"dice": [], "hd95_mm": [], "surface_dice_voxel": [], "emptied": 0, "absent_cc": []} for r in RULES}
            for n in [*LEVELS, "any PTV"]}
    t0 = time.perf_counter()
    for i, case in enumerate(ds.cases):
        item = ds[i]
        spacing = item["spacing_mm"]
        masks = predictor.predict(Image(item["image"][0], item["affine"]), LEVELS)
        ref = {n: item["label"][k].astype(bool) for k, n in enumerate(LEVELS)}
        present = {n: bool(item["present"][k]) for k, n in enumerate(LEVELS)}
        for rule in RULES:
            filtered = {n: apply_rule(np.asarray(masks[n], bool), rule, spacing) for n in LEVELS}
            for n in LEVELS:
                v = vals[n][rule]
                if present[n]:
                    for k, x in score(filtered[n], ref[n], spacing).items():
                        v[k].append(x)
                    v["emptied"] += int(masks[n].any() and not filtered[n].any())
                else:
                    v["absent_cc"].append(volume_cc(filtered[n], spacing))
            union_ref = np.logical_or.reduce([ref[n] for n in LEVELS])
            union = np.logical_or.reduce([filtered[n] for n in LEVELS])
            for k, x in score(union, union_ref, spacing).items():
                vals["any PTV"][rule][k].append(x)
        print(f"{case} ({i + 1}/{len(ds)}, {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    summary = {n: {r: {"dice": _mean(v["dice"]), "hd95_mm": _mean(v["hd95_mm"]),
                       "surface_dice_voxel": _mean(v["surface_dice_voxel"]), "emptied": v["emptied"],
                       "cases": len(v["dice"]), "hd95_undefined": sum(1 for x in v["hd95_mm"] if not math.isfinite(x)),
                       "absent_cases": len(v["absent_cc"]),
                       "absent_cc": float(np.mean(v["absent_cc"])) if v["absent_cc"] else None}
                   for r, v in per.items()} for n, per in vals.items()}
    chosen = {n: choose(summary[n]) for n in LEVELS}
    postprocess = {"min_component_cc": {n: float(r.split(":")[1]) for n, r in chosen.items() if r.startswith("min_cc:")},
                   "keep_largest": {n: int(r.split(":")[1]) for n, r in chosen.items() if r.startswith("keep:")}}
    result = {
        "command": "python benchmarks/target_components.py " + " ".join(sys.argv[1:]),
        "machine": cpu_name(),
        "model": args.model,
        "model_postprocess_as_bundled": bundled,
        "bundled_target_rules_ignored_here": rules_bundled,
        "every": args.every,
        "cases": ds.cases,
        "criterion": f"per level: among rules with mean Dice >= unfiltered - {DICE_SLACK} that empty no level the reference has, "
                     f"the lowest mean HD95; within {HD95_TIE_MM} mm of it, the first of: none, min_cc by rising volume, keep by falling N",
        "summary": summary,
        "chosen": chosen,
        "postprocess": {k: v for k, v in postprocess.items() if v},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    def f(x, d=3):
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"

    lines = []
    for n, per in result["summary"].items():
        lines += [f"**{n}** ({per['none']['cases']} cases with the level" + (
            f"; {per['none']['absent_cases']} without it" if per["none"]["absent_cases"] else "") + ")", "",
            "| rule | Dice | HD95 (mm) | surface Dice (1 voxel) | levels emptied | cc drawn where absent |",
            "|---|---|---|---|---|---|"]
        for r, s in per.items():
            mark = " **(chosen)**" if result["chosen"].get(n) == r else ""
            lines.append(f"| {r}{mark} | {f(s['dice'])} | {f(s['hd95_mm'], 1)} | {f(s['surface_dice_voxel'])} | "
                         f"{s['emptied']} | {f(s['absent_cc'], 1)} |")
        lines.append("")
    lines += [f"Chosen ({result['criterion']}): " + ", ".join(f"{n} {r}" for n, r in result["chosen"].items())
              + f" -> postprocess {json.dumps(result['postprocess'])}.",
              f"{len(result['cases'])} training cases (every {result['every']}th of the sorted names); "
              f"`{result['command']}` on {result['machine']} ({result['seconds']:.0f} s). The union rows apply one rule to all three levels."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
