"""Web service commands: serve, worker, stress (thin shells over :mod:`delineo.service`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from delineo.cli.app import app
from delineo.errors import ConfigError


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    home: Optional[Path] = typer.Option(None, "--home", help="Data directory (default: DELINEO_HOME or ./var)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Job threads in this process (embedded queue)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    dicom_port: Optional[int] = typer.Option(None, "--dicom-port", help="Also run the DICOM node on this port (AE title DELINEO)."),
    dicom_forward: Optional[str] = typer.Option(None, "--dicom-forward", help="The node sends contours to AE@HOST:PORT."),
    dicom_allowed_ae: Optional[List[str]] = typer.Option(
        None, "--dicom-allowed-ae", help="Calling AE title allowed to send CT to the node (repeat; '*' any). "
        "Required unless the service listens on the loopback address only."),
    dicom_model: Optional[str] = typer.Option(None, "--dicom-model", help="Model the node contours with (default: the bundled CT model)."),
    dicom_idle_seconds: float = typer.Option(10.0, "--dicom-idle-seconds", help="A series is complete after this many seconds without a new image."),
) -> None:
    """Run the web service (API, web page, and with the embedded queue also the contouring jobs);
    with --dicom-port also the DICOM node (results under DATA/dicom-node/done, or forwarded)."""
    import uvicorn

    from delineo.service.api import create_app  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast
    from delineo.service.config import Settings  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast

    loopback = host in ("127.0.0.1", "localhost", "::1")
    if dicom_port is not None and not dicom_allowed_ae and not loopback:
        raise ConfigError(f"the DICOM node listens on {host}: name the calling AE titles allowed to send CT with "
                          "--dicom-allowed-ae SCANNER [--dicom-allowed-ae TPS ...] ('*' for any)")
    allowed = None if not dicom_allowed_ae or "*" in dicom_allowed_ae else dicom_allowed_ae
    destination = None
    if dicom_forward:
        from delineo.dicom.node import parse_destination  # lazy: loads pydicom, pynetdicom; keeps `delineo --help` fast

        destination = parse_destination(dicom_forward)
    overrides = {}
    if home is not None:
        overrides["home"] = home
    if workers is not None:
        overrides["workers"] = workers
    settings = Settings.from_env(**overrides)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"delineo: web service at http://{shown}:{port}/  (data in {settings.home}, "
               f"queue {'embedded' if settings.embedded_queue else settings.queue}, API docs at /api/docs)")
    node = audit_db = None
    if dicom_port is not None:
        from delineo.dicom.node import DicomNode, NodeConfig  # lazy: loads pydicom, pynetdicom; keeps `delineo --help` fast
        from delineo.service.audit import node_recorder  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast
        from delineo.service.db import Database  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast

        audit_db = Database(settings.database_url)  # the node's receive/contour/forward/refuse rows in the access log
        node = DicomNode(NodeConfig(storage=Path(settings.home) / "dicom-node", port=dicom_port, host=host,
                                    allowed_ae=allowed, forward=destination,
                                    idle_seconds=dicom_idle_seconds, model=dicom_model),
                         on_event=node_recorder(audit_db, home=settings.home)).start()
        typer.echo(f"delineo: DICOM node DELINEO on {shown}:{dicom_port}, accepting CT from "
                   f"{', '.join(allowed) if allowed else 'any AE title' + (' (loopback only)' if loopback else '')} "
                   f"(contours {'sent to ' + dicom_forward if dicom_forward else 'kept in ' + str(Path(settings.home) / 'dicom-node' / 'done')})")
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, timeout_keep_alive=10)
    finally:
        if node is not None:
            node.stop()
            audit_db.dispose()


@app.command()
def worker(
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="Consumer threads (default DELINEO_WORKERS or 1)."),
) -> None:
    """Take contouring jobs from the Redis queue (DELINEO_QUEUE=redis://...) until stopped.
    Needs the server's DELINEO_DATABASE_URL and the same DELINEO_HOME (shared folder)."""
    from delineo.service.config import Settings  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast
    from delineo.service.core import ServiceContext  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast
    from huey.consumer import Consumer

    settings = Settings.from_env()
    if settings.embedded_queue:
        raise ConfigError("delineo worker takes jobs from Redis: set DELINEO_QUEUE=redis://host:6379/0 "
                          "(with the embedded queue the server runs its jobs itself)")
    ctx = ServiceContext(settings)
    ctx.start(consumer=False, admin=False, reaper=True)
    typer.echo(f"delineo worker: queue {settings.queue_name!r} on {settings.queue}, data in {settings.home}", err=True)
    try:
        Consumer(ctx.queue.huey, workers=workers or settings.workers, worker_type="thread", periodic=False,
                 initial_delay=0.1, max_delay=1.0).run()
    finally:
        ctx.stop()


@app.command()
def stress(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Server to drive (loopback addresses only)."),
    users: int = typer.Option(20, "--users", "-u", help="Concurrent users (1-100)."),
    studies: int = typer.Option(2, "--studies", "-s", help="Studies each user uploads and contours (1-50)."),
    admin_user: str = typer.Option("admin", "--admin-user", help="Administrator who creates the test users."),
    admin_password: Optional[str] = typer.Option(None, "--admin-password", envvar="DELINEO_ADMIN_PASSWORD", help="Their password."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the server's first 3D model, else 2D)."),
    size: int = typer.Option(32, "--size", help="Edge of the synthetic CT cube in voxels (16-128)."),
    dicom: bool = typer.Option(False, "--dicom", help="Upload each CT as a zip of a DICOM series (one file per slice), not NIfTI."),
    ct_dir: Optional[Path] = typer.Option(None, "--ct-dir", help="Upload real CTs read from CT_DIR/<case>/ct.nii.gz "
                                          "(e.g. the OpenKBP validation set) instead of synthetic ones."),
    inputs: int = typer.Option(8, "--inputs", help="Distinct CTs the uploads cycle through."),
    max_seconds: float = typer.Option(600.0, "--max-seconds", help="Stop waiting after this long."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report as JSON (and Markdown beside it)."),
    machine: str = typer.Option("", "--machine", help="The machine, for the report (cores, memory, what else ran)."),
    server_note: str = typer.Option("", "--server-note", help="How the server was run, for the report (database, queue, workers)."),
    worker_pid: Optional[list[int]] = typer.Option(None, "--worker-pid", help="A worker process on this machine whose peak "
                                                   "memory (VmHWM) goes into the report; repeat for each worker."),
) -> None:
    """Drive a running server with concurrent users uploading and contouring studies (synthetic,
    or real CTs with --ct-dir; NIfTI, or DICOM zips with --dicom); report throughput, p50/p95
    upload-to-result time, errors and lost studies."""
    import shlex
    import sys

    from delineo.service.stress import peak_rss_mb, run_stress, write_report  # lazy: loads FastAPI, SQLAlchemy, huey; keeps `delineo --help` fast

    report = run_stress(url, users=users, studies=studies, admin_user=admin_user, admin_password=admin_password,
                        model=model, size=size, max_seconds=max_seconds, progress=True, dicom=dicom, ct_dir=ct_dir,
                        inputs=inputs)
    if worker_pid:
        report["worker_peak_rss_mb"] = {str(pid): peak_rss_mb(pid) for pid in worker_pid}
        report["text"] += "; worker peak RSS " + ", ".join(f"{v} MB" for v in report["worker_peak_rss_mb"].values())
    typer.echo(report["text"])
    if out is not None:
        args, skip = [], False
        for a in sys.argv[2:]:  # the command for the report, without the password
            if skip or a.startswith("--admin-password"):
                skip = a == "--admin-password" and not skip
                continue
            args.append(shlex.quote(a))
        command = "delineo stress " + " ".join(args)
        write_report(report, out, machine=machine, server=server_note, command=command)
        typer.echo(f"report: {out} and {out.with_suffix('.md')}")
    if report["lost_studies"] or report["unexpected_errors"]:
        raise typer.Exit(1)
