"""The web path at clinical size (issue 34): a 512 x 512 DICOM CT uploaded as a zip -> its contours
ready in the viewer.

    python benchmarks/web_clinical_size.py --series /tmp/delineo-clinical-size/512x512x160/dicom \
        --out benchmarks/results/web-clinical-size [--repeats 3] [--model hn-ct]

A fresh ``delineo serve`` (SQLite, its embedded queue with one job thread, in a temporary home)
is started as a separate process; per run a user signs in, uploads the series as one zip
(``POST /api/studies``), starts a job (``POST /api/studies/{id}/jobs``), polls it every 0.1 s
(``GET /api/jobs/{id}``) and, once done, downloads what the viewer loads before it draws: the CT
(``GET .../volume/ct.nii.gz``, the DICOM series converted once for viewing) and every structure's
mask (``GET .../masks/<roi>.nii.gz``). Timed: upload, job (queued to done), viewer data, and the
total from the start of the upload to the last byte. The browser's own part (WebGL start and the
first draw, about a second on a software renderer; ``docs/viewer.md``) is not in these figures.
The machine and its load are recorded; timings under load are upper bounds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def series_zip(folder: Path) -> bytes:
    """The series' files in one zip (stored: DICOM pixel data hardly compresses), as a scanner export arrives."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                z.write(f, f"CT/{f.name}")
    return buf.getvalue()


def run_once(base: str, password: str, data: bytes, model: str) -> dict:
    import httpx

    with httpx.Client(base_url=base, timeout=600) as c:
        r = c.post("/api/auth/login", json={"username": "admin", "password": password})
        r.raise_for_status()
        t0 = time.perf_counter()
        r = c.post("/api/studies", files=[("files", ("ct.zip", data, "application/zip"))])
        r.raise_for_status()
        study = r.json()["id"]
        t_up = time.perf_counter()
        r = c.post(f"/api/studies/{study}/jobs", json={"model": model})
        r.raise_for_status()
        job_id = r.json()["id"]
        while True:
            job = c.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        if job["state"] != "done":
            sys.exit(f"job failed: {job}")
        t_job = time.perf_counter()
        c.get(f"/api/studies/{study}/volume/ct.nii.gz").raise_for_status()
        names = [s["name"] for s in c.get(f"/api/studies/{study}").json()["structures"]]
        for name in names:
            c.get(f"/api/studies/{study}/masks/{name}.nii.gz").raise_for_status()
        t_view = time.perf_counter()
        return {"upload_s": round(t_up - t0, 3), "job_s": round(t_job - t_up, 3), "viewer_data_s": round(t_view - t_job, 3),
                "total_s": round(t_view - t0, 3), "masks": len(names), "zip_mb": round(len(data) / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, required=True, help="A DICOM CT series folder (clinical_size.py writes one).")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/web-clinical-size"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    import torch

    from delineo.machine import hardware_description

    data = series_zip(args.series)
    port, password = _free_port(), secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="delineo-web-bench-") as home:
        env = {**os.environ, "DELINEO_HOME": home, "DELINEO_ADMIN_PASSWORD": password, "DELINEO_WORKERS": "1",
               "DELINEO_DEVICE": "cpu"}
        server = subprocess.Popen([sys.executable, "-m", "delineo", "serve", "--port", str(port), "--log-level", "warning"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(Path(home) / "serve.log", "w"))
        try:
            import httpx

            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    sys.exit((Path(home) / "serve.log").read_text()[-3000:])
                time.sleep(0.5)
            load_before = os.getloadavg()
            run_once(base, password, data, args.model)  # warm-up: the model loaded, pages cached (not reported)
            runs = [run_once(base, password, data, args.model) for _ in range(args.repeats)]
            load_after = os.getloadavg()
        finally:
            server.terminate()
            server.wait(timeout=60)
    made = args.series.parent / "made.json"
    shape = json.loads(made.read_text())["shape"] if made.is_file() else None
    median = {k: round(statistics.median(r[k] for r in runs), 2) for k in ("upload_s", "job_s", "viewer_data_s", "total_s")}
    report = {"command": f"python benchmarks/web_clinical_size.py --series {args.series} --out {args.out} --repeats {args.repeats} --model {args.model}",
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": hardware_description(torch.device("cpu")),
              "series_shape": shape, "model": args.model, "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in load_after], "note": args.note, "runs": runs, "median": median}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = "\n".join(f"| {i + 1} | {r['upload_s']} | {r['job_s']} | {r['viewer_data_s']} | **{r['total_s']}** |" for i, r in enumerate(runs))
    (args.out / "README.md").write_text(
        f"# Web: a 512 x 512 DICOM zip uploaded -> contours ready in the viewer\n\nCommand: `{report['command']}`  \n"
        f"Date: {report['date']}  \nMachine: {report['machine']}; load average {report['load_average_before']} before, "
        f"{report['load_average_after']} after (timings under load are upper bounds).  \nCT: {shape} voxels, a {runs[0]['zip_mb']} MB zip; "
        f"model `{args.model}`; `delineo serve` with SQLite and its embedded queue (one job thread). {args.note}\n\n"
        f"| run | upload s | job s (queued to done) | viewer data s (CT + {runs[0]['masks']} masks) | total s |\n|---|---|---|---|---|\n{rows}\n"
        f"| median | {median['upload_s']} | {median['job_s']} | {median['viewer_data_s']} | **{median['total_s']}** |\n\n"
        "Not included: the browser's WebGL start and first draw (docs/viewer.md).\n")
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
