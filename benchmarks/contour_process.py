"""Wall time of `delineo contour` as a whole process: start-up, imports, model load, contouring and
writing every output (masks, overview, summary), as a user or the planning system's script sees it.

    python benchmarks/contour_process.py ../shared/data/openkbp/validation/pt_201/ct.nii.gz \
        --model hn-ct --repeat 5 --out benchmarks/results/hn-ct/contour-process-cpu.json

Each run is a fresh process (`python -m delineo contour ...`, what the `delineo` script runs)
writing to a fresh folder; the median of ``--repeat`` runs after one warm-up (which fills the
page cache, as on a server that has contoured before) is reported, with the stage times the
process itself wrote in its summary.json. Extra arguments after ``--`` go to `delineo contour`
(e.g. ``-- --fp32``). The load average before each run is recorded: other jobs on the machine
slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(input_path: Path, model: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "delineo", "contour", str(input_path), "--model", model, "--out", str(out), *extra]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"delineo contour failed ({proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        return {"wall_s": round(wall, 3), "load_before": round(load, 2), "stages_s": summary.get("seconds", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="CT (NIfTI file or DICOM folder/zip) to contour.")
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, help="Write the report as JSON here.")
    ap.add_argument("--note", default="", help="What else ran on the machine, for the report.")
    # what follows "--" goes to delineo contour (split here: argparse gives nothing after the input positional to a
    # second one once an option came between them)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]

    import torch

    from delineo.machine import cpu_name

    load_start = os.getloadavg()[0]
    run_once(args.input, args.model, args.extra)  # warm-up
    runs = [run_once(args.input, args.model, args.extra) for _ in range(args.repeat)]
    walls = [r["wall_s"] for r in runs]
    report = {
        "command": "python benchmarks/contour_process.py " + shlex.join(sys.argv[1:]),
        "input": str(args.input),
        "model": args.model,
        "contour_args": args.extra,
        "repeat": args.repeat,
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_max": max(walls),
        "runs": runs,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "note": args.note,
                    "load_1min_start": round(load_start, 2)},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
