"""Files under the data directory.

``$DELINEO_HOME/uploads/<tmp>.part/``        an upload being received (removed on any error)
``$DELINEO_HOME/studies/<study>/input/``     the stored input: ``ct.nii.gz``, ``image.png`` or ``dicom/``
``$DELINEO_HOME/studies/<study>/view/``      the CT as NIfTI for the viewer (DICOM studies)
``$DELINEO_HOME/studies/<study>/results/<job>/``  what ``delineo.api.contour`` wrote

Uploaded content is checked before it is kept: a NIfTI or PNG must be readable by the engine,
a zip must hold no absolute or ``..`` paths, links, or more uncompressed data than allowed
(total size and compression ratio, so zip bombs are refused), no damaged entries (bad CRC, cut
short) and no compression method Python cannot read (refused with 422 naming the entry), and
every DICOM file must be readable by pydicom and belong to one image series. Stored file names
are made here (``00001_<safe name>``), never taken as paths from the client.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from delineo.service.config import Settings


class UploadRejected(Exception):
    """An upload refused for its content; ``status`` is the HTTP status, ``message`` is for a person."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


#: compression methods Python's zipfile reads: stored, deflate, bzip2, lzma
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "dicomdir"}
NIFTI_EXT = (".nii.gz", ".nii")


