"""Evaluate a model, or another tool's saved contours, on a dataset folder against its reference contours."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from delineo.data.datasets import _check_same_grid, open_dataset
from delineo.data.io import Image, as_binary_mask, read_image
from delineo.errors import InputError
from delineo.inference.predictor import Predictor
from delineo.inference.quality import agreement_report
from delineo.metrics.segmentation import structure_metrics
from delineo.models.registry import TARGET_TYPES, ModelBundle
from delineo.progress import Steps


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _json_number(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


class SavedPredictions:
    """Contours another tool wrote, one binary NIfTI per structure: ``<root>/<case>/segmentations/<ROI>.nii.gz``
    (``delineo contour``'s layout), each on the grid of that case's image in the dataset. A structure
    without a file is scored as drawn empty (the tool found nothing). Stands in for a
    :class:`~delineo.inference.predictor.Predictor` in :func:`evaluate`; gives no quality estimate."""

    quality = None
    amp = False
    device = "none (saved contours)"
    precision = "n/a (saved contours)"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(self.root, "predictions folder not found")
        found = sorted({p.name.split(".")[0] for p in self.root.glob("*/segmentations/*.nii*")})
        if not found:
            raise InputError(self.root, "no <case>/segmentations/<ROI>.nii.gz files in it")
        self.structures = found
        self.bundle = SimpleNamespace(name=self.root.name, path=self.root, pixel_spacing_mm=None)

    def predict_with_quality(self, image: Image, names: list[str], *, case: str) -> tuple[dict[str, np.ndarray], dict]:
        folder = self.root / case / "segmentations"
        if not folder.is_dir():
            raise InputError(folder, f"no predictions for case {case}")
        masks = {}
        for name in names:
            files = [p for p in (folder / f"{name}.nii.gz", folder / f"{name}.nii") if p.is_file()]
            if not files:
                masks[name] = np.zeros(image.shape, bool)
                continue
            mask = read_image(files[0])
            _check_same_grid(image, mask, Path(f"{case} image"), files[0])
            masks[name] = as_binary_mask(mask, files[0])
        return masks, {}


def evaluate(
    model: str | Path | None,
    data: str | Path,
    out: str | Path | None = None,
    *,
    device: str = "auto",
    cases: list[str] | None = None,
    pixel_spacing_mm: float | None = None,
    tolerance_mm: float = 2.0,
    predictor: Predictor | None = None,
    bf16: bool | None = None,
    progress: bool = True,
    predictions: str | Path | None = None,
    unions: dict[str, list[str]] | None = None,
    overlap: float | None = None,
) -> dict[str, Any]:
    """Contour every case of ``data`` with ``model`` and compare with its reference masks.

    ``predictions``: score contours saved by another tool instead of running a model
    (:class:`SavedPredictions`: ``<predictions>/<case>/segmentations/<ROI>.nii.gz`` on each case's
    grid; ``model`` is then ignored), with the same metrics, so that tools are compared by one code.

    A structure not contoured in a case's reference is skipped for that case (not counted as 0).
    HD95/ASD are in mm; when prediction or reference is empty (but not both) the distance is
    undefined: it is written as null and counted in ``n_distance_undefined``.
    ``bf16``: run the network under bfloat16 autocast (default: the model's, see
    :class:`delineo.inference.predictor.Predictor`). ``overlap``: the sliding window's (default the
    model's).
    ``progress``: a bar on a terminal, one line per case in a log (:mod:`delineo.progress`).
    With a quality estimator in the model folder (:mod:`delineo.inference.quality`), each case's
    structure has ``quality`` and ``review`` beside ``dice``, and ``report["quality"]`` says how well
    the estimate follows Dice (Spearman, mean absolute error, AUROC for Dice < 0.7), per structure
    and overall; cases the estimator was fitted on are estimated out-of-fold.
    ``unions``: structures also scored together, e.g. ``{"any PTV": ["PTV70", "PTV63", "PTV56"]}``
    (predicted union against reference union, over the cases where any of them is contoured); by
    default the model's structures of ROI type PTV when it has two or more (dose levels: whether a
    region gets 70 or 63 Gy is a prescription the CT does not show). Every structure and union also
    gets ``surface_dice_voxel``, the surface Dice at one voxel's tolerance.
    Writes ``out`` (JSON) and a box plot ``<out stem>_dice.png`` beside it when ``out`` is given.
    """
    if predictions is not None:
        predictor = SavedPredictions(predictions)
    predictor = predictor or Predictor(str(model), device, amp=bf16, overlap=overlap)
    spacing = pixel_spacing_mm if pixel_spacing_mm is not None else predictor.bundle.pixel_spacing_mm
    dataset = open_dataset(data, None, cases, pixel_spacing_mm=spacing)
    wanted = [s for s in predictor.structures if s in dataset.structures]
    if not wanted:
        raise InputError(data, f"no structure of model {predictor.bundle.name} ({', '.join(predictor.structures)}) is in this dataset ({', '.join(dataset.structures)})")
    dataset = open_dataset(data, wanted, cases, pixel_spacing_mm=spacing)
    unions = default_unions(predictor, wanted) if unions is None else unions
    unknown = sorted({n for members in unions.values() for n in members} - set(wanted))
    if unknown:
        raise InputError(data, f"unions name structures not scored here: {', '.join(unknown)}")
    per_case: list[dict[str, Any]] = []
    collected: dict[str, dict[str, list[float]]] = {s: {} for s in [*wanted, *unions]}
    quality_rows: list[dict[str, Any]] = []
    seconds = 0.0
    steps = Steps(len(dataset), "evaluate", unit="case") if progress else None
    for i in range(len(dataset)):
        sample = dataset[i]
        image = Image(sample["image"][0], sample["affine"])
        t0 = time.perf_counter()
        masks, quality = predictor.predict_with_quality(image, wanted, case=str(sample["case"]))
        seconds += time.perf_counter() - t0
        row = _score_case(sample, masks, quality, wanted, unions, tolerance_mm, collected, quality_rows)
        per_case.append(row)
        if steps is not None:
            steps.step(str(sample["case"]))
    if steps is not None:
        steps.close()
    # the unions go to report["unions"] below
    structures = {name: _summary(collected[name], tolerance_mm) for name in [*wanted, *unions]}
    scored_unions = {u: {"members": unions[u], **structures.pop(u)} for u in unions}
    dices = [v["dice"] for v in structures.values() if v["dice"] is not None]
    report = {
        "model": str(predictor.bundle.path or predictor.bundle.name),
        "data": str(data),
        "device": str(predictor.device),
        "structures": structures,
        "mean_dice": float(np.mean(dices)) if dices else None,
        "organs_at_risk_mean": _organs_at_risk_mean(predictor, structures),
        "cases": per_case,
        "seconds_per_case": seconds / max(1, len(dataset)),
        "precision": getattr(predictor, "precision", None) or ("bf16" if predictor.amp else "fp32"),
        "overlap": getattr(predictor, "run_settings", {}).get("overlap"),  # None: saved contours, or no sliding window
        "tolerance_mm": tolerance_mm,
        "unions": scored_unions,
        "note": "surface_dice_voxel: tolerance = the case's largest voxel dimension; unions: predicted union against reference union",
    }
    if predictor.quality is not None:
        fitted_on = set(predictor.quality.calibrator.cases)
        n_in = sum(1 for r in per_case if str(r["case"]) in fitted_on)
        report["quality"] = {
            **agreement_report(quality_rows, wanted, predictor.quality.threshold),
            "threshold": predictor.quality.threshold,
            "calibration": f"out-of-fold for the {n_in} case(s) the estimator was fitted on (each by the fold calibrator "
                           f"that never saw it); the stored calibrator for the other {len(per_case) - n_in}",
        }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        dice_boxplot(report, out.with_name(out.stem + "_dice.png"))
    return report


def _score_case(
    sample: dict[str, Any], masks: dict[str, np.ndarray], quality: dict[str, Any], wanted: list[str],
    unions: dict[str, list[str]], tolerance_mm: float, collected: dict[str, dict[str, list[float]]], quality_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """One case's row of the report: the metrics of every structure contoured in its reference (and
    of every union of which any member is), appended to ``collected`` (name -> metric -> values) and
    the quality estimates to ``quality_rows``."""
    row: dict[str, Any] = {"case": sample["case"]}
    for c, name in enumerate(wanted):
        if not sample["present"][c]:
            continue
        m = structure_metrics(masks[name], sample["label"][c], sample["spacing_mm"], tolerance_mm, voxel_tolerance=True)
        row[name] = {k: _json_number(v) for k, v in m.items()}
        if "quality" in quality.get(name, {}):
            row[name]["quality"] = quality[name]["quality"]
            row[name]["review"] = quality[name]["review"]
            quality_rows.append({"structure": name, "quality": quality[name]["quality"], "dice": m["dice"]})
        for k, v in m.items():
            collected[name].setdefault(k, []).append(v)
    for uname, members in unions.items():
        ks = [wanted.index(n) for n in members]
        if not any(sample["present"][k] for k in ks):
            continue
        ref = np.logical_or.reduce([np.asarray(sample["label"][k], bool) for k in ks])
        pred = np.logical_or.reduce([np.asarray(masks[n], bool) for n in members])
        m = structure_metrics(pred, ref, sample["spacing_mm"], tolerance_mm, voxel_tolerance=True)
        row[uname] = {k: _json_number(v) for k, v in m.items()}
        for k, v in m.items():
            collected[uname].setdefault(k, []).append(v)
    return row


def _summary(vals: dict[str, list[float]], tolerance_mm: float) -> dict[str, Any]:
    """A structure's (or union's) metrics over the cases: means of the finite values, the median Dice."""
    n = len(vals.get("dice", []))
    return {
        "dice": _finite_mean(vals.get("dice", [])),
        "hd95_mm": _finite_mean(vals.get("hd95_mm", [])),
        "asd_mm": _finite_mean(vals.get("asd_mm", [])),
        f"surface_dice_{tolerance_mm:g}mm": _finite_mean(vals.get("surface_dice", [])),
        "surface_dice_voxel": _finite_mean(vals.get("surface_dice_voxel", [])),
        "volume_diff_cc": _finite_mean(vals.get("volume_diff_cc", [])),
        "dice_median": float(np.median(vals["dice"])) if n else None,
        "n": n,
        "n_distance_undefined": int(sum(1 for v in vals.get("hd95_mm", []) if not math.isfinite(v))),
    }


def _roi_types(predictor) -> dict[str, str]:
    """The model's ROI type per structure; empty for saved predictions (no model card)."""
    bundle = getattr(predictor, "bundle", None)
    return bundle.roi_types if isinstance(bundle, ModelBundle) else {}


def _organs_at_risk_mean(predictor, structures: dict[str, dict[str, Any]]) -> float | None:
    """Mean Dice over the structures of ROI type ORGAN when the model also has targets (PTV, CTV,
    GTV); ``None`` for a model of organs only (its mean is ``mean_dice``) or saved predictions."""
    types = _roi_types(predictor)
    if not any(t in TARGET_TYPES for t in types.values()):
        return None
    organs = [v["dice"] for n, v in structures.items() if types.get(n) == "ORGAN" and v["dice"] is not None]
    return float(np.mean(organs)) if organs else None


def default_unions(predictor, wanted: list[str]) -> dict[str, list[str]]:
    """``{"any PTV": [...]}`` when two or more of ``wanted`` are PTVs by the model's ROI types."""
    types = _roi_types(predictor)
    ptvs = [n for n in wanted if types.get(n) == "PTV"]
    return {"any PTV": ptvs} if len(ptvs) >= 2 else {}


def dice_boxplot(report: dict[str, Any], path: Path) -> Path:
    """Box plot of per-case Dice for each structure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["structures"])
    data = [[c[n]["dice"] for c in report["cases"] if n in c and c[n]["dice"] is not None] for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(f"{Path(report['model']).name} on {Path(report['data']).name}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
