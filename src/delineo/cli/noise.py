"""Training studies: noise-benchmark, audit (label quality), ablation."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from delineo.cli.app import app

# kept in step with delineo.experiments.benchmark.METHODS (imported lazily: it pulls in torch)
_METHODS_HELP = (
    "baseline (the base config), qam (QAM+OCM), qam_raw (QAM without OCM), bce (binary cross-entropy alone), "
    "nr_dice (noise-robust Dice), "
    "gce, dice_gce (Dice + generalised cross-entropy), small_loss (small-loss selection), "
    "loss_gmm (per-sample loss mixture, DivideMix's label division), "
    "agreement (after a warm-up, train on the labels the network agrees with; agreement:score=surface measures "
    "agreement by mean surface distance instead of Dice), "
    "oracle (a reference, not a method: the corrupted labels are known and ignored); "
    "weighting options as NAME:KEY=VALUE[+KEY=VALUE], e.g. qam:ocm_lambda=1"
)


def _split(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


@app.command("noise-benchmark")
def noise_benchmark(
    data: Path = typer.Option(..., "--data", "-d", help="Training data folder (clean labels; noise is added to the training cases)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: runs/, results.json, results.md, results.png."),
    test_data: Optional[Path] = typer.Option(
        None, "--test-data", help="Clean held-out folder of the same layout (default: the validation cases held out from --data)."
    ),
    methods: str = typer.Option("baseline,qam,nr_dice,dice_gce,small_loss,loss_gmm", "--methods", help=f"Comma-separated: {_METHODS_HELP}."),
    fractions: str = typer.Option("0.25,0.5,0.75", "--fractions", help="Fractions of training samples corrupted."),
    levels: str = typer.Option("1-8,5-13", "--levels", help="Erosion/dilation radius ranges in pixels."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per run (default: the base config's)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (default: the base config's)."),
    base_config: Optional[Path] = typer.Option(
        None, "--base-config", "-c", help="Training config the runs start from, e.g. configs/cxr-jsrt.yaml (default: the seed's 2D U-Net)."
    ),
    clean: bool = typer.Option(True, "--clean/--no-clean", help="Also train methods on clean labels."),
    clean_methods: Optional[str] = typer.Option(
        None, "--clean-methods", help="The methods trained on clean labels too (default: every method), e.g. 'baseline'."
    ),
    selection: str = typer.Option(
        "last", "--selection", help="Weights evaluated: 'last' epoch, or 'best-val' (best Dice on the clean validation split)."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed (default: the base config's); a replicate goes to its own --out."),
    noise_seed: Optional[int] = typer.Option(None, "--noise-seed", help="Seed of the label corruption (default: the training seed)."),
) -> None:
    """Train every method on noisy labels at every noise fraction x level (plus clean) and evaluate on
    clean labels. Finished runs are skipped, an interrupted one resumes from its checkpoint; the results
    cover every finished run in OUT, this call's and earlier ones (same test cases and epochs)."""
    from delineo.experiments.benchmark import run_benchmark  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    command = "delineo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    results = run_benchmark(
        data, out, test_data=test_data, methods=_split(methods), fractions=_split(fractions), levels=_split(levels),
        clean=clean, clean_methods=_split(clean_methods) if clean_methods else None, epochs=epochs, device=device, base_config=base_config, selection=selection, command=command,
        seed=seed, noise_seed=noise_seed,
    )
    typer.echo((out / "results.md").read_text())
    typer.echo(f"{len(results['runs'])} runs; results in {out}/results.json, results.md, results.png")


@app.command("noise-summary")
def noise_summary(
    folders: list[Path] = typer.Argument(..., help="noise-benchmark output folders that differ only in the training seed (--seed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: summary.json, summary.md."),
) -> None:
    """Pool noise-benchmark replicates: mean ± sd of Dice over training seeds for every method and
    condition, and each method's paired difference from the baseline trained with the same seed."""
    from delineo.experiments.benchmark import write_replicate_summary  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    summary = write_replicate_summary(folders, out)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"{len(summary['runs'])} runs from {len(folders)} folders; summary in {out}/summary.json, summary.md")


