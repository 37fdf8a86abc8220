"""Commit the hn-ct campaign's state folder and learning curve (``make campaign-commit``).

The campaign may be saving while this runs (it rewrites its state after every epoch), so the
folder is staged, the *staged* files are checked to belong together (``state.json``'s checksums
of the two tensor files, :func:`delineo.training.campaign.check_state`), and staged again after a
few seconds if they do not. The commit message names the staged epoch and CPU-hours.

    python benchmarks/campaign_commit.py [--folder benchmarks/results/hn-campaign]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from delineo.training.campaign import STATE, check_state


def _staged(path: str) -> bytes:
    return subprocess.run(["git", "show", f":{path}"], capture_output=True, check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="benchmarks/results/hn-campaign")
    ap.add_argument("--tries", type=int, default=6)
    a = ap.parse_args()
    state = f"{a.folder}/state"
    for attempt in range(a.tries):
        if attempt:
            print("the campaign was saving: staging again in 5 s", file=sys.stderr)
            time.sleep(5)
        subprocess.run(["git", "add", a.folder], check=True)
        problems = check_state(state, lambda name: _staged(f"{state}/{name}"))
        if not problems:
            break
        print("\n".join(problems), file=sys.stderr)
    else:
        print(f"{state}: no consistent state after {a.tries} tries; nothing committed", file=sys.stderr)
        return 1
    s = json.loads(_staged(f"{state}/{STATE}"))["state"]
    msg = f"hn-ct campaign: state at epoch {s['epoch']}, {s.get('cpu_seconds', 0) / 3600:.2f} CPU-hours"
    return subprocess.run(["git", "commit", "-q", "-m", msg, "--", a.folder]).returncode


if __name__ == "__main__":
    sys.exit(main())
