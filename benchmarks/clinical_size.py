"""`delineo contour` on clinical-size planning CTs (512 x 512 pixels, 160 and 300 slices), issue 34.

    python benchmarks/clinical_size.py --out benchmarks/results/clinical-size [--repeats 5] \
        [--case $DELINEO_DATA/openkbp/validation/pt_201/ct.nii.gz] [--slices 160 300] [--formats dicom nifti]

A development case (OpenKBP, 128^3 at 5.4 x 5.4 x 3 mm) is resampled (trilinear, same field of
view) to 512 x 512 pixels in-plane and N slices, and written once as a DICOM CT series and as
NIfTI into ``--work`` (default: a folder under the system's temp dir; never into the repository).
Each input is contoured ``--repeats`` times by `delineo contour` as a whole, fresh process, after
one warm-up run (page cache filled, as on a server that has contoured before). Per run: the wall
time, the stage times the process wrote into its summary.json, the child's peak RSS
(``os.wait4``'s rusage: ``ru_maxrss``), its user and system CPU time, and the load average before
and after. The median of the runs is reported.

The machine and its load are in the results: timings taken while other jobs run on the machine
are upper bounds of what the same machine does idle.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def resampled_ct(case: Path, slices: int, pixels: int = 512):
    """The case resampled to ``pixels`` x ``pixels`` x ``slices`` over the same field of view."""
    import torch

    from delineo.data.io import Image, read_image
    from delineo.data.transforms import resample

    image = read_image(case)
    old = np.array(image.shape, float)
    new = np.array([pixels, pixels, slices], float)
    arr = resample(torch.as_tensor(np.asarray(image.array, np.float32))[None], [int(v) for v in new], "linear")[0].numpy()
    scale = old / new  # old voxels per new voxel
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] * scale[None, :]
    # voxel centres as cells (align_corners=False): new voxel 0 sits at old coordinate 0.5 * scale - 0.5
    affine[:3, 3] = (image.affine @ np.append(0.5 * scale - 0.5, 1.0))[:3]
    return Image(np.rint(arr).astype(np.int16), affine)


def make_inputs(case: Path, slices: int, work: Path, formats: list[str]) -> dict[str, Path]:
    from delineo.data.io import write_image
    from delineo.dicom.write_ct import write_ct_series

    folder = work / f"512x512x{slices}"
    paths = {"dicom": folder / "dicom", "nifti": folder / "ct.nii.gz"}
    marker = folder / "made.json"
    if marker.exists() and json.loads(marker.read_text()).get("case") == str(case):
        return {f: paths[f] for f in formats}
    image = resampled_ct(case, slices)
    write_image(paths["nifti"], image)
    write_ct_series(image, paths["dicom"], series_description=f"resampled {case.parent.name} 512x512x{slices}")
    marker.write_text(json.dumps({"case": str(case), "shape": list(image.shape),
                                  "spacing_mm": [round(float(s), 4) for s in image.spacing_mm]}) + "\n")
    return {f: paths[f] for f in formats}


def run_once(input_path: Path, model: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="delineo-clinical-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "delineo", "contour", str(input_path), "--model", model, "--out", str(out), *extra]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the child's own rusage (peak RSS), not the maximum over every child so far
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            sys.exit(f"delineo contour failed ({code}): {stderr[-2000:]}{stdout[-500:]}")
        summary = json.loads((out / "summary.json").read_text())
        return {
            "wall_s": round(wall, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
            "user_s": round(usage.ru_utime, 2),
            "sys_s": round(usage.ru_stime, 2),
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
            "stages_s": summary.get("seconds", {}),
        }


def summarise(runs: list[dict]) -> dict:
    stages = sorted({k for r in runs for k in r["stages_s"]}, key=lambda k: list(runs[0]["stages_s"]).index(k)
                    if k in runs[0]["stages_s"] else 99)
    return {
        "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
        "wall_s_min": min(r["wall_s"] for r in runs),
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
        "stages_s_median": {k: round(statistics.median(r["stages_s"].get(k, 0.0) for r in runs), 2) for k in stages},
        "load_1min_before_median": round(statistics.median(r["load_before"][0] for r in runs), 2),
    }


def markdown(report: dict) -> str:
    lines = [
        "# `delineo contour` on clinical-size CTs (512 x 512)",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {report['machine']['hardware']} (python {report['machine']['python']}, torch {report['machine']['torch']})  ",
        f"Model: `{report['model']}`; input: `{report['case']}` resampled (trilinear, same field of view).",
        "",
        f"**Load:** {report['load_note']}",
        "",
        "| CT | input | wall s (median of %d) | peak RSS MB | stages (s, median) | load 1 min before |" % report["repeats"],
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        s = row["summary"]
        stages = " · ".join(f"{k} {v}" for k, v in s["stages_s_median"].items())
        lines.append(f"| {row['shape']} @ {row['spacing_mm']} mm | {row['format']} | **{s['wall_s_median']}** (min {s['wall_s_min']}) "
                     f"| {s['peak_rss_mb_median']} | {stages} | {s['load_1min_before_median']} |")
    lines += ["", "Every run (wall, peak RSS, CPU time, load before/after, stages) is in `results.json`.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("DELINEO_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--case", type=Path, default=data / "openkbp" / "validation" / "pt_201" / "ct.nii.gz")
    ap.add_argument("--slices", type=int, nargs="+", default=[160, 300])
    ap.add_argument("--formats", nargs="+", default=["dicom", "nifti"], choices=["dicom", "nifti"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="Runs before the timed ones (not reported).")
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "delineo-clinical-size",
                    help="Where the resampled CTs are written (kept for later runs).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/clinical-size"))
    ap.add_argument("--note", default="", help="What else ran on the machine, for the report.")
    ap.add_argument("extra", nargs="*", help="Arguments for delineo contour (after --).")
    args = ap.parse_args()

    import torch

    from delineo.machine import hardware_description

    load_start = os.getloadavg()
    results = []
    for slices in args.slices:
        inputs = make_inputs(args.case.resolve(), slices, args.work, args.formats)
        made = json.loads((args.work / f"512x512x{slices}" / "made.json").read_text())
        for fmt, path in inputs.items():
            for _ in range(args.warmup):
                run_once(path, args.model, args.extra)
            runs = [run_once(path, args.model, args.extra) for _ in range(args.repeats)]
            row = {"shape": "x".join(map(str, made["shape"])), "spacing_mm": " x ".join(str(round(s, 2)) for s in made["spacing_mm"]),
                   "format": fmt, "summary": summarise(runs), "runs": runs}
            print(json.dumps({k: row[k] for k in ("shape", "format", "summary")}), flush=True)
            results.append(row)
    load_end = os.getloadavg()
    note = (f"load average (1, 5, 15 min) {', '.join(f'{v:.2f}' for v in load_start)} at the start and "
            f"{', '.join(f'{v:.2f}' for v in load_end)} at the end, on {os.cpu_count()} cores. "
            + (args.note or "") + " Timings taken under load are upper bounds of the same machine idle.")
    report = {
        "command": "python benchmarks/clinical_size.py " + " ".join(sys.argv[1:]),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "case": str(args.case),
        "model": args.model,
        "contour_args": args.extra,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "machine": {"hardware": hardware_description(torch.device("cpu")), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "load": {"start": list(load_start), "end": list(load_end)},
        "load_note": note.strip(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