def _radius(value: str) -> tuple[int, int]:
    from delineo.experiments.benchmark import parse_level  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    return parse_level(value)


@app.command("audit")
def audit(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder whose image-label pairs are scored."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: audit.csv, audit.json, worst/*.png."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A trained model (default: train one on --data)."),
    rank_by: str = typer.Option("agreement_z", "--rank-by", help="agreement (Dice of the model's prediction vs the given label; any model), agreement_z (the same, each structure "
                           "standardised over the pairs first), surface_z (log mean surface distance between prediction and label, standardised "
                           "likewise) or qam (a model trained with weighting: qam)."),
    weighting: str = typer.Option("none", "--weighting", help="When training here: none (plain) or qam (QAM+OCM, gives the QAM score too)."),
    ocm_lambda: float = typer.Option(2.0, "--ocm-lambda", help="When training here with --weighting qam: the OCM bound lambda."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Base training config when no --model is given (default: the seed's 2D U-Net)."),
    noise_fraction: Optional[float] = typer.Option(
        None, "--noise-fraction", help="When training here: corrupt this fraction of training labels first, to check the audit against the truth."
    ),
    noise_radius: str = typer.Option("1-8", "--noise-radius", help="Erosion/dilation radius range in pixels for --noise-fraction."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs when training here (default: the config's)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    worst: int = typer.Option(12, "--worst", help="Overlay PNGs for this many lowest-scored pairs."),
) -> None:
    """Rank a dataset's labels from most to least suspicious: by agreement with a trained model's
    prediction, or by a quality-awareness module (QAM)."""
    from delineo.experiments.audit import audit as run_audit  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    summary = run_audit(
        data, out, model=model, base_config=config, noise_fraction=noise_fraction, noise_radius=_radius(noise_radius),
        epochs=epochs, device=device, worst=worst, rank_by=rank_by, weighting=weighting, ocm_lambda=ocm_lambda,
    )
    typer.echo(f"{summary['cases']} pairs scored; ranking in {summary['csv']}; {len(summary['worst'])} overlays in {out}/worst")
    if "synthetic_noise" in summary:
        n = summary["synthetic_noise"]
        for name, c in n["scores"].items():
            auroc = c["auroc_low_score_for_corrupted"]
            typer.echo(
                f"{name}: corrupted labels in the lower-scored half {c['corrupted_in_lower_half']}/{n['corrupted']} "
                f"({c['fraction_corrupted_in_lower_half']:.0%}, at most {c['best_possible_fraction']:.0%}); "
                + (f"AUROC {auroc:.3f}" if auroc is not None else "AUROC undefined (one class only)")
            )


@app.command("ablation")
def ablation(
    spec: Path = typer.Argument(..., help="Ablation file: a base training config and cumulative steps (e.g. configs/hn-ablation.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: runs/, results.json, results.md, results.png."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per step (default: the base config's)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (default: the base config's)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", help="Train each step on this many cases only (a reduced run)."),
    report_only: bool = typer.Option(False, "--report-only", help="Train nothing: write the results of the steps finished so far."),
    only: Optional[str] = typer.Option(None, "--only", help="Train only these steps (comma-separated names), e.g. to split the steps between machines."),
    budget_cpu_hours: Optional[float] = typer.Option(
        None, "--budget-cpu-hours", help="CPU time per step (process CPU time in training; default: the file's budget_cpu_hours, else epochs)."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Train with this training seed, beside the base seed's runs (e.g. a second seed for the closest steps)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per step (default: the file's training.threads)."),
) -> None:
    """Train each step of an ablation (each adds one change) and compare validation Dice.
    Finished steps are skipped, an interrupted one resumes from its checkpoint."""
    from delineo.experiments.ablation import run_ablation  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    command = "delineo " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    run_ablation(spec, out, epochs=epochs, device=device, max_cases=max_cases, command=command, train_missing=not report_only,
                 only=_split(only) if only else None, budget_cpu_hours=budget_cpu_hours, seed=seed, threads=threads)
    typer.echo((out / "results.md").read_text())
