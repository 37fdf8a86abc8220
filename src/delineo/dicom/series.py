"""Read a CT series (a folder or a zip of DICOM files) into the engine's :class:`~delineo.data.io.Image`.

Geometry: DICOM patient coordinates are LPS (x to the patient's left, y posterior, z head);
the engine's affines are RAS, as NIfTI. The array is indexed ``[i, j, k]`` with ``i`` the
column of a slice (along ImageOrientationPatient[0:3]), ``j`` its row (along [3:6]) and ``k``
the slice, sorted along the normal ``row x column`` (the layout nibabel and ITK give NIfTI
converted from DICOM). Values are Hounsfield units (rescale slope/intercept applied).

Refused, with the file named: unreadable or truncated files, several series without a
choice (the error lists them), non-CT modality, mixed orientation or size, gantry tilt (slice
positions not along the normal), duplicate positions, missing slices and uneven spacing.
Compressed transfer syntaxes decode through pydicom's optional decoders (pylibjpeg).
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from delineo.data.io import Image
from delineo.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class CTSeries:
    """A CT series on the engine's grid, with what derived objects (RTSTRUCT, SEG) must reference.

    image: HU ``(cols, rows, slices)`` float32 with a RAS affine; datasets: the slices' headers in
    ``k`` order (their pixel data is released once ``image`` holds it: SEG and RT Structure Set
    reference the slices, they do not copy them; 168 MB saved on a 512 x 512 x 160 CT);
    lps_affine: voxel ``(i, j, k)`` -> LPS mm.
    """

    image: Image
    datasets: list[Dataset]
    lps_affine: np.ndarray
    source: Path
    files: list[Path] = field(default_factory=list)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(d.SOPInstanceUID) for d in self.datasets]

    def check_masks(self, masks: Mapping[str, np.ndarray]) -> None:
        """Refuse masks (``{roi_name: (i, j, k) array}``) that are not on this series' grid."""
        shape = self.image.shape
        for name, m in masks.items():
            if m.shape != shape:
                raise InputError(None, f"mask {name!r} has shape {m.shape}, the series {shape}")


def new_instance(sop_class_uid: str) -> Dataset:
    """A new, empty instance of ``sop_class_uid`` with a fresh SOP Instance UID and Part 10 file
    meta (explicit VR little endian, pydicom's implementation UID)."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class_uid, sop_uid
    return ds


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _read_headers(files: list[Path]) -> list[tuple[Path, Dataset]]:
    """Every DICOM file's header; files that are not DICOM at all (no preamble) are skipped,
    broken DICOM files are refused by name."""
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # not DICOM (a README, a DICOMDIR viewer, ...)
        except Exception as exc:  # truncated or corrupt
            raise InputError(f, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
        if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
            if _has_dicom_preamble(f):  # a DICOM file cut short before its identifying attributes
                raise InputError(f, "truncated or incomplete DICOM file (no SOP Class or Series Instance UID)")
            continue
        out.append((f, ds))
    return out


def list_series(path: str | Path) -> dict[str, dict]:
    """The image series in a folder or zip: ``{SeriesInstanceUID: {modality, description, files}}``."""
    with _opened(path) as folder:
        return _summaries(_read_headers(_dicom_files(folder)))


def _summaries(headers: list[tuple[Path, Dataset]]) -> dict[str, dict]:
    series: dict[str, dict] = {}
    for f, ds in headers:
        if "SeriesInstanceUID" not in ds:
            continue
        s = series.setdefault(str(ds.SeriesInstanceUID), {
            "modality": str(ds.get("Modality", "?")), "description": str(ds.get("SeriesDescription", "")),
            "sop_class": str(ds.SOPClassUID), "files": 0,
        })
        s["files"] += 1
    return series


class _opened:
    """Context manager: a folder as is, or a zip extracted to a temporary folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        if self.path.is_dir():
            return self.path
        if self.path.is_file() and zipfile.is_zipfile(self.path):
            self._tmp = tempfile.TemporaryDirectory(prefix="delineo-dicom-")
            try:
                with zipfile.ZipFile(self.path) as z:
                    root = Path(self._tmp.name).resolve()
                    for info in z.infolist():
                        target = (root / info.filename).resolve()
                        if target != root and not target.is_relative_to(root):
                            raise InputError(self.path, f"zip entry {info.filename!r} points outside the archive")
                    z.extractall(root)
            except (zipfile.BadZipFile, NotImplementedError, EOFError, RuntimeError, ValueError) as exc:
                self._tmp.cleanup()
                raise InputError(self.path, f"damaged or unsupported zip ({type(exc).__name__}: {exc})") from None
            except InputError:
                self._tmp.cleanup()
                raise
            return Path(self._tmp.name)
        if not self.path.exists():
            raise InputError(self.path, "no such file or folder")
        raise InputError(self.path, "not a folder of DICOM files or a zip of them")

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def is_dicom_input(path: str | Path) -> bool:
    """A folder (holding DICOM files) or a zip: the inputs :func:`read_series` takes."""
    p = Path(path)
    return p.is_dir() or (p.is_file() and p.suffix.lower() == ".zip")


