"""Judge the campaign's best model so far against the bundled ``hn-ct`` by the bundling rule, and
bundle it when it wins (issue 39, item 5).

The rule (docs/benchmarks/hn-ct-cpu.md §5): ``models/hn-ct`` is replaced only when
``delineo evaluate`` on the 33 OpenKBP validation cases (input grid, post-processed) puts the new
model at least 0.01 mean Dice above the bundled one's recorded figure. The campaign keeps its best
epoch by the model-grid Dice in ``runs/hn-ct-campaign/model``; this script

1. copies that folder to ``runs/campaign-candidates/epoch-N`` (the training process may overwrite
   the original at its next validation while this runs),
2. runs ``delineo evaluate`` on it (one thread, ``nice``), and records the summary (per structure:
   Dice, surface Dice at one voxel, HD95; the any-PTV union) with the decision in
   ``benchmarks/results/hn-campaign/candidates.json`` and ``candidates.md``,
3. with ``--bundle`` and a win: replaces ``models/hn-ct`` by the candidate (renamed ``hn-ct``), refits
   its quality estimate (``delineo quality-fit``) and records its validation in the model card
   (``delineo evaluate --model-card``). The README row, the docs and the contouring-time benchmark
   are then updated by hand, from the figures these commands wrote.

    python benchmarks/campaign_candidate.py [--model runs/hn-ct-campaign/model] [--bundle]

A cooldown branch (``benchmarks/campaign_cooldown.py``) is judged the same way, with its own state
for the CPU-hours and segments: ``--model runs/campaign-cooldown/epoch-N/model --state
runs/campaign-cooldown/epoch-N/state``; its rows name the branch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results/hn-campaign"
BUNDLED = ROOT / "models/hn-ct"
MARGIN = 0.01
CAMPAIGN = "hn-ct-campaign"  # the campaign's run name; a cooldown branch has its own
SUMMARY_KEYS = ("dice", "surface_dice_voxel", "hd95_mm", "n")


def _delineo(*args: str, threads: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = ["nice", "-n", "5", str(Path(sys.executable).parent / "delineo"), *args]
    print("$ delineo " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def _evaluate(model: Path, data: Path, out: Path, cases: list[str] | None = None) -> dict:
    """``delineo evaluate`` of ``model`` on ``data`` (one thread, surface Dice at 4 mm), its report
    written to ``out``; a report already there for this model and these cases is reused."""
    if not out.is_file():
        args = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--device", "cpu", "--tolerance-mm", "4"]
        _delineo(*args, *(["--cases", ",".join(cases)] if cases else []))
    return json.loads(out.read_text())


def _summary(report: dict) -> dict:
    return {
        "mean_dice": report["mean_dice"],
        "structures": {k: {m: v.get(m) for m in SUMMARY_KEYS} for k, v in report["structures"].items()},
        "unions": {k: {m: v.get(m) for m in SUMMARY_KEYS} for k, v in report.get("unions", {}).items()},
        "seconds_per_case": report["seconds_per_case"],
        "precision": report["precision"],
    }


def _label(r: dict) -> str:
    """A record's epoch, with the run's name when it is not the campaign itself (a cooldown branch)."""
    return str(r["epoch"]) if r.get("run", CAMPAIGN) == CAMPAIGN else f"{r['epoch']} ({r['run']})"


def _table(records: list[dict], bundled: dict) -> str:
    names = list(records[-1]["evaluated"]["structures"]) if records else []
    head = ["epoch", "CPU-hours", "model grid", "evaluate", "rule", "decision", *names, "any PTV", "PTV70 HD95 mm", "machine"]
    lines = [
        "# Campaign candidates against the bundled hn-ct", "",
        "Each row: the campaign's best epoch so far (`runs/hn-ct-campaign/model`, chosen by the model-grid Dice),",
        "scored by `delineo evaluate` on the 33 OpenKBP validation cases (input grid, post-processed), against the",
        f"bundled model's recorded figure + {MARGIN} (the bundling rule). Per structure: Dice. Written by",
        "`python benchmarks/campaign_candidate.py`. A row whose epoch names a run is a cooldown branch",
        "(`benchmarks/campaign_cooldown.py`: a copy of the campaign's state, its learning rate decayed to zero).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    union = next(iter(bundled.get("unions", {}).values()), {}).get("dice")
    lines.append("| bundled `hn-ct` | | " + f"{bundled.get('mean_dice_model_grid', float('nan')):.3f} | {bundled['mean_dice']:.3f} | | | "
                 + " | ".join(f"{bundled['structures'][n]['dice']:.2f}" if n in bundled["structures"] else "-" for n in names)
                 + f" | {'-' if union is None else f'{union:.3f}'} | {bundled['structures'].get('PTV70', {}).get('hd95_mm', float('nan')):.1f} | "
                 + bundled.get("hardware", "").removeprefix("CPU: ") + " |")
    for r in records:
        e = r["evaluated"]
        union = next(iter(e["unions"].values()), {}).get("dice")
        cells = [_label(r), f"{r['cpu_hours']:.2f}", f"{r['model_grid_mean']:.3f}", f"**{e['mean_dice']:.3f}**",
                 f">= {r['threshold']:.3f}", r["decision"],
                 *[f"{e['structures'][n]['dice']:.2f}" if e["structures"].get(n, {}).get("dice") is not None else "-" for n in names],
                 "-" if union is None else f"{union:.3f}",
                 f"{e['structures'].get('PTV70', {}).get('hd95_mm') or float('nan'):.1f}", r["hardware"]]
        lines.append("| " + " | ".join(cells) + " |")
    if records:  # what a planner reads, for the newest candidate beside the bundled model
        r, f = records[-1], lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        e = r["evaluated"]
        lines += ["", f"Epoch {_label(r)} in detail, beside the bundled model (Dice; surface Dice at one voxel, the case's largest "
                  "voxel dimension, about 4 mm; HD95 in mm; the any-PTV union scores the three dose levels as one region):", "",
                  "| structure | Dice | surface Dice 1 voxel | HD95 mm | bundled Dice | bundled HD95 mm | cases |", "|---|---|---|---|---|---|---|"]
        for n, m in [*e["structures"].items(), *e["unions"].items()]:
            b = bundled["structures"].get(n) or bundled.get("unions", {}).get(n) or {}
            lines.append(f"| {n} | {f(m.get('dice'), '.3f')} | {f(m.get('surface_dice_voxel'), '.3f')} | {f(m.get('hd95_mm'), '.1f')} | "
                         f"{f(b.get('dice'), '.3f')} | {f(b.get('hd95_mm'), '.1f')} | {m.get('n')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "runs/hn-ct-campaign/model")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DELINEO_DATA", ROOT.parent / "shared/data")) / "openkbp/validation")
    ap.add_argument("--state", type=Path, default=None, help="the run's state folder (default: the campaign's)")
    ap.add_argument("--bundle", action="store_true", help="replace models/hn-ct when the candidate wins by the rule")
    a = ap.parse_args()
    if not (a.model / "model.json").is_file():
        sys.exit(f"{a.model}: no model.json (the campaign writes its best epoch there at a validation)")
    if not a.data.is_dir():
        sys.exit(f"{a.data}: validation cases not found (set DELINEO_DATA)")
    # the copy is named by the epoch it holds (the campaign may rewrite the original at any validation)
    incoming = ROOT / "runs/campaign-candidates/incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(a.model, incoming)
    meta = json.loads((incoming / "model.json").read_text())
    epoch, run = meta["training"]["best_epoch"], meta.get("name", CAMPAIGN)
    path = RESULTS / "candidates.json"
    done = {(r.get("run", CAMPAIGN), r["epoch"]): r for r in (json.loads(path.read_text()) if path.is_file() else [])}
    if done.get((run, epoch), {}).get("decision") == "bundled":  # it is the bundled model now: nothing to compare it with
        shutil.rmtree(incoming)
        sys.exit(f"epoch {epoch} of {run} is bundled already (candidates.md)")
    snap = ROOT / "runs/campaign-candidates" / (f"epoch-{epoch}" if run == CAMPAIGN else f"{run}-epoch-{epoch}")
    shutil.copytree(incoming, snap, dirs_exist_ok=True)  # beside an earlier evaluation of the same epoch, if any
    shutil.rmtree(incoming)
    evaluated = _summary(_evaluate(snap, a.data, snap / "evaluate/validation.json"))  # an earlier evaluation of it is reused
    bundled_val = json.loads((BUNDLED / "model.json").read_text())["validation"]
    bundled = bundled_val["evaluated"]["mean_dice"]
    threshold = bundled + MARGIN
    wins = evaluated["mean_dice"] >= threshold
    state_path = (a.state or RESULTS / "state") / "state.json"
    state_doc = json.loads(state_path.read_text())
    at = next((h for h in state_doc["state"]["history"] if h["epoch"] == epoch), {})
    cpu_hours = at["cpu_seconds"] / 3600 if "cpu_seconds" in at else float("nan")
    from delineo.machine import cpu_name

    record = {
        "run": run, "epoch": epoch, "cpu_hours": round(cpu_hours, 3),
        "model_grid_mean": meta["validation"]["mean_dice_model_grid"],
        "evaluated": evaluated, "bundled_mean": bundled, "threshold": threshold,
        "decision": "bundled" if wins and a.bundle else "wins: bundle it (--bundle)" if wins else "kept the bundled model",
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, evaluate on 1 thread beside the campaign",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    records = [r for k, r in done.items() if k != (run, epoch)] + [record]
    records.sort(key=lambda r: (r["epoch"], r.get("run", CAMPAIGN) != CAMPAIGN))
    path.write_text(json.dumps(records, indent=1) + "\n")
    (RESULTS / "candidates.md").write_text(_table(records, {**bundled_val["evaluated"], "mean_dice_model_grid": bundled_val.get("mean_dice_model_grid")}))
    print(f"epoch {epoch}: evaluate {evaluated['mean_dice']:.4f} against {threshold:.4f} (bundled {bundled:.4f} + {MARGIN}): {record['decision']}")
    if wins and a.bundle:
        if not at:
            sys.exit(f"epoch {epoch} is not in the run's history ({state_path}): not bundled")
        _bundle(snap, a.data, _campaign_record(state_doc, at, run))


def _campaign_record(doc: dict, at: dict, run: str = CAMPAIGN) -> dict:
    """How much of the campaign (``doc``: the run's state.json; ``at``: the bundled epoch's record in
    its history) the bundled epoch had: CPU-hours, steps, and the segments (machine, threads,
    precision, epochs, CPU-hours) up to it, for the model card; for a cooldown branch (``run``) also
    where its decay began and ended."""
    state, t, epoch = doc["state"], doc["config"]["training"], at["epoch"]
    segments = []
    for seg in state.get("segments", []):
        if seg["start_epoch"] >= epoch:
            break
        end = min(seg.get("end_epoch", epoch), epoch)
        end_h = seg.get("end_cpu_hours") if end == seg.get("end_epoch") else at["cpu_seconds"] / 3600
        segments.append({"hardware": seg["hardware"].removeprefix("CPU: "), "threads": seg["threads"], "precision": seg.get("precision"),
                         "epochs": [seg["start_epoch"] + 1, end], "cpu_hours": round(end_h - seg["start_cpu_hours"], 3)})
    out = {"config": "configs/hn-ct-campaign.yaml", "epoch": epoch, "steps": epoch * t["steps_per_epoch"],
           "cpu_hours": round(at["cpu_seconds"] / 3600, 3), "budget_cpu_hours": t["campaign"]["cpu_hours"],
           "lr": at.get("lr"), "segments": segments}
    if run != CAMPAIGN:
        c = t["campaign"]
        out["cooldown"] = {"run": run, "script": "benchmarks/campaign_cooldown.py", "decay": c.get("decay", "linear"),
                           "from_cpu_hours": c["constant_until_cpu_hours"], "to_cpu_hours": c["cpu_hours"],
                           "note": "a copy of the campaign's state, its learning rate decayed to zero; the campaign went on without it"}
    return out


def _bundle(snap: Path, data: Path, campaign: dict) -> None:
    """The candidate becomes models/hn-ct: weights, curve, a model card named hn-ct; quality refitted;
    validation recorded by the same command as every bundled model's."""
    tmp = BUNDLED.with_name("hn-ct.new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in ("weights.safetensors", "learning_curve.json", "learning_curve.png"):
        if (snap / name).is_file():
            shutil.copy2(snap / name, tmp / name)
    meta = json.loads((snap / "model.json").read_text())
    meta["name"] = "hn-ct"
    meta.pop("quality", None)
    meta["training"]["campaign"] = campaign
    (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    old = BUNDLED.with_name("hn-ct.old")
    shutil.rmtree(old, ignore_errors=True)
    BUNDLED.rename(old)
    tmp.rename(BUNDLED)
    rel = os.path.relpath(data, ROOT)
    _delineo("quality-fit", "--model", "hn-ct", "--data", rel, "--save-features", "benchmarks/results/quality/hn-ct-features.json",
             "--out", "benchmarks/results/quality/hn-ct-fit.json")
    _delineo("evaluate", "--model", "hn-ct", "--data", rel, "--out", "benchmarks/results/hn-ct/validation.json",
             "--device", "cpu", "--model-card")
    shutil.rmtree(old)
    print(f"bundled as {BUNDLED}; now: README's model row, docs/benchmarks (models.md, hn-ct-cpu.md), "
          "the contouring-time benchmark (benchmarks/README.md)")


if __name__ == "__main__":
    main()
