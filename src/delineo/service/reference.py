"""A reference contour set for a study (a clinician's RT Structure Set, or NIfTI masks) and its
agreement with the study's result: Dice, HD95 and surface Dice per structure (``delineo.metrics``).

Stored as ``reference/segmentations/<ROI>.nii.gz`` on the study's CT grid (the grid the result
masks use) with ``reference/info.json`` (file name, who, when). Metrics are cached per result
version in ``reference/metrics-<job>-<version>.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

NIFTI_EXT = (".nii.gz", ".nii")


class ReferenceError_(ValueError):
    """A reference upload that cannot be used (the message names the file)."""


def ref_dir(study_dir: Path) -> Path:
    return Path(study_dir) / "reference"


def info(study_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((ref_dir(study_dir) / "info.json").read_text())
    except (OSError, ValueError):
        return None


def structure_names(study_dir: Path) -> list[str]:
    seg = ref_dir(study_dir) / "segmentations"
    return sorted(p.name[: -len(".nii.gz")] for p in seg.glob("*.nii.gz")) if seg.is_dir() else []


def _strip(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    for ext in NIFTI_EXT:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _safe_roi(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9 ._+-]+", "_", name).strip(" .") or "ROI"


def store(study_dir: Path, files: list[tuple[str, Path]], *, grid_mask: Path | None, dicom_input: Path | None, user: str) -> dict:
    """Read an uploaded reference (``(client name, temp path)``): one RT Structure Set (DICOM
    studies), NIfTI masks named by structure, or a zip of either; replace the study's reference."""
    import nibabel as nib

    work = Path(study_dir) / "reference.tmp"
    shutil.rmtree(work, ignore_errors=True)
    (work / "segmentations").mkdir(parents=True)
    try:
        entries = _unpack(files, work)
        nifti = [(n, p) for n, p in entries if n.lower().endswith(NIFTI_EXT)]
        others = [(n, p) for n, p in entries if not n.lower().endswith(NIFTI_EXT) and not n.lower().endswith((".json", ".txt", ".md"))]
        if grid_mask is None:
            raise ReferenceError_("contour the study first: the reference is compared on the result's grid")
        grid = nib.load(str(grid_mask))
        if nifti:
            masks = _nifti_masks(nifti, grid.shape)
        elif others:
            masks = _rtstruct_masks(others, dicom_input, grid.shape)
        else:
            raise ReferenceError_("no reference found: upload an RT Structure Set (.dcm) or NIfTI masks (.nii.gz, one per structure)")
        if not masks:
            raise ReferenceError_("the reference holds no structures")
        for name, m in masks.items():
            nib.save(nib.Nifti1Image(m.astype(np.uint8), grid.affine), str(work / "segmentations" / f"{_safe_roi(name)}.nii.gz"))
        label = files[0][0] if len(files) == 1 else f"{len(files)} files"
        (work / "info.json").write_text(json.dumps({"source": PurePosixPath(label.replace("\\", "/")).name, "user": user,
                                                    "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                                    "structures": sorted(_safe_roi(n) for n in masks)}))
        for f in list(work.iterdir()):
            if f.is_file() and f.name.startswith("z"):
                f.unlink()
        final = ref_dir(study_dir)
        shutil.rmtree(final, ignore_errors=True)
        work.replace(final)
        return info(study_dir) or {}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(files: list[tuple[str, Path]], work: Path) -> list[tuple[str, Path]]:
    """The uploaded files as (name, path), every zip's members (hidden files and folders left out)
    extracted into ``work`` as ``z<i>`` in its place."""
    entries: list[tuple[str, Path]] = []
    for name, path in files:
        if name.lower().endswith(".zip") or zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as zf:
                    for i, zi in enumerate(zf.infolist()):
                        if zi.is_dir() or PurePosixPath(zi.filename).name.startswith(".") or zi.filename.startswith("__MACOSX/"):
                            continue
                        if zi.file_size > 2**31:
                            raise ReferenceError_(f"{name}: {zi.filename} is too large")
                        dest = work / f"z{i:04d}"
                        with zf.open(zi) as src, open(dest, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        entries.append((zi.filename, dest))
            except zipfile.BadZipFile:
                raise ReferenceError_(f"{name}: not a readable zip file") from None
        else:
            entries.append((name, path))
    return entries


def _nifti_masks(nifti: list[tuple[str, Path]], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{structure: bool mask}`` of NIfTI masks named by structure, each on the result's grid ``shape``."""
    import nibabel as nib

    masks: dict[str, np.ndarray] = {}
    for n, p in nifti:
        try:
            img = nib.load(str(p)) if not n.lower().endswith(".gz") else nib.Nifti1Image.from_bytes(__import__("gzip").decompress(p.read_bytes()))
            arr = np.asanyarray(img.dataobj)
        except Exception as exc:  # noqa: BLE001
            raise ReferenceError_(f"{PurePosixPath(n).name}: not a readable NIfTI mask ({exc.__class__.__name__})") from None
        while arr.ndim > len(shape) and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.shape != shape:
            raise ReferenceError_(f"{PurePosixPath(n).name}: {arr.shape} voxels, not on the study's CT grid {shape}")
        values = np.unique(arr)
        if values.size > 2 and not set(values.tolist()) <= {0, 1, 255}:
            raise ReferenceError_(f"{PurePosixPath(n).name}: not a binary mask (values {', '.join(str(v) for v in values[:5])} ...)")
        masks[_strip(n)] = arr > 0
    return masks


def _rtstruct_masks(others: list[tuple[str, Path]], dicom_input: Path | None, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{ROI: bool mask}`` of the one RT Structure Set among ``others``, read on the DICOM study's
    CT series, each on the result's grid ``shape``."""
    if dicom_input is None:
        raise ReferenceError_(f"{PurePosixPath(others[0][0]).name}: an RT Structure Set needs a DICOM study (for a NIfTI study upload NIfTI masks)")
    if len(others) != 1:
        raise ReferenceError_("upload one RT Structure Set (or NIfTI masks) as the reference")
    from delineo.dicom.rtstruct import read_rtstruct
    from delineo.dicom.series import read_series
    from delineo.errors import InputError

    n, p = others[0]
    series = read_series(dicom_input)
    try:
        masks = read_rtstruct(p, series)
    except InputError as exc:
        raise ReferenceError_(f"{PurePosixPath(n).name}: {exc.problem}") from None
    except Exception as exc:  # noqa: BLE001
        raise ReferenceError_(f"{PurePosixPath(n).name}: not a usable RT Structure Set ({exc.__class__.__name__}: {exc})") from None
    for k, m in masks.items():
        if m.shape != shape:
            raise ReferenceError_(f"{PurePosixPath(n).name}: ROI {k} is on a {m.shape} grid, the result on {shape}")
    return masks


def _match(names: list[str], ref_names: list[str]) -> dict[str, str]:
    """Result structure -> reference structure, by name ignoring case, spaces, '_' and '-'."""
    key = lambda s: re.sub(r"[\s_\-]+", "", s.lower())  # noqa: E731
    refs = {key(r): r for r in ref_names}
    return {n: refs[key(n)] for n in names if key(n) in refs}


def compare(study_dir: Path, results: Path, cache_key: str, tolerance_mm: float = 2.0) -> list[dict[str, Any]]:
    """Dice, HD95 (mm) and surface Dice (at ``tolerance_mm``) of each result structure against the
    reference structure of the same name; reference-only and result-only structures listed too."""
    import nibabel as nib

    from delineo.metrics.segmentation import structure_metrics

    cache = ref_dir(study_dir) / f"metrics-{cache_key}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except ValueError:
            pass
    ref_names = structure_names(study_dir)
    names = sorted(p.name[: -len(".nii.gz")] for p in (results / "segmentations").glob("*.nii.gz"))
    pairs = _match(names, ref_names)
    rows: list[dict[str, Any]] = []

    def clean(v):
        return None if v is None or not np.isfinite(v) else round(float(v), 4)

    for n in names:
        if n not in pairs:
            rows.append({"structure": n, "reference": None})
            continue
        pi = nib.load(str(results / "segmentations" / f"{n}.nii.gz"))
        ri = nib.load(str(ref_dir(study_dir) / "segmentations" / f"{pairs[n]}.nii.gz"))
        spacing = [float(z) for z in pi.header.get_zooms()[: len(pi.shape)]]
        m = structure_metrics(np.asanyarray(pi.dataobj) > 0, np.asanyarray(ri.dataobj) > 0, spacing, tolerance_mm)
        rows.append({"structure": n, "reference": pairs[n], "dice": clean(m["dice"]), "hd95_mm": clean(m["hd95_mm"]),
                     "surface_dice": clean(m["surface_dice"]), "volume_cc": clean(m["volume_pred_cc"]),
                     "volume_ref_cc": clean(m["volume_ref_cc"]), "tolerance_mm": tolerance_mm})
    for r in ref_names:
        if r not in pairs.values():
            rows.append({"structure": None, "reference": r})
    for old in ref_dir(study_dir).glob("metrics-*.json"):
        old.unlink(missing_ok=True)
    cache.write_text(json.dumps(rows))
    return rows
