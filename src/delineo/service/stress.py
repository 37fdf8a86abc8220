"""``delineo stress``: concurrent users over HTTP, each uploading studies, contouring them and
downloading the results; bounded in count and time, loopback servers only.

The studies are synthetic CTs (``size``^3 HU volumes, :mod:`delineo.service.synthetic`) or real
CTs read at run time from a folder of cases (``ct_dir/<case>/ct.nii.gz``, e.g. the OpenKBP
validation set; nothing is copied anywhere but the server under test), uploaded as NIfTI or, with
``dicom=True``, as a zip of a DICOM CT series (:func:`delineo.dicom.write_ct.write_ct_series`),
as a scanner export arrives."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import platform
import secrets
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from delineo.errors import InputError

MAX_USERS, MAX_STUDIES = 100, 50


def check_loopback(url: str) -> None:
    """Refuse any server that is not on this machine's loopback interface."""
    host = urlparse(url).hostname
    if not host:
        raise InputError(None, f"--url {url!r} has no host name")
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise InputError(None, f"--url: cannot resolve {host!r}") from None
    for a in addrs:
        if not ipaddress.ip_address(a.split("%")[0]).is_loopback:
            raise InputError(None, f"--url {url}: stress tests only run against this machine (loopback), not {a}")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _png_bytes(size: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.clip(40 + rng.normal(0, 8, (size, size)), 0, 255)
    yy, xx = np.indices((size, size))
    img[((yy - size * 0.5) ** 2 + (xx - size * 0.3) ** 2) < (size * 0.18) ** 2] = 200
    img[((yy - size * 0.5) ** 2 + (xx - size * 0.7) ** 2) < (size * 0.18) ** 2] = 200
    buf = io.BytesIO()
    Image.fromarray(img.astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def _dicom_zip(image, seed: int) -> bytes:
    """``image`` (HU) as a zip of a DICOM CT series, one file per slice."""
    import tempfile
    import zipfile

    from delineo.dicom.write_ct import write_ct_series

    with tempfile.TemporaryDirectory(prefix="delineo-stress-") as tmp:
        paths = write_ct_series(image, Path(tmp) / "ct", patient_name="Stress^Test", patient_id=f"STRESS{seed:03d}",
                                series_description="delineo stress")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for path in paths:
                zf.write(path, f"ct/{path.name}")
    return buf.getvalue()


def study_inputs(n: int, *, size: int = 32, dicom: bool = False, ct_dir: str | Path | None = None) -> tuple[list[tuple[str, bytes]], str]:
    """``n`` distinct 3D studies to upload, as (file name, bytes), and a description of them."""
    import nibabel as nib
    import numpy as np

    from delineo.data.io import Image
    from delineo.service.synthetic import synthetic_nifti_bytes, synthetic_volume

    out: list[tuple[str, bytes]] = []
    if ct_dir is not None:
        cases = sorted(p for p in Path(ct_dir).iterdir() if (p / "ct.nii.gz").is_file()) if Path(ct_dir).is_dir() else []
        if not cases:
            raise InputError(None, f"--ct-dir {ct_dir}: no <case>/ct.nii.gz under it")
        shapes = set()
        for i, case in enumerate(cases[:n]):
            nii = nib.load(case / "ct.nii.gz")
            shapes.add("x".join(map(str, nii.shape)))
            if dicom:
                out.append((f"stress{i}.zip", _dicom_zip(Image(np.asarray(nii.dataobj, dtype=np.float32), nii.affine), i)))
            else:
                out.append((f"stress{i}.nii.gz", (case / "ct.nii.gz").read_bytes()))
        what = f"{len(out)} real CTs from {Path(ct_dir).name}/ ({', '.join(sorted(shapes))} voxels)"
    else:
        for i in range(n):
            if dicom:
                ct, _, affine = synthetic_volume(size, seed=i)
                out.append((f"stress{i}.zip", _dicom_zip(Image(ct.astype(np.float32), affine), i)))
            else:
                out.append((f"stress{i}.nii.gz", synthetic_nifti_bytes(size, seed=i)))
        what = f"{n} synthetic {size}^3 CTs"
    mb = sum(len(b) for _, b in out) / len(out) / 2**20
    return out, f"{what}, uploaded as {'DICOM zips (one file per slice)' if dicom else 'NIfTI'}, {mb:.1f} MB each on average"


def run_stress(url: str, *, users: int = 20, studies: int = 2, admin_user: str = "admin", admin_password: str | None = None,
               model: str | None = None, size: int = 32, max_seconds: float = 600.0, poll_s: float = 0.5,
               progress: bool = False, dicom: bool = False, ct_dir: str | Path | None = None,
               inputs: int = 8) -> dict[str, Any]:
    check_loopback(url)
    if not 1 <= users <= MAX_USERS:
        raise InputError(None, f"--users must be 1-{MAX_USERS}")
    if not 1 <= studies <= MAX_STUDIES:
        raise InputError(None, f"--studies must be 1-{MAX_STUDIES}")
    if not 16 <= size <= 128:
        raise InputError(None, "--size must be 16-128")
    if not admin_password:
        raise InputError(None, "give the administrator's password (--admin-password or DELINEO_ADMIN_PASSWORD) to create the test users")
    max_seconds = min(max_seconds, 3600.0)
    from delineo.progress import Steps

    source = {"size": size, "dicom": dicom, "ct_dir": ct_dir, "inputs": max(1, min(inputs, users * studies))}
    steps = Steps(users * studies, "stress", unit="study") if progress else None
    try:
        return asyncio.run(_run(url.rstrip("/"), users, studies, admin_user, admin_password, model, source, max_seconds, poll_s, steps))
    finally:
        if steps is not None:
            steps.close()


@dataclass
class _Stress:
    """What the concurrent users of one stress run share: the server, the model and inputs, the
    time limit (``deadline``, :func:`time.monotonic` seconds) and the tallies they add to."""

    url: str
    model: str
    payloads: list[tuple[str, bytes]]
    n_studies: int
    deadline: float
    poll_s: float
    steps: Any = None
    errors: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    records: list[dict[str, Any]] = field(default_factory=list)


async def _run(url, n_users, n_studies, admin_user, admin_password, model, source, max_seconds, poll_s, steps=None) -> dict[str, Any]:
    import httpx

    run = secrets.token_hex(3)
    limits = httpx.Limits(max_connections=n_users * 2 + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as admin:
        chosen = await _sign_in_and_choose_model(admin, url, admin_user, admin_password, model)
        payloads, input_text = await _make_inputs(chosen["spatial_dims"], source, n_studies)
        # the clock starts once the inputs are made
        st = _Stress(url, chosen["name"], payloads, n_studies, time.monotonic() + max_seconds, poll_s, steps)
        accounts = await _create_users(admin, run, n_users)
        t_start = time.monotonic()
        uploaded = await asyncio.gather(*(_one_user(st, i, n, p) for i, (n, p, _) in enumerate(accounts)))
        wall = time.monotonic() - t_start
        lost = await _count_lost_and_delete(st, accounts, uploaded)
        for _, _, uid in accounts:
            await admin.delete(f"/api/users/{uid}")
    return _stress_report(st, n_users, input_text, wall, lost, max_seconds)


async def _sign_in_and_choose_model(admin, url: str, admin_user: str, admin_password: str, model: str | None) -> dict[str, Any]:
    """Sign the ``admin`` client in and pick the model (the one named, else the first 3D one, else
    the first); refuse a server that lets neither happen."""
    r = await admin.post("/api/auth/login", json={"username": admin_user, "password": admin_password})
    if r.status_code != 200:
        raise InputError(None, f"cannot sign in as {admin_user!r} on {url}: {r.status_code} {r.text[:200]}")
    r = await admin.get("/api/models")
    if r.status_code != 200:
        raise InputError(None, f"cannot list models on {url}: {r.status_code} {r.text[:200]}")
    models = r.json()
    if not models:
        raise InputError(None, f"{url} offers no model")
    chosen = next((m for m in models if m["name"] == model), None) if model else (
        next((m for m in models if m["spatial_dims"] == 3), None) or models[0])
    if chosen is None:
        raise InputError(None, f"{url} has no model {model!r} (it has {', '.join(m['name'] for m in models)})")
    return chosen


async def _make_inputs(dims: int, source: dict[str, Any], n_studies: int) -> tuple[list[tuple[str, bytes]], str]:
    """The studies to upload, as (file name, bytes), and their description: CTs for a 3D model
    (:func:`study_inputs`, made off the event loop), else up to four synthetic PNGs."""
    if dims == 3:
        return await asyncio.to_thread(study_inputs, source["inputs"], size=source["size"],
                                       dicom=source["dicom"], ct_dir=source["ct_dir"])
    return [(f"stress{i}.png", _png_bytes(max(source["size"], 64), i)) for i in range(min(n_studies, 4))], "synthetic PNG"


async def _create_users(admin, run: str, n_users: int) -> list[tuple[str, str, Any]]:
    """``n_users`` new accounts named after the run: (name, password, user id)."""
    accounts = []
    for i in range(n_users):
        name, password = f"stress-{run}-{i:02d}", secrets.token_urlsafe(12)
        r = await admin.post("/api/users", json={"username": name, "password": password})
        if r.status_code != 201:
            raise InputError(None, f"cannot create user {name}: {r.status_code} {r.text[:200]}")
        accounts.append((name, password, r.json()["id"]))
    return accounts


async def _one_user(st: _Stress, index: int, name: str, password: str) -> list[str]:
    """One user's session: sign in, then its studies one after another; returns the ids of the
    studies the server accepted."""
    import httpx

    mine: list[str] = []
    async with httpx.AsyncClient(base_url=st.url, timeout=120.0) as c:
        r = await c.post("/api/auth/login", json={"username": name, "password": password})
        if r.status_code != 200:
            st.errors[f"login {r.status_code}"] += 1
            return mine
        for k in range(st.n_studies):
            if time.monotonic() > st.deadline:
                st.errors["not started (time limit)"] += 1
                continue
            fname, data = st.payloads[(index * st.n_studies + k) % len(st.payloads)]
            await _one_study(st, c, name, fname, data, mine)
    return mine


async def _one_study(st: _Stress, c, name: str, fname: str, data: bytes, mine: list[str]) -> None:
    """Upload one study, contour it, wait for the job and download its results, recording each
    step's time (seconds) in a new record of ``st.records``; an accepted study's id goes to ``mine``."""
    import httpx

    rec: dict[str, Any] = {"user": name, "state": "upload"}
    st.records.append(rec)
    t0 = time.monotonic()
    try:
        r = await c.post("/api/studies", files={"files": (fname, data, "application/octet-stream")})
        if r.status_code != 201:
            st.errors[f"upload {r.status_code}"] += 1
            return
        rec["upload_s"] = time.monotonic() - t0
        sid = rec["study"] = r.json()["id"]
        mine.append(sid)
        r = await c.post(f"/api/studies/{sid}/jobs", json={"model": st.model})
        if r.status_code != 202:
            st.errors[f"start job {r.status_code}"] += 1
            return
        rec["state"] = "queued"
        job = await _wait_for_job(st, c, r.json()["id"], rec)
        if rec["state"] == "failed":
            st.errors["job failed"] += 1
            rec["error"] = job.get("error")
            return
        if rec["state"] != "done":
            st.errors["job unfinished (time limit)"] += 1
            return
        r = await c.get(f"/api/studies/{sid}/results/summary")
        if r.status_code != 200 or "structures" not in r.json():
            st.errors[f"summary {r.status_code}"] += 1
            return
        r = await c.get(f"/api/studies/{sid}/results/nifti")
        if r.status_code != 200:
            st.errors[f"nifti zip {r.status_code}"] += 1
            return
        rec["result_s"] = time.monotonic() - t0
        rec["state"] = "result"
        rec["run_s"] = _job_seconds(job)
        # expected refusal (by design): another user's study is not visible
        r = await c.get(f"/api/studies/{'0' * 32}")
        st.expected[f"foreign/unknown study {r.status_code}"] += 1
    except httpx.HTTPError as exc:
        st.errors[f"http {exc.__class__.__name__}"] += 1
    finally:
        if st.steps is not None:  # one study finished, whichever way
            st.steps.step(f"{name} {rec['state']}")


async def _wait_for_job(st: _Stress, c, job_id: str, rec: dict[str, Any]) -> dict[str, Any] | None:
    """Poll the job every ``poll_s`` seconds until it is done or failed or the time is up, keeping
    ``rec["state"]`` current; returns the last job record read (None if none was)."""
    job = None
    while time.monotonic() < st.deadline:
        await asyncio.sleep(st.poll_s)
        r = await c.get(f"/api/jobs/{job_id}")
        if r.status_code != 200:
            st.errors[f"job status {r.status_code}"] += 1
            continue
        job = r.json()
        rec["state"] = job["state"]
        if job["state"] in ("done", "failed"):
            break
    return job


async def _count_lost_and_delete(st: _Stress, accounts: list[tuple[str, str, Any]], uploaded: list[list[str]]) -> int:
    """The studies accepted by the server but no longer listed (or listed without their job),
    then every user's studies deleted."""
    import httpx

    lost = 0
    for (name, password, _), mine in zip(accounts, uploaded):
        async with httpx.AsyncClient(base_url=st.url, timeout=60.0) as c:
            r = await c.post("/api/auth/login", json={"username": name, "password": password})
            r = await c.get("/api/studies")
            if r.status_code != 200:
                st.errors[f"final listing {r.status_code}"] += 1
                lost += len(mine)
                continue
            listed = {s["id"]: s for s in r.json()}
            for sid in mine:
                if sid not in listed or listed[sid]["latest_job"] is None:
                    lost += 1
            for sid in mine:
                await c.delete(f"/api/studies/{sid}")
    return lost


def _stress_report(st: _Stress, n_users: int, input_text: str, wall: float, lost: int, max_seconds: float) -> dict[str, Any]:
    """The report: completed studies, throughput, latency percentiles (seconds), errors and lost studies."""
    records, errors = st.records, st.errors
    done = [r for r in records if r.get("state") == "result"]
    lat = [r["result_s"] for r in done]
    up = [r["upload_s"] for r in records if "upload_s" in r]
    run_s = [r["run_s"] for r in done if r.get("run_s") is not None]
    total = n_users * st.n_studies
    unexpected = sum(errors.values())
    report = {
        "url": st.url,
        "users": n_users,
        "studies_per_user": st.n_studies,
        "studies_total": total,
        "model": st.model,
        "input": input_text,
        "completed": len(done),
        "wall_s": round(wall, 2),
        "throughput_studies_per_min": round(60 * len(done) / wall, 2) if wall > 0 else None,
        "upload_to_result_s": {"p50": _r(percentile(lat, 0.5)), "p95": _r(percentile(lat, 0.95)), "max": _r(max(lat) if lat else None)},
        "upload_s": {"p50": _r(percentile(up, 0.5)), "p95": _r(percentile(up, 0.95))},
        "job_run_s": {"p50": _r(percentile(run_s, 0.5)), "p95": _r(percentile(run_s, 0.95))},
        "errors": dict(errors),
        "unexpected_errors": unexpected,
        "expected_refusals": dict(st.expected),
        "lost_studies": lost,
        "failed_job_messages": sorted({r.get("error") or "" for r in records if r.get("state") == "failed"}),
        "max_seconds": max_seconds,
        "client": f"{platform.node()} python {platform.python_version()}",
    }
    report["text"] = (
        f"{len(done)}/{total} studies contoured by {n_users} concurrent users in {wall:.1f} s "
        f"({report['throughput_studies_per_min']} studies/min); upload->result p50 {report['upload_to_result_s']['p50']} s, "
        f"p95 {report['upload_to_result_s']['p95']} s; errors {unexpected} {dict(errors) or ''}; lost studies {lost}"
    )
    return report


def peak_rss_mb(pid: int) -> float | None:
    """A running process's peak resident memory so far (Linux ``VmHWM``), in MB; None when it cannot be read."""
    try:
        for line in Path(f"/proc/{int(pid)}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _job_seconds(job: dict[str, Any]) -> float | None:
    """How long the job ran on a worker (started to finished, the server's clock)."""
    from datetime import datetime

    try:
        return (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def write_report(report: dict[str, Any], out: Path, machine: str = "", server: str = "", command: str = "") -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in report.items() if k != "text"}
    for key, value in (("machine", machine), ("server", server), ("command", command)):
        if value:
            data[key] = value
    out.write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# delineo stress test",
        "",
        f"- server: `{report['url']}`; model `{report['model']}`; input: {report['input']}",
        f"- {report['users']} concurrent users x {report['studies_per_user']} studies = {report['studies_total']} studies",
        "",
        "| completed | wall s | studies/min | upload->result p50 s | p95 s | max s | upload p50 s | errors | lost |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {report['completed']}/{report['studies_total']} | {report['wall_s']} | {report['throughput_studies_per_min']} | "
        f"{report['upload_to_result_s']['p50']} | {report['upload_to_result_s']['p95']} | {report['upload_to_result_s']['max']} | "
        f"{report['upload_s']['p50']} | {report['unexpected_errors']} | {report['lost_studies']} |",
        "",
        "Upload->result: from the start of the upload to the downloaded result (queueing included).",
    ]
    if (report.get("job_run_s") or {}).get("p50") is not None:
        lines.append(f"A job's own run on a worker (started to finished): p50 {report['job_run_s']['p50']} s, "
                     f"p95 {report['job_run_s']['p95']} s.")
    if report.get("worker_peak_rss_mb"):
        lines.append("Peak memory (VmHWM) of each worker process over the run: "
                     + ", ".join(f"{v} MB" for v in report["worker_peak_rss_mb"].values()) + ".")
    lines += ["", f"Expected refusals (by design, not errors): {report['expected_refusals'] or 'none'}."]
    if report.get("errors"):
        lines += ["", f"Errors: {report['errors']}; failed jobs: {report.get('failed_job_messages') or 'none'}."]
    if machine:
        lines += ["", f"Machine: {machine}."]
    if server:
        lines += ["", f"Server: {server}."]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
