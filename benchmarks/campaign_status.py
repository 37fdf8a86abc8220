"""Where the hn-ct campaign stands (issue 39), from its committed state: one row per segment (the
machine, threads, precision, epochs and CPU-hours it added), the schedule's phase and learning rate,
the last validation Dice. Writes ``benchmarks/results/hn-campaign/status.md`` and redraws the learning
curve (``learning_curve.json`` / ``.png``) from the state.

    python benchmarks/campaign_status.py
    python benchmarks/campaign_status.py --table 250 300   # the validations of epochs 250-300 as a docs table

``--table`` only prints (one row per validation: CPU-hours, learning rate, mean Dice on the model grid
and per structure, as in docs/benchmarks/hn-ct-cpu.md section 9); it writes nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from delineo.training.campaign import campaign_spec, constant_phase_gain, phase, validation_points, write_curve

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "benchmarks/results/hn-campaign/state/state.json"


# the docs table's columns: (header, structure); PTV63 is left out, as in the earlier tables (its ceiling is low: section 2)
TABLE_COLUMNS = [("PTV70", "PTV70"), ("PTV56", "PTV56"), ("brainstem", "Brainstem"), ("cord", "SpinalCord"),
                 ("parotid R / L", ("RightParotid", "LeftParotid")), ("oesophagus", "Esophagus"),
                 ("larynx", "Larynx"), ("mandible", "Mandible")]


def table(points: list[dict], first: int, last: int) -> str:
    """Markdown table of the validations with ``first <= epoch <= last``."""
    head = ["epoch", "CPU-hours", "learning rate", "model grid"] + [h for h, _ in TABLE_COLUMNS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        if not first <= p["epoch"] <= last:
            continue
        cells = [str(p["epoch"]), f"{p['cpu_hours']:.2f}", f"{p['lr']:.1e}", f"{p['mean_dice']:.3f}"]
        for _, key in TABLE_COLUMNS:
            keys = key if isinstance(key, tuple) else (key,)
            cells.append(" / ".join(f"{p['dice'][k]:.2f}" for k in keys))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", nargs=2, type=int, metavar=("FROM", "TO"),
                    help="print the validations of epochs FROM-TO as a markdown table and exit")
    args = ap.parse_args()
    doc = json.loads(STATE.read_text())
    state, t = doc["state"], doc["config"]["training"]
    spec = t["campaign"]
    hours = state.get("cpu_seconds", 0.0) / 3600
    spec = campaign_spec(spec)
    points = validation_points(state, doc["config"]["data"]["structures"], spec)
    if args.table:
        print(table(points, *args.table))
        return
    steps = state["epoch"] * t["steps_per_epoch"]
    lines = [
        "# The hn-ct campaign: where it stands", "",
        f"State saved {doc['saved_utc']}: epoch {state['epoch']} ({steps} steps of {t['batch_size']} x "
        f"{'x'.join(map(str, t['patch_size']))}), **{hours:.2f} of {spec['cpu_hours']} CPU-hours**, {phase(hours, spec)} phase "
        f"(warm-up to {spec['warmup_cpu_hours']}, constant to {spec['constant_until_cpu_hours']}, {spec['decay']} decay to "
        f"{spec['cpu_hours']}); size of the state folder: "
        f"{sum(f.stat().st_size for f in STATE.parent.iterdir()) / 1e6:.1f} MB.", "",
        "| segment | started (UTC) | ended (UTC) | machine | threads | precision | epochs | CPU-hours | CPU-s per epoch | commit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in state.get("segments", []):
        ep = s.get("end_epoch", s["start_epoch"]) - s["start_epoch"]
        ch = s.get("end_cpu_hours", s["start_cpu_hours"]) - s["start_cpu_hours"]
        per = f"{ch * 3600 / ep:.0f}" if ep else "-"
        lines.append(f"| {s['index']} | {s['started_utc']} | {s.get('ended_utc', '-')} | {s['hardware'].removeprefix('CPU: ')} | "
                     f"{s['threads']} | {s.get('precision') or 'not recorded'} | {ep} | {ch:.3f} | {per} | {s.get('commit') or '-'} |")
    lines.append("")
    if points:
        p = points[-1]
        lines.append(f"Last validation (epoch {p['epoch']}, {p['cpu_hours']:.2f} CPU-hours): mean Dice {p['mean_dice']:.3f} "
                     "on the model grid, 33 OpenKBP validation cases; the curve: `learning_curve.png`.")
    else:
        lines.append(f"No validation yet (every {t['val_every']} epochs).")
    q = constant_phase_gain(points, spec)
    if q is not None:  # "flat" is judged here only (issue 39)
        trend = "-" if q["trend_gain"] is None else f"{q['trend_gain']:+.4f}"
        best = "-" if q["best_gain"] is None else f"{q['best_gain']:+.4f}"
        lines.append("<!-- --8<-- [start:last-quarter] -->")  # docs/benchmarks/hn-ct-cpu.md includes this line
        lines.append(f"Last quarter of the constant phase ({q['from_cpu_hours']:.2f}-{q['to_cpu_hours']:.2f} CPU-hours, "
                     f"{q['validations']} validations{'' if q['complete'] else ', so far'}): gain of the fitted line {trend}, "
                     f"best inside minus best before {best}: "
                     + ("flat" if q["flat"] else "not flat") + ("" if q["complete"] else " so far")
                     + f" (flat: both below {q['flat_below']}).")
        lines.append("<!-- --8<-- [end:last-quarter] -->")
    bundled = ROOT / "models/hn-ct/model.json"
    if bundled.is_file():  # the model a campaign model must beat, on the same grid and by the bundling rule
        v = json.loads(bundled.read_text()).get("validation", {})
        grid, ev = v.get("mean_dice_model_grid"), (v.get("evaluated") or {}).get("mean_dice")
        if grid is not None and ev is not None:
            lines.append(f"The bundled `hn-ct` on the same cases: {grid:.3f} on the model grid (the figure to compare the curve with), "
                         f"{ev:.3f} by `delineo evaluate` (input grid, post-processed); a campaign model replaces it when "
                         f"`delineo evaluate` puts it at least 0.01 higher ({ev + 0.01:.3f}).")
    cooldowns = STATE.parent.parent / "cooldowns.json"
    if cooldowns.is_file():  # branches annealed from the constant phase (benchmarks/campaign_cooldown.py)
        for r in json.loads(cooldowns.read_text()):
            if r["validations"]:
                best = max(r["validations"], key=lambda v: v["mean_dice"])
                lines.append(f"Cooldown branch from epoch {r['from_epoch']} ({r['from_cpu_hours']:.2f} CPU-hours, decay over "
                             f"{r['decay_cpu_hours']} CPU-hours): best {best['mean_dice']:.3f} on the model grid (epoch {best['epoch']}); "
                             "`cooldowns.md`.")
    lines += ["", f"`python {Path(__file__).relative_to(ROOT)}`"]
    write_curve(state, doc["config"]["data"]["structures"], {**spec, "results": str(STATE.parent.parent)})
    out = STATE.parent.parent / "status.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