def read_series(path: str | Path, series_uid: str | None = None) -> CTSeries:
    """Read one CT series from a folder or zip (see the module docstring for what is refused)."""
    path = Path(path)
    with _opened(path) as folder:
        headers = _read_headers(_dicom_files(folder))
        if not headers:
            raise InputError(path, "no DICOM files found")
        summaries = _summaries(headers)
        images = {uid: s for uid, s in summaries.items() if s["sop_class"] not in ("1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.66.4")}
        if series_uid is None:
            if len(images) > 1:
                listing = "; ".join(f"{uid} ({s['modality']}, {s['files']} files{', ' + s['description'] if s['description'] else ''})" for uid, s in images.items())
                raise InputError(path, f"{len(images)} image series found, choose one with --series-uid: {listing}")
            if not images:
                raise InputError(path, "no image series found (only structure sets or segmentations)")
            series_uid = next(iter(images))
        if series_uid not in summaries:
            raise InputError(path, f"no series {series_uid}; found: {', '.join(summaries)}")
        chosen = [(f, ds) for f, ds in headers if str(ds.get("SeriesInstanceUID", "")) == series_uid]
        modality = str(chosen[0][1].get("Modality", "?"))
        if modality != "CT":
            raise InputError(path, f"series {series_uid} is {modality}, not CT")
        if str(chosen[0][1].SOPClassUID) == ENHANCED_CT_IMAGE_STORAGE:
            raise InputError(path, "Enhanced CT (multi-frame) is not supported; export the series as CT Image Storage")
        files = [f for f, _ in chosen]
        datasets = []
        for f in files:
            try:
                ds = pydicom.dcmread(f)
                ds.pixel_array  # decode now: a truncated or undecodable file is named here
            except Exception as exc:
                raise InputError(f, f"cannot read the pixel data ({type(exc).__name__}: {exc})") from exc
            datasets.append(ds)
        return _assemble(path, files, datasets)


def _geometry_error(path: Path, f: Path, problem: str) -> InputError:
    return InputError(f, f"{problem} (series in {path})")


