"""Is this volume a CT that a CT model can contour? One check, run by every path before contouring.

``delineo contour`` / :func:`delineo.api.contour` (and so the web service's jobs) and the DICOM node
(:mod:`delineo.dicom.node`) call :func:`check_ct` before the network runs. A volume that is not a
plausible CT in Hounsfield units is refused with an :class:`~delineo.errors.InputError` naming the
file (or series) and every problem found; nothing is contoured, nothing is sent. It applies to 3D
(CT) models only: a 2D image for a 2D model (a chest X-ray PNG) is not checked.

What is checked, and the thresholds (a real CT passes with a wide margin; the development CTs,
OpenKBP head and neck, and the tests' synthetic CTs pass):

- **finite values**: every voxel is a number (no NaN, no infinity).
- **Hounsfield range**: at most 1 % of the voxels above :data:`MAX_P99_HU` (3000 HU: dense
  cortical bone reaches about 2000, metal is a small fraction of a volume); values scaled by 1000
  or a non-CT scale fail here.
- **something dark**: at least 1 % of the voxels below :data:`DARK_HU` (-50 HU): air around the
  patient, lung, airways or fat; every CT of a patient has them. An MR (nothing below 0), or a CT
  whose rescale to HU was lost (air stored as 0), has none.
- **a body**: at least :data:`MIN_BODY_FRACTION` (0.1 %) of the voxels between -500 and 3000 HU
  (soft tissue, fat, bone); a volume of air alone, or of padding, fails. (OpenKBP's 128^3 volumes
  are mostly air: their body fraction runs from 0.4 % to 13 %.)
- **structure**: neighbouring voxels correlate (Pearson, values clipped to -1024..3071 HU) at
  least :data:`MIN_NEIGHBOUR_CORRELATION` (0.3) along every axis; the development CTs are at 0.88
  to 0.97, the tests' smallest synthetic series (16 x 16 x 8) at 0.53, random noise near 0; a
  uniform volume (one value) fails too.
- **extent for the model**: along every axis, at least :data:`MIN_MODEL_VOXELS` (8) voxels, and at
  least the network's divisor (the factor its input size must divide by: 16 for ``hn-ct``), on the
  model's grid (its ``spacing_mm``; the image's own grid when it has none). For ``hn-ct``
  (4 x 4 x 2.5 mm) that is 64 mm across and 40 mm (16 slices of 2.5 mm) from head to feet: a 1- or
  2-slice volume fails.

The statistics are taken on a strided sample of at most about a million voxels, so the check costs
well under a second on a 512 x 512 x 200 CT.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from delineo.data.io import Image
from delineo.errors import InputError

#: 99th percentile of the voxel values may not exceed this (HU)
MAX_P99_HU = 3000.0
#: at least 1 % of the voxels must be below this (HU): air, lung or fat
DARK_HU = -50.0
#: fraction of voxels that must lie between :data:`BODY_HU` (soft tissue, fat, bone)
MIN_BODY_FRACTION = 0.001
BODY_HU = (-500.0, 3000.0)
#: Pearson correlation of neighbouring voxels required along every axis
MIN_NEIGHBOUR_CORRELATION = 0.3
#: voxels required along every axis on the model's grid (or the network's divisor, if larger)
MIN_MODEL_VOXELS = 8
#: the sample the statistics are taken on (voxels)
SAMPLE_VOXELS = 1_000_000

_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def _sample(a: np.ndarray, budget: int = SAMPLE_VOXELS) -> np.ndarray:
    step = max(1, math.ceil((a.size / budget) ** (1 / a.ndim)))
    return a[(slice(None, None, step),) * a.ndim]


def neighbour_correlation(a: np.ndarray, axis: int, budget: int = SAMPLE_VOXELS) -> float | None:
    """Pearson correlation of each voxel with its neighbour along ``axis`` (values clipped to
    -1024..3071 HU; the other axes strided to about ``budget`` voxels); None when the axis has one
    voxel, 0.0 when the values do not vary."""
    n = a.shape[axis]
    if n < 2:
        return None
    others = a.size // n
    step = max(1, math.ceil((others * n / budget) ** (1 / max(1, a.ndim - 1))))
    index = tuple(slice(None) if i == axis else slice(None, None, step) for i in range(a.ndim))
    x = np.moveaxis(np.clip(a[index].astype(np.float64), -1024.0, 3071.0), axis, 0)
    u, v = x[:-1].ravel(), x[1:].ravel()
    su, sv = u.std(), v.std()
    if su == 0 or sv == 0:
        return 0.0
    return float(((u - u.mean()) * (v - v.mean())).mean() / (su * sv))


def model_grid_voxels(image: Image, bundle: Any = None) -> list[float]:
    """How many voxels each array axis of ``image`` spans on the model's grid (its ``spacing_mm``,
    matched to the image's axes through the model's orientation codes); the image's own voxel
    counts when the model resamples nothing."""
    shape, spacing = image.shape, image.spacing_mm
    preprocess = getattr(bundle, "preprocess", None) or {}
    target = preprocess.get("spacing_mm")
    if not target:
        return [float(n) for n in shape]
    codes = str(preprocess.get("orientation") or "LPI").upper()
    world_spacing = {_WORLD_AXIS.get(c, i): float(s) for i, (c, s) in enumerate(zip(codes, target))}
    counts = []
    for i, (n, s) in enumerate(zip(shape, spacing)):
        world = int(np.argmax(np.abs(np.asarray(image.affine, dtype=np.float64)[:3, i])))
        counts.append(n * s / world_spacing.get(world, float(target[min(i, len(target) - 1)])))
    return counts


def ct_statistics(image: Image, bundle: Any = None) -> dict[str, Any]:
    """The numbers :func:`check_ct` judges (on a strided sample of the voxels)."""
    a = np.asarray(image.array)
    sample = _sample(a).astype(np.float64, copy=False)
    n_bad = int(a.size - np.count_nonzero(np.isfinite(a))) if a.dtype.kind in "fc" else 0
    values = sample[np.isfinite(sample)] if n_bad else sample
    stats: dict[str, Any] = {"shape": list(a.shape), "non_finite": n_bad, "non_finite_fraction": n_bad / max(1, a.size)}
    if values.size:
        stats.update(p1=float(np.percentile(values, 1)), p99=float(np.percentile(values, 99)),
                     dark_fraction=float(np.mean(values < DARK_HU)),
                     body_fraction=float(np.mean((values >= BODY_HU[0]) & (values <= BODY_HU[1]))),
                     min=float(values.min()), max=float(values.max()))
    clean = np.where(np.isfinite(a), a, -1024.0) if n_bad else a
    stats["neighbour_correlation"] = [neighbour_correlation(clean, k) for k in range(a.ndim)]
    stats["model_grid_voxels"] = [round(v, 1) for v in model_grid_voxels(image, bundle)]
    divisor = getattr(getattr(bundle, "spec", None), "divisor", 1) or 1
    stats["min_model_voxels"] = max(MIN_MODEL_VOXELS, int(divisor))
    return stats


def ct_problems(stats: dict[str, Any]) -> list[str]:
    """What is wrong with a volume whose :func:`ct_statistics` are ``stats`` (empty: plausible)."""
    problems = []
    if stats["non_finite"]:
        problems.append(f"{stats['non_finite']} voxels ({100 * stats['non_finite_fraction']:.1f} %) are not numbers (NaN or infinite)")
    if "p99" not in stats:
        return problems
    if stats["p99"] > MAX_P99_HU:
        problems.append(f"values far above the CT range: 1 % of the voxels are above {stats['p99']:.0f} (bone is at most "
                        f"about 2000 HU; expected at most {MAX_P99_HU:.0f}): not Hounsfield units (scaled?)")
    if stats["dark_fraction"] < 0.01:
        problems.append(f"nothing dark: {100 * stats['dark_fraction']:.1f} % of the voxels are below {DARK_HU:.0f} HU (a CT has "
                        f"air, lung or fat there; lowest value {stats['min']:.0f}): not a CT in Hounsfield units (an MR, or the "
                        "rescale to HU lost?)")
    if stats["body_fraction"] < MIN_BODY_FRACTION:
        problems.append(f"no body: {100 * stats['body_fraction']:.2f} % of the voxels are between {BODY_HU[0]:.0f} and "
                        f"{BODY_HU[1]:.0f} HU (expected at least {100 * MIN_BODY_FRACTION:g} %)")
    corr = [c for c in stats["neighbour_correlation"] if c is not None]
    if corr and min(corr) < MIN_NEIGHBOUR_CORRELATION:
        problems.append("no image structure: neighbouring voxels " + (
            "all have one value" if max(corr) == 0.0 and stats["min"] == stats["max"] else
            f"correlate only {min(corr):.2f} (a CT: above 0.85; expected at least {MIN_NEIGHBOUR_CORRELATION}); noise?"))
    need = stats["min_model_voxels"]
    short = [(i, v) for i, v in enumerate(stats["model_grid_voxels"]) if v < need]
    if short:
        problems.append("too small for the model: " + ", ".join(
            f"axis {i} has {stats['shape'][i]} voxel{'s' if stats['shape'][i] != 1 else ''} ({v:g} on the model's grid)" for i, v in short)
            + f"; it needs at least {need} on its grid along every axis")
    return problems


def check_ct(image: Image, bundle: Any = None, source: str | Path | None = None) -> dict[str, Any]:
    """Refuse (:class:`InputError` naming ``source`` and every problem) a volume that is not a
    plausible CT for the 3D model ``bundle`` (a :class:`~delineo.models.registry.ModelBundle`, or
    None: no model grid); returns the statistics when it passes. Images for 2D models and 2D
    images are not checked (returns ``{}``). Thresholds: see the module's documentation."""
    spec = getattr(bundle, "spec", None)
    if image.array.ndim != 3 or (spec is not None and getattr(spec, "spatial_dims", 3) != 3):
        return {}
    stats = ct_statistics(image, bundle)
    problems = ct_problems(stats)
    if problems:
        raise InputError(source, "not a plausible CT, not contoured: " + "; ".join(problems))
    return stats


