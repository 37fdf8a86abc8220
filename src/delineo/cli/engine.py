"""Engine commands: train, evaluate, contour, models, demo."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from delineo.cli.app import app
from delineo.errors import ConfigError, InputError
from delineo.settings import data_dir


def _structures(value: Optional[str]) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


OVERLAP_HELP = ("Sliding-window overlap, at least 0 and below 1 (default: the model's, 0.5; 0.25 runs fewer than half the windows, "
                "a little less accurate; no quality estimate unless the model's was fitted at it).")


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Training config (YAML)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Ignore an existing checkpoint."),
    budget_cpu_hours: Optional[float] = typer.Option(
        None, "--budget-cpu-hours", min=0.01,
        help="Stop once training has used this much CPU time (all threads, validation excluded); poly decays over it.",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads (training.threads of the config otherwise)."),
) -> None:
    """Train a model from a YAML config; writes the model folder named in the config. A campaign
    config (training.campaign) resumes from its tracked state: `make campaign`."""
    from delineo.api import train as run_train  # lazy: loads torch, MONAI; keeps `delineo --help` fast
    from delineo.training.config import TrainConfig  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    command = "delineo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    cfg = TrainConfig.from_yaml(config)
    if threads:
        cfg.training.threads = threads
    out = run_train(cfg, resume=not no_resume, command=command, budget_cpu_hours=budget_cpu_hours)
    if (out / "model.json").is_file():  # else the loop said why (a complete campaign, no validation yet here)
        typer.echo(f"model written to {out}")


@app.command()
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Bundled model name or model folder."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder (case folders or image folders)."),
    out: Path = typer.Option(Path("report.json"), "--out", "-o", help="Report JSON (a Dice box plot is written beside it)."),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Score another tool's saved contours instead of a model: <folder>/<case>/segmentations/<ROI>.nii.gz."
    ),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    cases: Optional[str] = typer.Option(None, "--cases", help="Comma-separated case ids (default: all)."),
    split: Optional[str] = typer.Option(
        None, "--split", help="'val': only the cases the model held out for validation (from its model.json)."
    ),
    tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", help="Surface Dice tolerance in mm."),
    model_card: bool = typer.Option(
        False, "--model-card", help="Record the result as the model's validation metrics in its model.json."
    ),
    bf16: Optional[bool] = typer.Option(
        None, "--bf16/--fp32", help="Network precision: bfloat16 autocast or float32 (default: bf16 on CUDA, and on a CPU with native bf16 for a model checked in bf16 (precision in its model.json), else fp32)."
    ),
    overlap: Optional[float] = typer.Option(None, "--overlap", help=OVERLAP_HELP),
) -> None:
    """Contour every case of a dataset and compare with its reference contours."""
    from delineo.api import evaluate as run_evaluate  # lazy: loads torch, MONAI; keeps `delineo --help` fast
    from delineo.models.registry import resolve_model  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    selected = _structures(cases)
    if (model is None) == (predictions is None):
        raise InputError(None, "give --model (run a model) or --predictions (score saved contours), one of the two")
    if predictions is not None and (split is not None or model_card):
        raise InputError(predictions, "--split and --model-card need a model (--model), not saved contours")
    if split is not None:
        if split != "val":
            raise InputError(None, f"--split must be 'val', got {split!r}")
        meta = json.loads((resolve_model(model) / "model.json").read_text())
        selected = meta.get("training", {}).get("data", {}).get("val_cases")
        if not selected:
            raise InputError(resolve_model(model) / "model.json", "records no validation cases (trained with a separate val folder?)")
    if predictions is not None and overlap is not None:
        raise InputError(predictions, "--overlap runs a model (--model); saved contours were made already")
    report = run_evaluate(model, data, out, device=device, cases=selected, tolerance_mm=tolerance_mm, bf16=bf16, predictions=predictions,
                          overlap=overlap)
    typer.echo(f"{'structure':<14}{'dice':>8}{'surf. 1 vox':>12}{'hd95 mm':>10}{'n':>5}")
    for name, m in [*report["structures"].items(), *report.get("unions", {}).items()]:
        cells = ["-" if m.get(k) is None else f"{m[k]:{f}}" for k, f in (("dice", ".4f"), ("surface_dice_voxel", ".4f"), ("hd95_mm", ".2f"))]
        typer.echo(f"{name:<14}{cells[0]:>8}{cells[1]:>12}{cells[2]:>10}{m['n']:>5}")
    oar = "" if report.get("organs_at_risk_mean") is None else f" (organs at risk {report['organs_at_risk_mean']:.4f})"
    typer.echo(f"mean Dice {report['mean_dice']:.4f}{oar}; {report['seconds_per_case']:.2f} s/case; report: {out}")
    if model_card:
        from delineo.machine import hardware_description, resolve_device  # lazy: imports torch, keeps `delineo --help` fast

        card = resolve_model(model) / "model.json"
        meta = json.loads(card.read_text())
        meta["validation"] = {
            **meta.get("validation", {}),
            "evaluated": {
                "command": "delineo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                "cases": "validation split held out from training" if split == "val" else str(data),
                "hardware": hardware_description(resolve_device(device)),
                "mean_dice": report["mean_dice"],
                "organs_at_risk_mean": report.get("organs_at_risk_mean"),
                "structures": report["structures"],
                "unions": report.get("unions", {}),
                "seconds_per_case": round(report["seconds_per_case"], 3),
                "precision": report["precision"],
            },
        }
        card.write_text(json.dumps(meta, indent=2) + "\n")
        typer.echo(f"validation metrics recorded in {card}")


@app.command("quality-fit")
def quality_fit(
    model: str = typer.Option(..., "--model", "-m", help="Bundled model name or model folder (quality.json is written into it)."),
    data: Path = typer.Option(..., "--data", "-d", help="Cases the model did NOT train on, with reference contours."),
    cases: Optional[str] = typer.Option(None, "--cases", help="Comma-separated case ids (default: all)."),
    split: Optional[str] = typer.Option(None, "--split", help="'val': only the cases the model held out for validation (from its model.json)."),
    folds: int = typer.Option(5, "--folds", help="Cross-fitting folds over the cases (the figures are out-of-fold)."),
    alpha: float = typer.Option(1.0, "--alpha", help="Ridge penalty of the calibration."),
    sensitivity: float = typer.Option(0.9, "--sensitivity", help="Review threshold: flag at least this share of contours with Dice < 0.7."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the out-of-fold measurement (JSON) here."),
    save_features: Optional[Path] = typer.Option(None, "--save-features", help="Also write each case's features and Dice (JSON) here."),
    features_from: Optional[Path] = typer.Option(
        None, "--features-from", help="Fit from features saved by --save-features (same weights) instead of contouring again."),
) -> None:
    """Fit the model's per-structure quality estimate (estimated Dice, review flag) on held-out cases
    and store it as quality.json in the model folder; run it again after retraining the model."""
    from delineo.inference.quality_fit import fit_quality  # lazy: loads torch, MONAI; keeps `delineo --help` fast
    from delineo.models.registry import resolve_model  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    selected = _structures(cases)
    if split is not None:
        if split != "val":
            raise InputError(None, f"--split must be 'val', got {split!r}")
        selected = json.loads((resolve_model(model) / "model.json").read_text()).get("training", {}).get("data", {}).get("val_cases")
        if not selected:
            raise InputError(resolve_model(model) / "model.json", "records no validation cases (trained with a separate val folder?)")
    command = "delineo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    result = fit_quality(model, data, cases=selected, folds=folds, alpha=alpha, sensitivity=sensitivity, device=device, command=command,
                         save_features=save_features, features_from=features_from)
    m = result["out_of_fold"]
    typer.echo(f"{'structure':<14}{'spearman':>9}{'MAE':>8}{'AUROC<0.7':>11}{'n':>5}")
    for name, a in [*m["structures"].items(), ("overall", m["overall"])]:
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        typer.echo(f"{name:<14}{f(a['spearman']):>9}{f(a['mae']):>8}{f(a['auroc_dice_below_0.7']):>11}{a['n']:>5}")
    typer.echo(f"out-of-fold over {result['n_cases']} cases ({result['folds']} folds); review threshold {result['threshold']:.3f}; "
               f"written to {result['path']}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


@app.command()
def contour(
    input: Optional[Path] = typer.Argument(None, help="CT as NIfTI (.nii/.nii.gz), a DICOM CT series (folder or zip), or a 2D PNG X-ray "
                                           "(or none, with --dicomweb)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Bundled model name or folder (default: hn-ct for 3D, cxr-jsrt for 2D)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    structures: Optional[str] = typer.Option(None, "--structures", help="Comma-separated subset of the model's structures."),
    no_overview: bool = typer.Option(False, "--no-overview", help="Skip the overview PNGs."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", "--series", help="DICOM input (or a --dicomweb study) with several series: the one to contour."),
    bf16: Optional[bool] = typer.Option(
        None, "--bf16/--fp32", help="Network precision: bfloat16 autocast or float32 (default: bf16 on CUDA, and on a CPU with native bf16 for a model checked in bf16 (precision in its model.json), else fp32)."
    ),
    overlap: Optional[float] = typer.Option(None, "--overlap", help=OVERLAP_HELP),
    dicomweb: Optional[str] = typer.Option(None, "--dicomweb", help="Contour a study from this DICOMweb server (e.g. https://pacs/dicom-web) "
                                           "and store the results back (STOW-RS); needs --study."),
    study: Optional[str] = typer.Option(None, "--study", "--study-uid", help="--dicomweb: the Study Instance UID."),
    no_store: bool = typer.Option(False, "--no-store", help="--dicomweb: keep the results in OUT only, do not store them back."),
    dicomweb_user: Optional[str] = typer.Option(None, "--dicomweb-user", help="--dicomweb: user name (HTTP basic; password from --dicomweb-password)."),
    dicomweb_password: Optional[str] = typer.Option(None, "--dicomweb-password", envvar="DELINEO_DICOMWEB_PASSWORD", show_envvar=True,
                                                    help="--dicomweb: password; better in the environment, DELINEO_DICOMWEB_PASSWORD, than on the command line."),
    dicomweb_token: Optional[str] = typer.Option(None, "--dicomweb-token", envvar="DELINEO_DICOMWEB_TOKEN", show_envvar=True,
                                                 help="--dicomweb: bearer token (Authorization: Bearer); or in DELINEO_DICOMWEB_TOKEN."),
    dicomweb_cert: Optional[Path] = typer.Option(None, "--dicomweb-cert", help="--dicomweb: client TLS certificate (PEM; may hold the key)."),
    dicomweb_key: Optional[Path] = typer.Option(None, "--dicomweb-key", help="--dicomweb: the client certificate's private key (PEM)."),
    dicomweb_ca: Optional[Path] = typer.Option(None, "--dicomweb-ca", help="--dicomweb: CA bundle (PEM) that signed the server's certificate."),
) -> None:
    """Contour one image: writes OUT/segmentations/<ROI>.nii.gz, summary.json and overview PNGs;
    for DICOM input also OUT/rtstruct.dcm (RT Structure Set) and OUT/seg.dcm (DICOM SEG). With
    --dicomweb URL --study UID the CT series comes from a PACS (QIDO-RS, WADO-RS) and the RT Structure
    Set and SEG go back into the same study (STOW-RS)."""
    from delineo.api import contour as run_contour  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    if dicomweb is not None:
        from delineo.api import contour_dicomweb  # lazy: loads torch, MONAI; keeps `delineo --help` fast
        from delineo.dicom.dicomweb import DicomwebAuth  # lazy: loads pydicom, pynetdicom; keeps `delineo --help` fast

        if input is not None or not study:
            raise ConfigError("--dicomweb URL takes --study UID (and optionally --series UID) instead of an INPUT file")
        auth = DicomwebAuth(token=dicomweb_token, username=dicomweb_user, password=dicomweb_password,
                            client_cert=dicomweb_cert, client_key=dicomweb_key, ca_bundle=dicomweb_ca)
        summary = contour_dicomweb(dicomweb, study, out, series_uid=series_uid, auth=auth, store=not no_store, model=model,
                                   device=device, structures=_structures(structures), overview=not no_overview, bf16=bf16,
                                   overlap=overlap)
    else:
        if input is None:
            raise ConfigError("give the INPUT to contour (a NIfTI, a DICOM folder or zip, a PNG), or --dicomweb URL --study UID")
        if study:
            raise ConfigError("--study goes with --dicomweb URL")
        summary = run_contour(input, out, model=model, device=device, structures=_structures(structures), overview=not no_overview,
                              series_uid=series_uid, bf16=bf16, overlap=overlap)
    _print_summary(summary, out)
    if "rtstruct" in summary:
        typer.echo(f"RT Structure Set: {summary['rtstruct']}" + (f"; DICOM SEG: {summary['seg']}" if "seg" in summary else ""))
    if "dicomweb" in summary:
        web = summary["dicomweb"]
        typer.echo(f"DICOMweb: series {web['series_instance_uid']} from {web['url']}; "
                   + (f"{len(web['stored'])} result(s) stored back in study {web['study_instance_uid']}" if not no_store else "results not stored back (--no-store)"))


def _print_summary(summary: dict, out: Path) -> None:
    unit = "cc" if len(summary["shape"]) == 3 else "cm2"
    for name, s in summary["structures"].items():
        typer.echo(f"  {name:<14}{s[f'volume_{unit}']:>10.2f} {unit}{'  (empty)' if s['empty'] else ''}")
    total = summary["seconds"].get("total", sum(summary["seconds"].values()))
    typer.echo(f"{len(summary['structures'])} structures in {total:.2f} s -> {out}/segmentations/ (summary.json, overview.png)")


@app.command("bench-contour")
def bench_contour(
    input: Path = typer.Argument(..., help="CT (NIfTI) or PNG to contour."),
    model: str = typer.Option("hn-ct", "--model", "-m", help="Bundled model name or folder."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    repeat: int = typer.Option(3, "--repeat", "-n", help="Timed runs (median reported) after one warm-up."),
    no_slow_path: bool = typer.Option(False, "--no-slow-path", help="Skip the nnU-Net-style comparison."),
    slow_mirror: bool = typer.Option(False, "--slow-mirror", help="Add mirroring TTA to the slow path (only sound for models trained with mirroring)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the report as JSON here."),
) -> None:
    """Per-stage times and peak memory of end-to-end contouring, and the speed-up over an
    nnU-Net-style sliding window with mirroring TTA on the same model and case."""
    from delineo.inference.bench import bench_contour as run_bench  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    report = run_bench(input, model=model, device=device, repeat=repeat, slow_path=not no_slow_path, slow_mirror=slow_mirror)
    typer.echo(f"{report['model']} on {report['device']} ({report['threads']} threads), median of {repeat}:")
    for stage, sec in report["seconds"].items():
        typer.echo(f"  {stage:<12}{sec:>9.3f} s")
    typer.echo(f"  {'total':<12}{report['seconds_total']:>9.3f} s   peak RSS {report['peak_rss_mb']:.0f} MB")
    if "quality_estimate" in report:
        typer.echo(f"quality estimate: {report['quality_estimate']['seconds']:.3f} s, "
                   f"{report['quality_estimate']['fraction_of_contouring_without_it']:.1%} of contouring without it")
    if "slow_path" in report:
        sp = report["slow_path"]
        typer.echo(f"nnU-Net-style path ({sp['description']}): {sp['seconds_total']:.3f} s total, {sp['seconds_model']:.3f} s model "
                   f"(fast path is {sp['speedup_total']}x faster end to end, {sp['speedup_model']}x in model time)")
        worst = min(sp["dice_fast_vs_slow"].items(), key=lambda kv: kv[1])
        typer.echo(f"Dice fast vs slow: lowest {worst[0]} {worst[1]:.4f}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


@app.command("models")
def list_models() -> None:
    """List the bundled models."""
    from delineo.models.registry import available_models, resolve_model  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    for name in available_models():
        meta = json.loads((resolve_model(name) / "model.json").read_text())
        typer.echo(f"{name:<12} {meta['network']['spatial_dims']}D  {', '.join(meta['structures'])}")


@app.command()
def demo(out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Output folder.")) -> None:
    """Contour one held-out case of the development data with the bundled model (``make run``)."""
    from delineo.api import contour as run_contour  # lazy: loads torch, MONAI; keeps `delineo --help` fast
    from delineo.models.registry import available_models, resolve_model  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    root = data_dir()
    candidates = []
    if "hn-ct" in available_models() and (root / "openkbp" / "validation").is_dir():
        cases = sorted(p for p in (root / "openkbp" / "validation").iterdir() if (p / "ct.nii.gz").is_file())
        candidates += [("hn-ct", c / "ct.nii.gz") for c in cases[:1]]
    if "cxr-jsrt" in available_models() and (root / "jsrt" / "images").is_dir():
        meta = json.loads((resolve_model("cxr-jsrt") / "model.json").read_text())
        val = meta.get("training", {}).get("data", {}).get("val_cases") or []
        images = [root / "jsrt" / "images" / f"{c}.png" for c in val] or sorted((root / "jsrt" / "images").glob("*.png"))
        candidates += [("cxr-jsrt", images[0])]
    if not candidates:
        raise InputError(root, "no development data found for the bundled models (set DELINEO_DATA)")
    for model, path in candidates:
        target = out / model
        typer.echo(f"contouring {path} with {model} (a held-out validation case)")
        summary = run_contour(path, target, model=model, device="cpu")
        _print_summary(summary, target)
        typer.echo(f"results: {target.resolve()}  (overview: {(target / 'overview.png').resolve()})")
