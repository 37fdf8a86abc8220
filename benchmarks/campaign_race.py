"""The race before the hn-ct campaign (issue 39, item 3): candidate networks at equal CPU budget.

Reads the learning curves that the runs write (validation Dice on the model grid against the run's
CPU hours, every 5 epochs): the candidates are the steps of ``configs/hn-campaign-race.yaml``
(``delineo ablation ... --out benchmarks/results/hn-race``), run side by side on one host; the
campaign's own curve is shown for reference (same network as A, other hosts). Writes ``race.json``
and ``race.md`` beside them.

    python benchmarks/campaign_race.py [--budget 1.5] [--margin 0.09]

Per candidate: CPU-hours reached, the mean validation Dice at the last point within the budget,
Dice gained per CPU-hour, the slope over the last third of the budget (least squares, Dice per
CPU-hour) and the CPU model(s) it ran on. A candidate that has not reached the budget is marked so.
Then each candidate's Dice per structure at its last point, its curve (mean Dice at every validation)
and the decision by the rule written down before the race ended (docs/benchmarks/hn-ct-cpu.md, section
9): the campaign changes network only if a finished candidate beats A's mean Dice by more than
``--margin`` (the spread between seeds and hosts seen in the ablation, about 0.09).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "A: Res-UNet + SE, batch Dice + BCE (the campaign's network)": ROOT / "benchmarks/results/hn-race/runs/01-a-campaign-network/learning_curve.json",
    "B: A + deep supervision": ROOT / "benchmarks/results/hn-race/runs/02-deep-supervision/learning_curve.json",
    "C: plain U-Net, batch Dice + BCE (today's hn-ct network)": ROOT / "benchmarks/results/hn-race/runs/03-plain-u-net/learning_curve.json",
    # for reference, not a candidate: the same network as A in the campaign, whose first CPU-hours
    # ran on other hosts (the first in fp32 without AVX-512: about four times fewer steps per CPU-hour)
    "(the campaign itself, mixed hosts)": ROOT / "benchmarks/results/hn-campaign/learning_curve.json",
}


def summarise(curve: dict, budget: float) -> dict:
    pts = [p for p in curve["points"] if p["cpu_hours"] <= budget * 1.02 and p["mean_dice"] is not None]
    if not pts:
        return {"reached_cpu_hours": 0.0, "points": 0}
    h = np.array([p["cpu_hours"] for p in pts])
    d = np.array([p["mean_dice"] for p in pts])
    last = pts[-1]
    tail = h >= h[-1] - budget / 3
    slope = float(np.polyfit(h[tail], d[tail], 1)[0]) if tail.sum() >= 2 else None
    cpus = sorted({s["hardware"] for s in curve.get("segments", []) if s["start_cpu_hours"] <= budget})
    return {
        "reached_cpu_hours": round(float(h[-1]), 3), "finished": bool(h[-1] >= budget * 0.98), "points": len(pts),
        "mean_dice": round(float(d[-1]), 4), "best_mean_dice": round(float(d.max()), 4),
        "dice_per_cpu_hour": round(float(d[-1] / h[-1]), 4), "slope_last_third": None if slope is None else round(slope, 4),
        "dice": {k: None if v is None else round(v, 4) for k, v in last["dice"].items()}, "hardware": cpus,
    }


def decision(rows: dict, margin: float) -> str:
    """The rule: keep A unless a finished candidate beats A (finished) by more than ``margin``."""
    names = list(rows)[:3]
    a = rows[names[0]]
    if not a.get("finished"):
        return "no decision yet: A has not reached the budget"
    done = [(n, r) for n, r in rows.items() if n in names[1:] and r.get("finished")]
    if not done:
        return "no decision yet: no other candidate has reached the budget"
    name, best = max(done, key=lambda nr: nr[1]["mean_dice"])
    lead = best["mean_dice"] - a["mean_dice"]
    verdict = f"switch the campaign to {name.split(':')[0]}" if lead > margin else "keep A (the campaign's network)"
    return f"best other candidate {name.split(':')[0]}: {lead:+.3f} mean Dice against A (margin {margin}): {verdict}"


def _tables(rows: dict, curves: dict, budget: float) -> list[str]:
    """Dice per structure at each candidate's last point, and every candidate's curve."""
    done = {n: r for n, r in rows.items() if r.get("points")}
    if not done:
        return []
    structures = list(next(iter(done.values()))["dice"])
    lines = ["", "Dice per structure at the last validation within the budget:", "",
             "| candidate | CPU-h | " + " | ".join(structures) + " |", "|---|---|" + "---|" * len(structures)]
    for n, r in done.items():
        lines.append(f"| {n.split(':')[0]} | {r['reached_cpu_hours']} | "
                     + " | ".join("" if r["dice"].get(s) is None else f"{r['dice'][s]:.3f}" for s in structures) + " |")
    lines += ["", "Mean Dice at every validation (CPU-hours: mean Dice):", ""]
    for n in done:
        pts = [p for p in curves[n]["points"] if p["cpu_hours"] <= budget * 1.02 and p["mean_dice"] is not None]
        lines.append(f"- {n.split(':')[0]}: " + ", ".join(f"{p['cpu_hours']:.2f}: {p['mean_dice']:.3f}" for p in pts))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1.5, help="CPU-hours per candidate")
    ap.add_argument("--margin", type=float, default=0.09, help="lead over A needed to change the campaign's network")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hn-race")
    a = ap.parse_args()
    rows, curves = {}, {}
    for name, path in CANDIDATES.items():
        curves[name] = json.loads(path.read_text()) if path.is_file() else {"points": []}
        rows[name] = summarise(curves[name], a.budget) if path.is_file() else {"reached_cpu_hours": 0.0, "points": 0}
    verdict = decision(rows, a.margin)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "race.json").write_text(json.dumps({"budget_cpu_hours": a.budget, "command": "python benchmarks/campaign_race.py",
                                                 "margin": a.margin, "decision": verdict, "candidates": rows}, indent=1) + "\n")
    lines = [f"# The race before the campaign: {a.budget} CPU-hours each, constant learning rate after a 0.25 CPU-hour warm-up", "",
             "Validation Dice on the model grid (33 OpenKBP validation cases), from each run's learning curve; "
             "`python benchmarks/campaign_race.py`.", "",
             "| candidate | CPU-h reached | mean Dice | Dice / CPU-h | slope, last third (Dice / CPU-h) | CPU |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if not r.get("points"):
            lines.append(f"| {name} | not run yet | | | | |")
            continue
        mark = "" if r["finished"] else " (not finished)"
        lines.append(f"| {name} | {r['reached_cpu_hours']}{mark} | {r['mean_dice']} | {r['dice_per_cpu_hour']} | "
                     f"{r['slope_last_third']} | {'; '.join(h.removeprefix('CPU: ') for h in r['hardware'])} |")
    lines += _tables(rows, curves, a.budget)
    lines += ["", f"Decision (rule: change network only for a lead over A of more than {a.margin}): {verdict}."]
    (a.out / "race.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