def _assemble(path: Path, files: list[Path], datasets: list[Dataset]) -> CTSeries:
    ref = datasets[0]
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        for f, ds in zip(files, datasets):
            if key not in ds:
                raise _geometry_error(path, f, f"missing {key}")
    iop = np.array(ref.ImageOrientationPatient, float)
    size = (int(ref.Rows), int(ref.Columns))
    spacing = np.array(ref.PixelSpacing, float)
    for f, ds in zip(files, datasets):
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise _geometry_error(path, f, "slice orientation differs from the rest of the series")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise _geometry_error(path, f, f"slice size {ds.Rows}x{ds.Columns} differs from {size[0]}x{size[1]}")
        if not np.allclose(np.array(ds.PixelSpacing, float), spacing, atol=1e-4):
            raise _geometry_error(path, f, "pixel spacing differs from the rest of the series")
        tilt = float(ds.get("GantryDetectorTilt", 0) or 0)
        if abs(tilt) > 1e-3:
            raise _geometry_error(path, f, f"gantry tilt of {tilt} degrees is not supported (resample the series first)")
    x, y = iop[:3], iop[3:]
    normal = np.cross(x, y)
    positions = np.array([np.array(ds.ImagePositionPatient, float) for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    datasets = [datasets[i] for i in order]
    positions, along = positions[order], along[order]
    if len(datasets) > 1:
        steps = np.diff(along)
        if np.any(steps < 1e-3):
            k = int(np.argmin(steps))
            raise _geometry_error(path, files[k + 1], "two slices share the same position")
        offsets = positions[1:] - positions[:-1]
        perpendicular = offsets - np.outer(offsets @ normal, normal)
        if np.max(np.linalg.norm(perpendicular, axis=1)) > 1e-2 * max(1.0, float(np.median(steps))):
            raise _geometry_error(path, files[0], "slice positions are not along the slice normal (gantry tilt or a mixed series)")
        dz = float(np.median(steps))
        bad = np.abs(steps - dz) > max(0.01, 0.01 * dz)
        if bad.any():
            k = int(np.argmax(bad))
            what = f"missing slice(s) between positions {along[k]:.2f} and {along[k + 1]:.2f} mm" if steps[k] > 1.5 * dz \
                else f"uneven slice spacing ({steps[k]:.3f} mm where the series has {dz:.3f} mm)"
            raise _geometry_error(path, files[k + 1], what)
    else:
        dz = float(ref.get("SliceThickness", 1.0) or 1.0)
    # voxel (i = column, j = row, k = slice) -> LPS mm
    lps = np.eye(4)
    lps[:3, 0] = x * spacing[1]  # PixelSpacing = [between rows, between columns]
    lps[:3, 1] = y * spacing[0]
    lps[:3, 2] = normal * dz
    lps[:3, 3] = positions[0]
    volume = np.empty((size[1], size[0], len(datasets)), np.float32)
    for k, ds in enumerate(datasets):
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        volume[:, :, k] = (ds.pixel_array.astype(np.float32) * slope + intercept).T
        del ds.PixelData  # and pydicom's decoded copy with it: the volume holds the values now
    return CTSeries(Image(volume, LPS_TO_RAS @ lps), datasets, lps, path, files)


# ---- checks of single received instances (the DICOM node refuses these at C-STORE time) ------

_UID_CHARS = frozenset("0123456789.")


def is_valid_uid(value) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters, no empty component. Anything else
    (``../x``, ``/etc``, spaces, a NUL) is refused before it can name a file or folder."""
    s = str(value) if value is not None else ""
    return 0 < len(s) <= 64 and set(s) <= _UID_CHARS and all(s.split("."))


_REQUIRED_CT = ("Rows", "Columns", "BitsAllocated", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient")


def instance_problem(ds: Dataset, affected_sop_uid: str | None = None) -> str | None:
    """Why a received CT Image Storage instance cannot be used, for the sender (short), or None.

    Checks: the UIDs that name files are valid UIDs (and the SOP Instance UID is the one the
    C-STORE request announced), the geometry attributes are present and well-formed, and the
    pixel data is all there and decodes (a truncated instance is refused here, not at contouring).
    """
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not is_valid_uid(ds.get(key)):
            return f"invalid or missing {key}"
    if "FrameOfReferenceUID" in ds and not is_valid_uid(ds.FrameOfReferenceUID):
        return "invalid FrameOfReferenceUID"
    if affected_sop_uid is not None and str(ds.SOPInstanceUID) != str(affected_sop_uid):
        return "SOPInstanceUID differs from the C-STORE request"
    for key in _REQUIRED_CT:
        if key not in ds or ds[key].value in (None, "", b""):
            return f"missing {key}"
    try:
        if len(ds.ImagePositionPatient) != 3 or len(ds.ImageOrientationPatient) != 6 or len(ds.PixelSpacing) != 2:
            return "malformed geometry (position, orientation or pixel spacing)"
        values = [float(v) for v in (*ds.ImagePositionPatient, *ds.ImageOrientationPatient, *ds.PixelSpacing)]
        if not np.all(np.isfinite(values)) or min(float(v) for v in ds.PixelSpacing) <= 0:
            return "malformed geometry (position, orientation or pixel spacing)"
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    except (TypeError, ValueError):
        return "malformed geometry (position, orientation or pixel spacing)"
    if rows < 1 or cols < 1:
        return f"empty image ({rows}x{cols})"
    if "PixelData" not in ds:
        return "no pixel data (truncated?)"
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and not ts.is_compressed:
        expected = rows * cols * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.get("NumberOfFrames", 1) or 1) * bits // 8
        got = len(ds.PixelData or b"")
        if got < expected:
            return f"truncated: {got} of {expected} pixel bytes"
    try:
        ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure: the sender must resend
        return f"pixel data does not decode ({type(exc).__name__})"
    return None
