"""How a model is run at inference, measured by validation Dice and time: whole volume or body box,
one pass or a sliding window, fp32 or bf16.

For each mode the model folder is copied to a temporary folder with its ``inference`` settings
changed (nothing else: same weights, same pre- and post-processing), then `delineo evaluate` scores
it on the dataset. Its seconds per case include the metrics (HD95, surface Dice), so they compare
modes with each other, not with `delineo contour`.

    OMP_NUM_THREADS=1 python benchmarks/inference_modes.py --model hn-ct \
        --data ../shared/data/openkbp/validation --out benchmarks/results/hn-ct/inference-modes

Writes ``<out>/<mode>.json`` (each evaluate report), ``modes.json`` and ``modes.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

BODY = {"threshold": -500, "margin_mm": 10}
MODES = {
    # name: (inference settings, precision)
    "whole volume, fp32": ({"patch_size": None, "crop_foreground": None}, "fp32"),
    "body box, fp32": ({"patch_size": None, "crop_foreground": BODY}, "fp32"),
    "body box, bf16": ({"patch_size": None, "crop_foreground": BODY}, "bf16"),
    "body box, sliding window 96^3, bf16": ({"patch_size": [96, 96, 96], "crop_foreground": BODY}, "bf16"),
    "whole volume, sliding window 64^3, bf16": ({"patch_size": [64, 64, 64], "crop_foreground": None}, "bf16"),
    "body box, sliding window 64^3, bf16": ({"patch_size": [64, 64, 64], "crop_foreground": BODY}, "bf16"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="", help="Comma-separated mode names to run (default: all).")
    args = ap.parse_args()

    import torch

    from delineo.inference.evaluate import evaluate
    from delineo.models.registry import resolve_model
    from delineo.experiments.ablation import slug  # the ablation's file names for its steps

    source = resolve_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [m.strip() for m in args.only.split(",") if m.strip()] or list(MODES)
    rows = []
    for name in wanted:
        settings, precision = MODES[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / source.name
            shutil.copytree(source, folder)
            meta_path = folder / "model.json"
            meta = json.loads(meta_path.read_text())
            inference = {**meta.get("inference", {}), **settings}
            inference = {k: v for k, v in inference.items() if v is not None or k == "patch_size"}
            inference["precision"] = precision
            meta["inference"] = inference
            meta_path.write_text(json.dumps(meta, indent=2))
            report_path = args.out / f"{slug(name)}.json"
            report = evaluate(str(folder), args.data, report_path, device="cpu", bf16=precision == "bf16")
        rows.append({"mode": name, "inference": inference, "mean_dice": round(report["mean_dice"], 4),
                     "structures": {s: round(v["dice"], 4) for s, v in report["structures"].items()},
                     "seconds_per_case": round(report["seconds_per_case"], 2), "report": str(report_path)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/inference_modes.py " + " ".join(sys.argv[1:]), "model": args.model,
              "data": str(args.data), "threads": torch.get_num_threads(), "modes": rows}
    (args.out / "modes.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| mode | mean Dice | PTV70 | s/case (with metrics) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['mean_dice']:.4f} | {r['structures'].get('PTV70', float('nan')):.4f} | {r['seconds_per_case']} |")
    (args.out / "modes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
