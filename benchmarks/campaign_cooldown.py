"""A cooldown branch of the hn-ct campaign: a copy of its state, annealed to a learning rate of zero
over a short CPU budget, while the campaign itself trains on untouched (issue 39).

The campaign's schedule is warm-up, a long constant phase, then a decay (a "warmup-stable-decay"
schedule). During the constant phase the validation Dice moves within a band whose width is set
by the learning rate as much as by what the network has learnt; what a decay from the current
point would give is not visible on that curve. This script copies the campaign's state (checked:
weights and moments are the ones its ``state.json`` was saved with), writes a config that is the
campaign's with only these changes:

- ``training.campaign``: ``constant_until_cpu_hours`` = the copy's CPU-hours ``S``,
  ``cpu_hours`` = ``S + D`` (the linear decay from the campaign's peak rate to zero over ``D``),
  ``state``/``results`` in the branch's folder;
- ``name``, ``output``, ``work_dir`` in ``runs/campaign-cooldown/epoch-N/``;
- the copied state's best validation is cleared, so the branch writes the best of its own epochs;

and trains it (``nice``, ``--threads``, default 1, beside the campaign). The branch's model is then
judged like any campaign candidate, by the bundling rule::

    python benchmarks/campaign_cooldown.py --cpu-hours 0.8
    python benchmarks/campaign_candidate.py --model runs/campaign-cooldown/epoch-N/model \\
        --state runs/campaign-cooldown/epoch-N/state [--bundle]

Nothing of the branch is committed but the figures it leads to (and the model, if it is bundled):
at its end the script writes ``benchmarks/results/hn-campaign/cooldowns.json`` and ``cooldowns.md``
(each branch's validations beside the campaign's own at the same epochs; ``--summary-only N``
rewrites them from an existing branch). The campaign's own state and learning curve are never
written by it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/hn-ct-campaign.yaml"
RUNS = ROOT / "runs/campaign-cooldown"
RESULTS = ROOT / "benchmarks/results/hn-campaign"


def copy_state(src: Path, dst: Path, tries: int = 10) -> dict:
    """Copy the three state files of ``src`` to ``dst`` until the copy is consistent (the campaign
    rewrites them after every epoch); return its ``state.json``."""
    from delineo.training.campaign import STATE, check_state

    for _ in range(tries):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        if not check_state(dst):
            return json.loads((dst / STATE).read_text())
        time.sleep(3)
    sys.exit(f"{src}: no consistent copy in {tries} tries ({'; '.join(check_state(dst))})")


def branch_config(base: dict, folder: Path, start_cpu_hours: float, cooldown_cpu_hours: float, epoch: int) -> dict:
    """The campaign's config with the branch's schedule and paths (see the module docstring)."""
    cfg = json.loads(json.dumps(base))  # a deep copy
    camp = cfg["training"]["campaign"]
    if start_cpu_hours < float(camp.get("warmup_cpu_hours", 0.1)):
        sys.exit(f"the campaign is still warming up ({start_cpu_hours:.2f} CPU-hours): nothing to cool down")
    rel = os.path.relpath(folder, ROOT)
    camp.update(constant_until_cpu_hours=start_cpu_hours, cpu_hours=start_cpu_hours + cooldown_cpu_hours,
                state=f"{rel}/state", results=f"{rel}/results")
    cfg["name"] = f"hn-ct-cooldown-{epoch}"
    cfg["output"], cfg["work_dir"] = f"{rel}/model", f"{rel}/work"
    cfg["description"] = (f"{base.get('description', '').strip()} Cooldown branch: from the campaign's epoch {epoch} "
                          f"({start_cpu_hours:.2f} CPU-hours), learning rate decayed ({camp.get('decay', 'linear')}) to zero over {cooldown_cpu_hours} CPU-hours.")
    return cfg


def _validations(doc: dict, since_epoch: int = 0) -> list[dict]:
    """The validated epochs after ``since_epoch`` of a state.json (the campaign's validation points,
    rounded for the tables)."""
    from delineo.training.campaign import validation_points

    return [{**p, "cpu_hours": round(p["cpu_hours"], 3), "mean_dice": round(p["mean_dice"], 4),
             "dice": {n: round(v, 4) for n, v in p["dice"].items()}}
            for p in validation_points(doc["state"], doc["config"]["data"].get("structures"), since_epoch=since_epoch)]


def summarize(folder: Path, campaign_state: Path) -> dict:
    """One branch's record: where it started, its decay, its machine, its validations, and the
    campaign's own validations from the branch's start to its end (and the campaign's best before)."""
    doc = json.loads((folder / "state/state.json").read_text())
    camp = json.loads((campaign_state / "state.json").read_text())
    spec = doc["config"]["training"]["campaign"]
    # the branch began after the last epoch within the copy's CPU-hours (history: rounded to ms); its segments (more than
    # one if it was stopped and resumed) are those from there on
    start_epoch = max((h["epoch"] for h in doc["state"]["history"] if h["cpu_seconds"] <= spec["constant_until_cpu_hours"] * 3600 + 0.002),
                      default=0)
    segs = [g for g in doc["state"]["segments"] if g["start_epoch"] >= start_epoch]
    seg = {**segs[0], "ended_utc": segs[-1].get("ended_utc"), "hardware": "; ".join(dict.fromkeys(g["hardware"] for g in segs)),
           "precision": "/".join(dict.fromkeys(str(g.get("precision")) for g in segs))}
    own = _validations(doc, start_epoch)
    end_epoch = own[-1]["epoch"] if own else start_epoch
    before = [v for v in _validations(camp) if v["epoch"] <= start_epoch]
    return {
        "run": doc["config"]["name"], "from_epoch": start_epoch, "from_cpu_hours": round(spec["constant_until_cpu_hours"], 3),
        "decay_cpu_hours": round(spec["cpu_hours"] - spec["constant_until_cpu_hours"], 3), "decay": spec.get("decay", "linear"),
        "peak_lr": doc["config"]["training"]["lr"], "hardware": seg["hardware"].replace("CPU: ", ""), "precision": seg.get("precision"),
        "started_utc": seg.get("started_utc"), "ended_utc": seg.get("ended_utc"), "commit": seg.get("commit"),
        "validations": own,
        "campaign_best_before": max(before, key=lambda v: v["mean_dice"]) if before else None,
        "campaign_same_span": [v for v in _validations(camp, start_epoch) if v["epoch"] <= end_epoch + 10],
    }


def write_summary(record: dict, results: Path | None = None) -> None:
    """Add (or replace) one branch's record in ``cooldowns.json`` and rewrite ``cooldowns.md``
    (in ``results``, default the campaign's results folder)."""
    results = results or RESULTS
    results.mkdir(parents=True, exist_ok=True)
    path = results / "cooldowns.json"
    records = [r for r in (json.loads(path.read_text()) if path.is_file() else []) if r["run"] != record["run"]] + [record]
    records.sort(key=lambda r: r["from_epoch"])
    path.write_text(json.dumps(records, indent=1) + "\n")
    lines = ["# Cooldown branches of the hn-ct campaign", "",
             "Each branch: a copy of the campaign's state at one epoch of its constant phase, its learning rate decayed",
             "linearly from the peak to zero over a few CPU-hours (`python benchmarks/campaign_cooldown.py --cpu-hours D`),",
             "validated on the model grid (33 OpenKBP validation cases, mean Dice of the 10 structures) like the campaign;",
             "beside it the campaign's own validations over the same span (constant learning rate) and its best before the branch.", "",
             "<!-- --8<-- [start:branches] -->"]
    for r in records:
        b = r["campaign_best_before"]
        lines += [f"**{r['run']}**: from epoch {r['from_epoch']} ({r['from_cpu_hours']:.2f} CPU-hours), "
                  f"{r['decay']} decay over {r['decay_cpu_hours']} CPU-hours.", "",
                  f"Machine: {r['hardware']}, {r['precision']}; {r['started_utc']} to {r['ended_utc']}; commit {r['commit']}.",
                  "" if b is None else f"The campaign's best before it: epoch {b['epoch']}, {b['mean_dice']:.4f}.", "",
                  "| run | epoch | CPU-hours | learning rate | mean Dice | " + " | ".join(r["validations"][0]["dice"]) + " |" if r["validations"] else "",
                  "|---|---|---|---|---|" + "---|" * (len(r["validations"][0]["dice"]) if r["validations"] else 0)]
        for who, vs in (("branch", r["validations"]), ("campaign", r["campaign_same_span"])):
            for v in vs:
                lines.append(f"| {who} | {v['epoch']} | {v['cpu_hours']:.2f} | {v['lr']:.2g} | **{v['mean_dice']:.4f}** | "
                             + " | ".join(f"{x:.3f}" for x in v["dice"].values()) + " |")
        lines.append("")
    lines.append("<!-- --8<-- [end:branches] -->")
    (results / "cooldowns.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-hours", type=float, help="length of the decay D, in CPU-hours")
    ap.add_argument("--summary-only", type=int, metavar="EPOCH", help="only rewrite the results of the branch from EPOCH")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", type=Path, default=CONFIG)
    a = ap.parse_args()
    base = yaml.safe_load(a.config.read_text())
    src = ROOT / base["training"]["campaign"]["state"]
    if a.summary_only is not None:
        write_summary(summarize(RUNS / f"epoch-{a.summary_only}", src))
        return
    if a.cpu_hours is None or a.cpu_hours <= 0:
        sys.exit("--cpu-hours must be given, > 0")
    staging = RUNS / "incoming"
    doc = copy_state(src, staging / "state")
    epoch, start = doc["state"]["epoch"], doc["state"].get("cpu_seconds", 0.0) / 3600
    folder = RUNS / f"epoch-{epoch}"
    if folder.exists():
        sys.exit(f"{folder} exists: a cooldown from epoch {epoch} was started already (remove it to start again)")
    staging.rename(folder)
    doc["state"]["best"], doc["state"]["best_epoch"] = -1.0, None  # the branch keeps the best of its own epochs
    (folder / "state/state.json").write_text(json.dumps(doc, indent=0) + "\n")
    cfg = branch_config(base, folder, start, a.cpu_hours, epoch)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"cooldown from epoch {epoch} ({start:.3f} CPU-hours) over {a.cpu_hours} CPU-hours: {folder}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    with (folder / "train.log").open("a") as log:
        rc = subprocess.run(["nice", "-n", "10", str(Path(sys.executable).parent / "delineo"), "train", "--config",
                             str(folder / "config.yaml"), "--threads", str(a.threads)], env=env, cwd=ROOT, stdout=log, stderr=log).returncode
    if rc:
        sys.exit(f"delineo train ended with {rc}: {folder / 'train.log'}")
    write_summary(summarize(folder, src))
    print(f"done: {folder / 'model'}; judge it with\n  python benchmarks/campaign_candidate.py --model {folder / 'model'} --state {folder / 'state'}")


if __name__ == "__main__":
    main()