def safe_name(name: str, default: str = "file") -> str:
    """A file name with no directory part and only harmless characters."""
    base = PurePosixPath(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or default
    return base[:120]


@dataclass
class StoredInput:
    """What an accepted upload became: ``kind`` nifti | png | dicom, ``path`` relative to the study folder."""

    kind: str
    path: str
    name: str
    size_bytes: int
    info: dict[str, Any] = field(default_factory=dict)


class Storage:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.home
        self.uploads = self.home / "uploads"
        self.studies = self.home / "studies"
        for d in (self.uploads, self.studies):
            d.mkdir(parents=True, exist_ok=True)

    # ---- locations --------------------------------------------------------------------------
    def study_dir(self, study_id: str) -> Path:
        return self.studies / study_id

    def input_path(self, study_id: str, rel: str) -> Path:
        return self.study_dir(study_id) / rel

    def results_dir(self, study_id: str, job_id: str) -> Path:
        return self.study_dir(study_id) / "results" / job_id

    def new_upload_dir(self) -> Path:
        d = self.uploads / f"{uuid.uuid4().hex}.part"
        d.mkdir(parents=True)
        return d

    def discard(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def delete_study(self, study_id: str) -> None:
        shutil.rmtree(self.study_dir(study_id), ignore_errors=True)

    def clean_partial_uploads(self) -> int:
        """Remove uploads left half-written by a crash (called on start-up)."""
        n = 0
        for p in self.uploads.glob("*.part"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    # ---- accepting an upload ------------------------------------------------------------------
    def accept(self, upload_dir: Path, files: list[tuple[str, Path]], study_id: str) -> StoredInput:
        """Check the received files (``(client name, temp path)`` inside ``upload_dir``) and move
        them into the study folder. Raises :class:`UploadRejected`; the caller removes ``upload_dir``."""
        if not files:
            raise UploadRejected("no file was uploaded: choose a NIfTI CT (.nii/.nii.gz), a zip of DICOM files or a DICOM folder", 400)
        files = [(n, p) for n, p in files if safe_name(n).lower() not in IGNORED_NAMES and not PurePosixPath(n).name.startswith(".")]
        if not files:
            raise UploadRejected("the upload holds only system files (.DS_Store, DICOMDIR, ...), no image", 422)
        target = self.study_dir(study_id) / "input"
        if len(files) == 1:
            name, path = files[0]
            lower = name.lower()
            if lower.endswith(NIFTI_EXT):
                return self._accept_nifti(name, path, target)
            if lower.endswith(".png"):
                return self._accept_png(name, path, target)
            if lower.endswith(".zip") or zipfile.is_zipfile(path):
                extracted = upload_dir / "unzipped"
                members = self._safe_extract(name, path, extracted)
                nifti = [m for m in members if m[0].lower().endswith(NIFTI_EXT)]
                if len(nifti) == 1 and len(members) == 1:
                    return self._accept_nifti(nifti[0][0], nifti[0][1], target, size=path.stat().st_size)
                return self._accept_dicom(members, target, label=name, size=path.stat().st_size)
        if any(n.lower().endswith((".zip", *NIFTI_EXT, ".png")) for n, _ in files) and len(files) > 1:
            raise UploadRejected("upload one NIfTI, PNG or zip file at a time (several files are read as one DICOM series)", 422)
        return self._accept_dicom(files, target, label=_common_folder(files), size=sum(p.stat().st_size for _, p in files))

    def _accept_nifti(self, name: str, path: Path, target: Path, size: int | None = None) -> StoredInput:
        from delineo.data.io import read_image
        from delineo.errors import InputError

        ext = ".nii.gz" if name.lower().endswith(".nii.gz") else ".nii"
        if ext == ".nii.gz" and not _is_gzip(path):
            raise UploadRejected(f"{name}: not a NIfTI image (a .nii.gz file must be gzip-compressed)", 422)
        from delineo.service.nifti_limits import NiftiRefused, check_nifti_file

        try:  # the header's voxel count and size, then the decompressed size: before nibabel reads the data
            check_nifti_file(path, max_voxels=self.settings.max_voxels, max_bytes=self.settings.max_nifti_bytes)
        except NiftiRefused as exc:
            raise UploadRejected(f"{name}: {exc.message}", exc.status) from None
        staged = path.with_name("ct" + ext)
        path.replace(staged)
        try:
            image = read_image(staged)
        except InputError as exc:
            raise UploadRejected(f"{name}: {exc.problem}", 422) from None
        except Exception as exc:
            raise UploadRejected(f"{name}: not a readable NIfTI image ({exc.__class__.__name__})", 422) from None
        if image.array.ndim not in (2, 3):
            raise UploadRejected(f"{name}: expected a 3D CT volume, got an image of shape {tuple(image.shape)}", 422)
        info = {"shape": list(image.shape), "spacing_mm": [round(s, 4) for s in image.spacing_mm], "dims": image.array.ndim}
        target.mkdir(parents=True, exist_ok=True)
        final = target / ("ct" + ext)
        shutil.move(str(staged), final)
        return StoredInput("nifti", f"input/ct{ext}", _strip_ext(name), size or final.stat().st_size, info)

    def _accept_png(self, name: str, path: Path, target: Path) -> StoredInput:
        from PIL import Image as PILImage

        try:
            with PILImage.open(path) as im:
                im.verify()
            with PILImage.open(path) as im:
                w, h = im.size
        except Exception:
            raise UploadRejected(f"{name}: not a readable PNG image", 422) from None
        target.mkdir(parents=True, exist_ok=True)
        final = target / "image.png"
        shutil.move(str(path), final)
        return StoredInput("png", "input/image.png", _strip_ext(name), final.stat().st_size, {"shape": [h, w], "dims": 2})

    def _safe_extract(self, name: str, path: Path, out: Path) -> list[tuple[str, Path]]:
        s = self.settings
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError):
            raise UploadRejected(f"{name}: not a readable zip file", 422) from None
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > s.max_files:
                raise UploadRejected(f"{name}: the zip holds {len(infos)} files, more than the {s.max_files} allowed", 413)
            total = 0
            compressed = 0
            for info in infos:
                p = PurePosixPath(info.filename.replace("\\", "/"))
                if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", info.filename):
                    raise UploadRejected(f"{name}: refused, the zip holds a path outside its folder ({info.filename!r})", 422)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UploadRejected(f"{name}: refused, the zip holds a symbolic link ({info.filename!r})", 422)
                if info.flag_bits & 0x1:
                    raise UploadRejected(f"{name}: the zip is password-protected; upload an unencrypted zip", 422)
                if info.compress_type not in ZIP_METHODS:
                    raise UploadRejected(f"{name}: {info.filename!r} is compressed with method {info.compress_type}, which this "
                                         "server cannot read; zip it again with the usual method (deflate)", 422)
                total += info.file_size
                compressed += info.compress_size
                if info.file_size > 1024 * 1024 and info.file_size > s.max_zip_ratio * max(info.compress_size, 1):
                    raise UploadRejected(f"{name}: refused as a zip bomb ({info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}-fold)", 413)
            if total > s.max_unzipped_bytes:
                raise UploadRejected(f"{name}: the zip expands to {total / 2**20:.0f} MB, more than the {s.max_unzipped_mb:.0f} MB allowed", 413)
            if total > 1024 * 1024 and total > s.max_zip_ratio * max(compressed, 1):
                raise UploadRejected(f"{name}: refused as a zip bomb (expands {total / max(compressed, 1):.0f}-fold)", 413)
            out.mkdir(parents=True, exist_ok=True)
            members = []
            written = 0
            for i, info in enumerate(infos):
                base = PurePosixPath(info.filename.replace("\\", "/")).name
                if base.lower() in IGNORED_NAMES or base.startswith(".") or info.filename.startswith("__MACOSX/"):
                    continue
                dest = out / f"{i:05d}_{safe_name(base)}"
                # copy in chunks and count: the sizes in the zip's directory may lie; a damaged
                # entry (bad CRC, cut short, undecodable) is refused by name, not a server error
                try:
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > s.max_unzipped_bytes or written > s.max_zip_ratio * max(compressed, 1) + 1024 * 1024:
                                raise UploadRejected(f"{name}: refused as a zip bomb (expands beyond what its directory declares)", 413)
                            dst.write(chunk)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OSError) as exc:
                    why = "its checksum (CRC) does not match" if "CRC" in str(exc) else f"{exc.__class__.__name__}: {exc}"
                    raise UploadRejected(f"{name}: the zip is damaged, {info.filename!r} cannot be read ({why})", 422) from None
                members.append((info.filename, dest))
        if not members:
            raise UploadRejected(f"{name}: the zip is empty", 422)
        return members

    def _accept_dicom(self, files: list[tuple[str, Path]], target: Path, label: str, size: int) -> StoredInput:
        info = validate_dicom_files(files)
        skip = info.pop("_skip")
        dest = target / "dicom"
        dest.mkdir(parents=True, exist_ok=True)
        for i, (name, path) in enumerate(files):
            if name not in skip:
                shutil.move(str(path), dest / f"{i:05d}_{safe_name(name, 'slice')}")
        return StoredInput("dicom", "input/dicom", _strip_ext(label) if label else info.get("description") or "DICOM series", size, info)


def validate_dicom_files(files: list[tuple[str, Path]]) -> dict[str, Any]:
    """Read every file with pydicom; refuse unreadable ones (named), keep one image series."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[tuple[str, Any]]] = {}
    skip: set[str] = set()
    for name, path in files:
        try:
            ds = pydicom.dcmread(path, defer_size=1024)  # pixel data located, not loaded
        except InvalidDicomError:
            raise UploadRejected(f"{PurePosixPath(name).name}: not a DICOM file (upload a NIfTI CT, a zip of DICOM files or a DICOM folder)", 415) from None
        except Exception as exc:
            raise UploadRejected(f"{PurePosixPath(name).name}: unreadable DICOM file ({exc.__class__.__name__})", 422) from None
        if len(ds) == 0:
            raise UploadRejected(f"{PurePosixPath(name).name}: unreadable DICOM file (truncated: nothing after its file header)", 422)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            if "Rows" in ds and "Columns" in ds:
                raise UploadRejected(f"{PurePosixPath(name).name}: unreadable DICOM image (truncated: its pixel data is missing)", 422)
            skip.add(name)  # RTSTRUCT, RTPLAN, ... beside the images: not the image series
            continue
        problem = _pixel_problem(ds)
        if problem:
            raise UploadRejected(f"{PurePosixPath(name).name}: unreadable DICOM image ({problem})", 422)
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        series.setdefault(uid, []).append((name, ds))
    if not series:
        raise UploadRejected("the upload holds DICOM files but no image (no pixel data); upload the CT series", 422)
    if len(series) > 1:
        desc = ", ".join(f"{str(v[0][1].get('Modality', '?'))} '{str(v[0][1].get('SeriesDescription', ''))}' ({len(v)} files)" for v in series.values())
        raise UploadRejected(f"the upload holds {len(series)} image series ({desc}); upload one series at a time", 422)
    (uid, items), = series.items()
    first = items[0][1]
    modality = str(first.get("Modality", ""))
    if len(items) < 2 and int(first.get("NumberOfFrames", 1) or 1) < 2:
        raise UploadRejected("the DICOM series has a single 2D slice; a CT series with several slices is needed", 422)
    return {
        "dims": 3,
        "modality": modality,
        "series_uid": uid,
        "description": str(first.get("SeriesDescription", "")) or str(first.get("StudyDescription", "")),
        "patient_id": str(first.get("PatientID", "")),
        "slices": len(items),
        "shape": [int(first.get("Columns", 0)), int(first.get("Rows", 0)), len(items)],
        "_skip": skip,
    }


def _pixel_problem(ds) -> str | None:
    """For uncompressed pixel data: is all of it in the file?"""
    try:
        ts = ds.file_meta.TransferSyntaxUID
        if ts.is_compressed or "PixelData" not in ds:
            return None
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated) // 8
        got = len(ds.PixelData)
    except Exception as exc:  # noqa: BLE001
        return f"{exc.__class__.__name__}"
    return f"truncated: {got} of {expected} pixel bytes" if got < expected else None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _strip_ext(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    for ext in (".nii.gz", ".nii", ".png", ".zip"):
        if base.lower().endswith(ext):
            return base[: -len(ext)] or base
    return base


def _common_folder(files: list[tuple[str, Path]]) -> str:
    parts = [PurePosixPath(n.replace("\\", "/")).parts for n, _ in files]
    if parts and all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        return parts[0][0]
    return "DICOM series"


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


def disk_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
