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

Nothing of the branch is committed but the figures it leads to (and the model, if it is bundled);
the campaign's own state and learning curve are never written by it.
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
                          f"({start_cpu_hours:.2f} CPU-hours), learning rate decayed linearly to zero over {cooldown_cpu_hours} CPU-hours.")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-hours", type=float, required=True, help="length of the decay D, in CPU-hours")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", type=Path, default=CONFIG)
    a = ap.parse_args()
    if a.cpu_hours <= 0:
        sys.exit("--cpu-hours must be > 0")
    base = yaml.safe_load(a.config.read_text())
    src = ROOT / base["training"]["campaign"]["state"]
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
    print(f"done: {folder / 'model'}; judge it with\n  python benchmarks/campaign_candidate.py --model {folder / 'model'} --state {folder / 'state'}")


if __name__ == "__main__":
    main()
