"""How a model is run at inference, measured by validation Dice and time: whole volume or body box,
one pass or a sliding window (at which overlap), fp32 or bf16.

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
import shlex
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
    # the overlap (`delineo contour --overlap`): 0.5 is hn-ct's; 0.25 runs fewer than half the windows
    "body box, sliding window 64^3, fp32": ({"patch_size": [64, 64, 64], "crop_foreground": BODY, "overlap": 0.5}, "fp32"),
    "body box, sliding window 64^3, overlap 0.25, fp32": ({"patch_size": [64, 64, 64], "crop_foreground": BODY, "overlap": 0.25}, "fp32"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="", help="Mode names to run, separated by ';' (names hold commas; default: all).")
    args = ap.parse_args()

    import torch

    from delineo.inference.evaluate import evaluate
    from delineo.models.registry import resolve_model
    from delineo.experiments.ablation import slug  # the ablation's file names for its steps

    source = resolve_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [m.strip() for m in args.only.split(";") if m.strip()] or list(MODES)
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        sys.exit(f"unknown mode(s) {unknown}; the modes: {list(MODES)}")
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
                     "unions": {s: round(v["dice"], 4) for s, v in report.get("unions", {}).items() if v.get("dice") is not None},
                     "organs_at_risk_mean": None if report["organs_at_risk_mean"] is None else round(report["organs_at_risk_mean"], 4),
                     "seconds_per_case": round(report["seconds_per_case"], 2), "report": str(report_path)})
        print(json.dumps(rows[-1]), flush=True)
    from delineo.machine import hardware_description

    result = {"command": "python benchmarks/inference_modes.py " + shlex.join(sys.argv[1:]), "model": args.model,
              "data": str(args.data), "threads": torch.get_num_threads(), "machine": hardware_description(torch.device("cpu")),
              "modes": rows}
    (args.out / "modes.json").write_text(json.dumps(result, indent=2) + "\n")
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| mode | mean Dice | PTV70 | any PTV | organs at risk | s/case (with metrics) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['mean_dice']:.4f} | {f(r['structures'].get('PTV70'))} | {f(r['unions'].get('any PTV'))} | "
                     f"{f(r['organs_at_risk_mean'])} | {r['seconds_per_case']} |")
    lines += ["", f"{result['machine']}; `{result['command']}`"]
    (args.out / "modes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
