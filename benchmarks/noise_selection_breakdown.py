"""Which corrupted labels did a selecting method keep? Kept and dropped, per structure and operation.

For noise-benchmark runs of a method that drops training labels (``weighting: {kind: agreement}``),
reads the run's ``model.json``: the label-noise records (per training case and structure:
eroded, dilated or untouched, and the Dice of the noisy label against the clean one) and the
strategy's record (``weighting_record``: the dropped cases). Reports per structure how many
eroded and dilated labels were kept and dropped, and the mean Dice of those labels against the
clean ones. Reads only what the runs recorded; trains and predicts nothing.

    python benchmarks/noise_selection_breakdown.py --out benchmarks/results/jsrt-noise-selection \
        benchmarks/results/jsrt-noise-cpu/runs/agreement__a0.5__r5-13 [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def breakdown(run_dir: Path) -> dict:
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    training = meta["training"]
    record = training.get("weighting_record") or {}
    if "dropped_cases" not in record:
        raise SystemExit(f"{run_dir}: the run records no selection (weighting_record.dropped_cases); not a selecting method")
    if not training.get("label_noise"):
        raise SystemExit(f"{run_dir}: the run had no synthetic label noise to compare with")
    dropped = set(record["dropped_cases"])
    out = {"run": run_dir.name, "n_train": record["n_train"], "n_kept": record["n_kept"], "structures": {}}
    for c, name in enumerate(meta["structures"]):
        cells = {}
        for op in ("erode", "dilate", "none"):
            recs = [r for r in training["label_noise"] if r["operations"][c].split(":")[0] == op]
            kept = [r for r in recs if r["case"] not in dropped]
            cells[op] = {
                "kept": len(kept), "dropped": len(recs) - len(kept),
                "mean_dice_vs_clean": float(np.mean([r["dice_vs_clean"][c] for r in recs])) if recs else None,
            }
        out["structures"][name] = cells
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="noise-benchmark run folders (runs/<id>)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [breakdown(r) for r in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Labels kept and dropped by selection, per structure and corruption",
        "",
        "kept / dropped labels (mean Dice of those labels against the clean ones). `none`: the structure's label was not corrupted.",
        "",
        "| run | kept | structure | eroded | dilated | none |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, cells in r["structures"].items():
            fmt = [f"{v['kept']} / {v['dropped']}" + (f" ({v['mean_dice_vs_clean']:.2f})" if v["mean_dice_vs_clean"] is not None else "")
                   for v in cells.values()]
            lines.append(f"| {r['run']} | {r['n_kept']}/{r['n_train']} | {name} | " + " | ".join(fmt) + " |")
    (args.out / "selection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
