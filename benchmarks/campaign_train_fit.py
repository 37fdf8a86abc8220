"""Under-fitting or not: a campaign model scored on contours it trained on, beside the validation cases.

Issue 39 starts from the audit's finding (docs/benchmarks/hn-ct-cpu.md §3) that the model agreed
with its own training contours about as poorly as with unseen ones: it under-fits, and compute was
the lever not yet applied. Once the constant phase has gone flat, the same comparison says what
the flat curve means: training Dice well above validation Dice is a network that fits its
contours and does not generalise (more data, augmentation, regularisation); the two close
together, both low, is a network that still cannot fit them (capacity, grid, the labels themselves).

Scores ``--model`` with ``delineo evaluate`` (input grid, post-processed, one thread) on every
``--every``-th training case (by case number) and on the validation cases, and writes a table of
both with the gap per structure. The reports are kept in ``runs/train-fit/<model folder>/`` and
reused when the command is run again.

    python benchmarks/campaign_train_fit.py --model runs/campaign-candidates/epoch-250 \\
        --out benchmarks/results/hn-campaign/train-fit
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

from campaign_candidate import _evaluate  # delineo evaluate as a subprocess: one thread, nice (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DELINEO_DATA", ROOT.parent / "shared/data")) / "openkbp"


def _case_number(name: str) -> int:
    digits = re.findall(r"\d+", name)
    return int(digits[-1]) if digits else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a model folder (e.g. a campaign candidate)")
    ap.add_argument("--train", type=Path, default=DATA / "train")
    ap.add_argument("--val", type=Path, default=DATA / "validation")
    ap.add_argument("--every", type=int, default=5, help="every N-th training case by case number")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    for folder in (a.train, a.val):
        if not folder.is_dir():
            sys.exit(f"{folder}: not found (set DELINEO_DATA)")
    if not (a.model / "model.json").is_file():
        sys.exit(f"{a.model}: no model.json")
    train_cases = sorted((p.name for p in a.train.iterdir() if p.is_dir()), key=_case_number)[:: a.every]
    meta = json.loads((a.model / "model.json").read_text())
    epoch = meta.get("training", {}).get("best_epoch", "?")
    reports = ROOT / "runs/train-fit" / a.model.name  # the per-case reports stay out of the repository
    reports.mkdir(parents=True, exist_ok=True)
    train = _evaluate(a.model, a.train, reports / f"epoch-{epoch}-train.json", train_cases)
    val = _evaluate(a.model, a.val, reports / f"epoch-{epoch}-validation.json", None)
    import torch

    from delineo.machine import hardware_description

    torch.set_num_threads(1)  # the machine as the evaluations ran it (one thread each)
    rows = []
    for name in [*val["structures"], *val.get("unions", {})]:
        t = train["structures"].get(name) or train.get("unions", {}).get(name) or {}
        v = val["structures"].get(name) or val.get("unions", {}).get(name) or {}
        if t.get("dice") is None or v.get("dice") is None:
            continue
        rows.append({"structure": name, "train": round(t["dice"], 4), "train_n": t["n"], "validation": round(v["dice"], 4),
                     "validation_n": v["n"], "gap": round(t["dice"] - v["dice"], 4)})
    result = {
        "command": "python benchmarks/campaign_train_fit.py " + shlex.join(sys.argv[1:]),
        "model": str(a.model), "epoch": epoch, "train_cases": train_cases,
        "machine": hardware_description(torch.device("cpu")), "structures": rows,
        **{k: {"train": train.get(k), "validation": val.get(k)} for k in ("mean_dice", "organs_at_risk_mean")},
    }
    (a.out / "train_fit.json").write_text(json.dumps(result, indent=1) + "\n")
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"Epoch {epoch} scored by `delineo evaluate` (input grid, post-processed) on {len(train_cases)} of its training cases "
             f"(every {a.every}th by case number) and on the {len(val['cases'])} validation cases:", "",
             "| structure | training cases | validation | training − validation |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['structure']} | {r['train']:.3f} ({r['train_n']}) | {r['validation']:.3f} ({r['validation_n']}) | {r['gap']:+.3f} |")
    for label, key in (("mean", "mean_dice"), ("organs at risk, mean", "organs_at_risk_mean")):
        t, v = result[key]["train"], result[key]["validation"]
        gap = "-" if t is None or v is None else f"{t - v:+.3f}"
        lines.append(f"| **{label}** | {f(t)} | {f(v)} | {gap} |")
    lines += ["", f"{result['machine']}; `{result['command']}`"]
    (a.out / "train_fit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
