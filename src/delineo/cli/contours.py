"""Contour-tool commands: margin, boolean, ring, remove-islands.

Each command reads binary masks (NIfTI, or PNG for 2D), writes the resulting mask and a JSON
summary beside it (``OUT.nii.gz`` -> ``OUT.json``) with the output structure's volume in cc.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from delineo.cli.app import app
from delineo.errors import InputError

BOOLEAN_OPS = ("union", "intersect", "subtract")


def _parse_mm(value: str, option: str) -> tuple[float, ...]:
    """``"5"`` -> ``(5.0,)``; ``"5,5,3"`` -> ``(5.0, 5.0, 3.0)`` (mm along the array axes)."""

    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise InputError(None, f"{option} {value!r}: expected a number of mm or one per axis, e.g. 5 or 5,5,3") from None
    if not all(np.isfinite(values)):
        raise InputError(None, f"{option} {value!r}: values must be finite")
    return values


def _margin_for(values: tuple[float, ...], ndim: int, path: Path, option: str):
    if len(values) not in (1, ndim):
        raise InputError(path, f"{option} has {len(values)} values but the mask is {ndim}D (give 1 or {ndim})")
    return values[0] if len(values) == 1 else values


def _read_mask(path: Path):
    from delineo.data.io import as_binary_mask, read_image  # lazy: loads torch, nibabel, SimpleITK; keeps `delineo --help` fast

    image = read_image(path)
    return image, as_binary_mask(image, path)


def _read_masks(paths: List[Path]):
    """Read masks that must share one grid; a mismatch is an error naming the file that differs."""

    first, mask0 = _read_mask(paths[0])
    masks = [mask0]
    for path in paths[1:]:
        image, mask = _read_mask(path)
        if image.shape != first.shape:
            raise InputError(path, f"grid {image.shape} does not match {paths[0]} {first.shape}")
        if not np.allclose(image.affine, first.affine, atol=1e-3):
            raise InputError(
                path,
                f"voxel grid (spacing {_fmt(image.spacing_mm)} mm, origin {_fmt(image.affine[:3, 3])}) does not match "
                f"{paths[0]} (spacing {_fmt(first.spacing_mm)} mm, origin {_fmt(first.affine[:3, 3])})",
            )
        masks.append(mask)
    return first, masks


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _summary_path(out: Path) -> Path:
    name = out.name
    for suffix in (".nii.gz", ".nii", ".png"):
        if name.lower().endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".json")
    return out.with_name(name + ".json")


def _write(out: Path, mask: np.ndarray, like, name: Optional[str], operation: str, parameters: dict, inputs, input_masks) -> dict:
    """Write the mask and its JSON summary; print one line; return the summary."""
    from delineo.data.io import write_mask  # lazy: loads torch, nibabel, SimpleITK; keeps `delineo --help` fast
    from delineo.metrics.segmentation import volume_cc  # lazy: loads torch, MONAI; keeps `delineo --help` fast

    spacing = like.spacing_mm
    unit = "volume_cc" if mask.ndim == 3 else "area_cm2"
    write_mask(out, mask, like)
    roi = name or _summary_path(out).stem
    summary = {
        "roi_name": roi,
        unit: round(volume_cc(mask, spacing), 4),
        "empty": not bool(mask.any()),
        "operation": operation,
        "parameters": parameters,
        "inputs": [{"path": str(p), unit: round(volume_cc(m, spacing), 4)} for p, m in zip(inputs, input_masks)],
        "mask": str(out),
        "shape": list(mask.shape),
        "spacing_mm": [round(s, 6) for s in spacing],
    }
    path = _summary_path(out)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    shown = f"{summary[unit]:.2f} {'cc' if mask.ndim == 3 else 'cm2'}"
    typer.echo(f"{roi}: {shown}{'  (empty)' if summary['empty'] else ''} -> {out} ({path.name})")
    return summary


_NAME = typer.Option(None, "--name", help="ROI name in the JSON summary (default: the output file name).")


@app.command("margin")
def margin_cmd(
    input: Path = typer.Argument(..., help="Binary mask (NIfTI .nii/.nii.gz, or PNG for 2D)."),
    mm: str = typer.Option(..., "--mm", help="Margin in mm: one value (isotropic) or one per array axis, e.g. 5,5,3; 0 on an axis: no change along it; negative: shrink."),
    contract: bool = typer.Option(False, "--contract", help="Shrink instead of grow."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mask (.nii.gz); the JSON summary is written beside it."),
    name: Optional[str] = _NAME,
) -> None:
    """Grow (or with --contract shrink) a structure by a margin in mm, exact in physical space."""
    from delineo.contours.margins import margin as apply_margin  # lazy: loads SciPy, torch; keeps `delineo --help` fast

    image, mask = _read_mask(input)
    values = _parse_mm(mm, "--mm")
    if contract and any(v < 0 for v in values):
        raise InputError(None, f"--mm {mm} with --contract: give the margin as a positive number")
    if len({np.sign(v) for v in values if v != 0}) > 1:
        raise InputError(None, f"--mm {mm} mixes growing and shrinking: apply them one after the other")
    m = np.broadcast_to(np.atleast_1d(_margin_for(values, mask.ndim, input, "--mm")), (mask.ndim,))
    signed = -m if contract else m
    result = apply_margin(mask, image.spacing_mm, tuple(float(v) for v in signed))
    shrink = bool(np.any(signed < 0))
    params = {"margin_mm": [float(abs(v)) for v in signed]}
    _write(out, result, image, name, "contract" if shrink else "expand", params, [input], [mask])


@app.command("boolean")
def boolean_cmd(
    op: str = typer.Argument(..., help="union, intersect or subtract (first minus all others)."),
    inputs: List[Path] = typer.Argument(..., help="Two or more binary masks on one grid."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mask (.nii.gz); the JSON summary is written beside it."),
    name: Optional[str] = _NAME,
) -> None:
    """Union, intersection or subtraction of structures on the same voxel grid."""
    from delineo.contours.booleans import intersection, subtract, union  # lazy: loads SciPy, torch; keeps `delineo --help` fast

    op = op.lower()
    if op not in BOOLEAN_OPS:
        raise InputError(None, f"unknown boolean operation {op!r} (expected {', '.join(BOOLEAN_OPS)})")
    if len(inputs) < 2:
        raise InputError(None, f"boolean {op} needs at least two masks, got {len(inputs)}")
    image, masks = _read_masks(list(inputs))
    fn = {"union": union, "intersect": intersection, "subtract": subtract}[op]
    _write(out, fn(*masks), image, name, op, {}, inputs, masks)


@app.command("ring")
def ring_cmd(
    input: Path = typer.Argument(..., help="Binary mask of the structure, e.g. a PTV."),
    outer_mm: str = typer.Option(..., "--outer-mm", help="Outer margin in mm (one value or per axis, e.g. 10 or 10,10,5)."),
    inner_mm: str = typer.Option("0", "--inner-mm", help="Inner margin in mm (0: the ring starts at the structure's surface; negative: inside it)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output mask (.nii.gz); the JSON summary is written beside it."),
    name: Optional[str] = _NAME,
) -> None:
    """A ring around a structure: structure + outer mm minus structure + inner mm."""
    from delineo.contours.booleans import ring  # lazy: loads SciPy, torch; keeps `delineo --help` fast

    image, mask = _read_mask(input)
    outer = _margin_for(_parse_mm(outer_mm, "--outer-mm"), mask.ndim, input, "--outer-mm")
    inner = _margin_for(_parse_mm(inner_mm, "--inner-mm"), mask.ndim, input, "--inner-mm")
    o = np.broadcast_to(np.atleast_1d(outer), (mask.ndim,))
    i = np.broadcast_to(np.atleast_1d(inner), (mask.ndim,))
    if np.any(o < i):
        raise InputError(None, f"--outer-mm {outer_mm} must not be smaller than --inner-mm {inner_mm}")
    result = ring(mask, image.spacing_mm, outer, inner)
    params = {"outer_mm": [float(v) for v in o], "inner_mm": [float(v) for v in i]}
    _write(out, result, image, name, "ring", params, [input], [mask])


@app.command("remove-islands")
def remove_islands_cmd(
    input: Path = typer.Argument(..., help="Binary mask."),
    min_cc: float = typer.Option(..., "--min-cc", help="Remove connected components smaller than this volume in cc (cm2 for 2D)."),
    connectivity: Optional[int] = typer.Option(
        None, "--connectivity", help="Neighbours that connect voxels: 26 (default), 18 or 6 in 3D; 8 (default) or 4 in 2D."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output mask (.nii.gz); the JSON summary is written beside it."),
    name: Optional[str] = _NAME,
) -> None:
    """Remove islands (connected components) smaller than a volume in cc."""
    from delineo.contours.booleans import remove_islands  # lazy: loads SciPy, torch; keeps `delineo --help` fast

    image, mask = _read_mask(input)
    if min_cc < 0:
        raise InputError(None, f"--min-cc {min_cc}: must be >= 0")
    try:
        result = remove_islands(mask, image.spacing_mm, min_cc, connectivity)
    except ValueError as exc:
        raise InputError(input, str(exc)) from None
    default = 26 if mask.ndim == 3 else 8
    _write(out, result, image, name, "remove-islands", {"min_cc": min_cc, "connectivity": connectivity or default}, [input], [mask])