def hounsfield_problem(path: Path) -> str | None:
    """Why a 3D NIfTI is not a CT in Hounsfield units (a mask, a label map, a normalised or
    offset image, an MR), or None: the web upload's early refusal of a wrong file, read from a
    sample of the file before any study is made (the full check, :func:`check_ct`, runs before
    contouring). A CT has air around the patient (about -1000 HU), so values below 0 and many
    distinct values."""
    import nibabel as nib  # lazy: only the web upload reads a file here

    img = nib.load(str(path))
    shape = img.shape[:3]
    step = max(1, int(round((np.prod(shape) / 2e6) ** (1 / 3))))  # a 2 M-voxel sample is plenty
    data = np.asarray(img.dataobj[::step, ::step, ::step], dtype=np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return "holds no finite values, not a CT in Hounsfield units"
    lo, hi = float(finite.min()), float(finite.max())
    values = np.unique(finite[: 2_000_000])
    if values.size <= 2 and lo >= 0 and hi <= 1:
        return "holds only the values 0 and 1: a mask, not a CT in Hounsfield units (upload the CT itself)"
    if lo >= 0 and hi <= 1:
        return f"values lie between {lo:g} and {hi:g}: a normalised image, not a CT in Hounsfield units"
    if values.size <= 64 and lo >= 0 and np.allclose(values, np.round(values)):
        return f"holds only {values.size} whole-number values from {lo:g} to {hi:g}: a label map, not a CT in Hounsfield units"
    if lo >= 0:
        return (f"no value below 0 (range {lo:g} to {hi:g}): not a CT in Hounsfield units, where air is about -1000 "
                "(an MR image, or a CT without its rescale intercept?)")
    if hi - lo < 50:
        return f"nearly constant ({lo:g} to {hi:g}): not a CT in Hounsfield units"
    return None
