"""Other tools as RT Structure Set writers and readers: rt-utils (Python) and plastimatch (a program).

Used by the cross-tool tests (``tests/dicom/test_rtstruct_interop.py``) and the interop benchmark
(``benchmarks/rtstruct_interop.py``) to check that a structure set another tool wrote imports as
the masks that tool was given, and that one delineo wrote reads the same in the other tool. Each
function takes and returns masks in delineo's layout, ``{name: bool (i, j, k)}`` on a
:class:`~delineo.dicom.series.CTSeries` grid (``i`` column, ``j`` row, ``k`` slice along the
normal); the tools' own layouts are converted here and nowhere else.

Conventions (``docs/dicom.md``): rt-utils traces ``cv2.findContours`` polygons through the
centres of the boundary voxels and reads with ``cv2.fillPoly`` after rounding each vertex to the
nearest pixel; plastimatch traces voxel-edge polygons and fills the pixel centres inside.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from delineo.dicom.series import CTSeries

#: seconds any one plastimatch run may take before it is stopped
PLASTIMATCH_TIMEOUT = 300


def rtutils_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("rt-utils")
    except Exception:  # noqa: BLE001 - not installed
        return None


def plastimatch_program() -> str | None:
    return shutil.which("plastimatch")


def plastimatch_version() -> str | None:
    exe = plastimatch_program()
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr).strip().splitlines()[-1] if (out.stdout + out.stderr).strip() else "?"


def rtutils_write(ct_dir: str | Path, masks: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """rt-utils' ``RTStructBuilder.create_new`` + ``add_roi`` (its defaults) for the CT series in
    ``ct_dir`` (a folder holding that series only). rt-utils' masks are ``(row, column, slice)``."""
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_new(dicom_series_path=str(ct_dir))
    for name, mask in masks.items():
        if mask.any():  # rt-utils refuses an empty mask
            rt.add_roi(mask=np.ascontiguousarray(mask.transpose(1, 0, 2)).astype(bool), name=name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rt.save(str(path))
    return path


def rtutils_read(ct_dir: str | Path, path: str | Path) -> dict[str, np.ndarray]:
    """rt-utils' ``RTStructBuilder.create_from`` + ``get_roi_mask_by_name`` for every ROI."""
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_from(dicom_series_path=str(ct_dir), rt_struct_path=str(path))
    return {name: rt.get_roi_mask_by_name(name).transpose(1, 0, 2).astype(bool) for name in rt.get_roi_names()}


def _run(args: list[str], what: str) -> None:
    exe = plastimatch_program()
    if exe is None:
        raise RuntimeError("plastimatch is not installed (Debian package plastimatch; make system-deps)")
    out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=PLASTIMATCH_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"plastimatch {what} failed ({out.returncode}): {(out.stdout + out.stderr)[-2000:]}")


def plastimatch_write(series: CTSeries, ct_dir: str | Path, masks: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """``plastimatch convert --input-prefix <one NIfTI mask per structure> --referenced-ct ct_dir
    --output-dicom``: plastimatch traces the masks and writes an RT Structure Set referencing the series."""
    from delineo.data.io import write_mask

    with tempfile.TemporaryDirectory(prefix="delineo-plastimatch-") as tmp:
        tmp = Path(tmp)
        for name, mask in masks.items():
            write_mask(tmp / "masks" / f"{name}.nii.gz", mask, series.image)
        _run(["convert", "--input-prefix", str(tmp / "masks"), "--referenced-ct", str(ct_dir),
              "--output-dicom", str(tmp / "out")], "convert (write)")
        found = [p for p in (tmp / "out").rglob("*") if p.is_file() and _is_rtstruct(p)]
        if len(found) != 1:
            raise RuntimeError(f"plastimatch wrote {len(found)} RT Structure Sets, expected one")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], path)
    return path


def plastimatch_read(series: CTSeries, ct_dir: str | Path, path: str | Path, *, xor_contours: bool = False) -> dict[str, np.ndarray]:
    """``plastimatch convert --input rtstruct --referenced-ct ct_dir --output-prefix``: one mask per
    structure, read back and checked to be on the series' grid. plastimatch ORs the contours of a
    slice by default (a hole comes back filled); ``xor_contours`` passes ``--xor-contours`` (even-odd)."""
    from delineo.data.io import read_image

    with tempfile.TemporaryDirectory(prefix="delineo-plastimatch-") as tmp:
        tmp = Path(tmp)
        _run(["convert", "--input", str(path), "--referenced-ct", str(ct_dir), "--output-prefix", str(tmp / "masks"),
              "--prefix-format", "nii.gz", *(["--xor-contours"] if xor_contours else [])], "convert (read)")
        out = {}
        for f in sorted((tmp / "masks").glob("*.nii.gz")):
            img = read_image(f)
            out[f.name[: -len(".nii.gz")]] = _on_grid(img, series)
        return out


def _on_grid(img, series: CTSeries) -> np.ndarray:
    """A mask written by plastimatch (its own axis order, same voxels) on the series' ``(i, j, k)`` grid."""
    a = np.asarray(img.array) > 0
    # voxel of the plastimatch image -> voxel of the series, a signed permutation on the same grid
    m = np.linalg.inv(series.image.affine) @ img.affine
    perm = np.rint(m[:3, :3]).astype(int)
    if not np.allclose(m[:3, :3], perm, atol=1e-3) or a.ndim != 3:
        raise RuntimeError("plastimatch's mask is not on the CT series' grid")
    out = np.zeros(series.image.shape, bool)
    idx = np.indices(a.shape).reshape(3, -1)
    dst = np.rint(m[:3, :3] @ idx + m[:3, 3:4]).astype(int)
    ok = np.all((dst >= 0) & (dst < np.array(out.shape)[:, None]), axis=0)
    flat = a.reshape(-1)
    out[tuple(dst[:, ok])] = flat[ok]
    return out


def _is_rtstruct(p: Path) -> bool:
    import pydicom

    try:
        return str(pydicom.dcmread(p, stop_before_pixels=True).get("Modality", "")) == "RTSTRUCT"
    except Exception:  # noqa: BLE001 - not DICOM
        return False
