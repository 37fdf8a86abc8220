"""DICOM commands: import-dicom, dicom-node (contour accepts DICOM input directly)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from delineo.cli.app import app
from delineo.errors import ConfigError


@app.command("dicom-node")
def dicom_node(
    port: int = typer.Option(11112, "--port", help="TCP port to listen on."),
    ae_title: str = typer.Option("DELINEO", "--ae-title", help="This node's AE title."),
    forward: Optional[str] = typer.Option(None, "--forward", help="Where contours go: AE@HOST:PORT (e.g. the planning system)."),
    allowed_ae: Optional[List[str]] = typer.Option(None, "--allowed-ae", help="Calling AE title allowed to send CT (repeat); '*' accepts any (not recommended)."),
    storage: Path = typer.Option(Path("var/dicom-node"), "--storage", help="Folder for received series, results and the outbox."),
    idle_seconds: float = typer.Option(10.0, "--idle-seconds", help="A series is complete after this many seconds without a new image."),
    settle_seconds: float = typer.Option(2.0, "--settle-seconds", help="Sooner: a series whose association is released and whose "
                                         "images form a complete, evenly spaced stack is complete after this many seconds without "
                                         "another association for it (at once when the images carry ImagesInAcquisition); a "
                                         "negative value turns this off (--idle-seconds alone)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the bundled CT model)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    no_seg: bool = typer.Option(False, "--no-seg", help="Send only the RT Structure Set, not the DICOM SEG."),
    status: bool = typer.Option(False, "--status", help="Print what the node's storage holds (results waiting or undeliverable, "
                                "incomplete and failed series) and exit; exit status 1 when results are undeliverable."),
) -> None:
    """Receive CT series by C-STORE, contour each one, send the RT Structure Set (and SEG) on."""
    from delineo.dicom.node import DicomNode, NodeConfig, format_status, node_status, parse_destination  # lazy: loads pydicom, pynetdicom; keeps `delineo --help` fast

    if status:
        report = node_status(storage)
        typer.echo(format_status(report))
        raise typer.Exit(1 if report.get("undeliverable") else 0)
    if not allowed_ae:
        raise ConfigError("give the calling AE titles allowed to send CT: --allowed-ae SCANNER [--allowed-ae TPS ...] ('*' for any)")
    destination = parse_destination(forward) if forward else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = NodeConfig(
        storage=storage, port=port, ae_title=ae_title, host=host, allowed_ae=None if "*" in allowed_ae else allowed_ae,
        forward=destination, idle_seconds=idle_seconds, settle_seconds=settle_seconds if settle_seconds >= 0 else None, model=model,
        device=device, send_seg=not no_seg,
    )
    typer.echo(f"DICOM node {ae_title} on {host}:{port}; storage {storage}; accepting CT from {', '.join(allowed_ae)}; "
               f"forwarding to {forward or 'nowhere (results stay in storage/done)'}")
    DicomNode(cfg).serve_forever()


@app.command("import-dicom")
def import_dicom(
    src: Path = typer.Argument(..., help="Folder of a clinic's export: CT series and RT Structure Sets, any layout."),
    dest: Path = typer.Argument(..., help="Case-folder dataset to write: DEST/<case>/ct.nii.gz + segmentations/<ROI>.nii.gz."),
    roi_map: Optional[Path] = typer.Option(None, "--roi-map", help="YAML mapping of ROI names, e.g. 'PTV_7000: PTV70'; unmapped ROIs are skipped."),
    merge_rois: bool = typer.Option(False, "--merge-rois", help="Two ROIs of one structure set mapped to one name: write their union (default: refuse that structure, naming both)."),
) -> None:
    """Turn CT series + RT Structure Sets into a training dataset (one case per structure set)."""
    from delineo.dicom.importer import import_dicom as run_import, summary_line  # lazy: loads pydicom, torch; keeps `delineo --help` fast

    report = run_import(src, dest, roi_map=roi_map, merge=merge_rois)
    for case in report["cases"]:
        typer.echo(f"  {summary_line(case)}")
    for skipped in report["skipped"]:
        typer.echo(f"  skipped {skipped['reason']}")
    if report["unmapped_rois"]:
        typer.echo(f"ROI names without a mapping (not imported): {', '.join(sorted(report['unmapped_rois']))}")
    typer.echo(f"{len(report['cases'])} cases written to {dest}")
