"""Datasets on disk.

Two layouts, one sample format. Each sample is a dict:

``image``   float32 ``(1, *spatial)``: raw intensities (HU for CT, 0-255 for X-ray PNG)
``label``   uint8 ``(C, *spatial)``: one binary mask per structure (zeros where unknown)
``present`` bool ``(C,)``: the structure was contoured; False means *unknown*, not empty
``case``    case id (str); ``spacing_mm`` tuple; ``affine`` ``(4, 4)``; ``path`` image file

3D datasets opened with ``orientation`` (axis codes, e.g. ``"LPI"``) give every case's image and
masks in that array order, the affine adjusted (:mod:`delineo.data.orientation`); ``source_affine``
is then the file's own affine.

Case folders (3D CT)::

    DIR/<case>/ct.nii.gz
    DIR/<case>/segmentations/<ROI>.nii.gz      # missing file = not contoured

Image folders (2D, e.g. chest X-ray)::

    DIR/images/<id>.png
    DIR/<class>/<id>.png                       # 0/255, one folder per class
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from delineo.data.io import Image, as_binary_mask, is_nifti, read_image
from delineo.data.orientation import to_orientation
from delineo.errors import InputError

CT_FILE = "ct.nii.gz"
SEG_DIR = "segmentations"
IMAGES_DIR = "images"


def _roi_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _check_same_grid(image: Image, mask: Image, image_path: Path, mask_path: Path) -> None:
    if mask.shape != image.shape:
        raise InputError(mask_path, f"mask shape {mask.shape} does not match image {image_path.name} shape {image.shape}")
    if not np.allclose(mask.affine, image.affine, atol=1e-3):
        raise InputError(mask_path, f"mask affine does not match image {image_path.name} (different grid or orientation)")


class SegmentationDataset(Dataset):
    """Common base: a list of cases, a fixed structure order, presence-aware loading."""

    kind = "base"
    orientation: str | None = None  # 3D: axis codes every case is brought to (None: as stored)

    def __init__(self, root: str | Path, structures: Sequence[str] | None, cases: Sequence[str] | None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(self.root, "dataset folder does not exist")
        found = self._discover_cases()
        if not found:
            raise InputError(self.root, f"empty dataset: no cases found ({self.layout_hint})")
        if cases is not None:
            missing = sorted(set(cases) - set(found))
            if missing:
                raise InputError(self.root, f"cases not in dataset: {', '.join(missing[:5])}")
            found = [c for c in found if c in set(cases)]
        self.cases: list[str] = found
        self.structures: list[str] = list(structures) if structures else self._discover_structures()
        if not self.structures:
            raise InputError(self.root, f"no structures found ({self.layout_hint})")

    layout_hint = ""

    def _discover_cases(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _discover_structures(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_path(self, case: str) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def mask_path(self, case: str, structure: str) -> Path | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_case_image(self, case: str) -> Image:
        return read_image(self.image_path(case))

    def __len__(self) -> int:
        return len(self.cases)

    def presence(self, case: str) -> np.ndarray:
        """bool ``(C,)``: which structures are contoured for ``case`` (no pixel data is read)."""
        return np.array([self.mask_path(case, s) is not None for s in self.structures], dtype=bool)

    def presence_matrix(self) -> np.ndarray:
        """bool ``(N, C)``: presence of every structure in every case."""
        return np.stack([self.presence(c) for c in self.cases])

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        image_path = self.image_path(case)
        image = self.read_case_image(case)
        labels = np.zeros((len(self.structures), *image.shape), dtype=np.uint8)
        present = np.zeros(len(self.structures), dtype=bool)
        for c, structure in enumerate(self.structures):
            mask_path = self.mask_path(case, structure)
            if mask_path is None:
                continue
            mask = read_image(mask_path, pixel_spacing_mm=image.spacing_mm[0])
            _check_same_grid(image, mask, image_path, mask_path)
            labels[c] = as_binary_mask(mask, mask_path)
            present[c] = True
        source_affine = image.affine
        if self.orientation and image.array.ndim == 3:
            image, reo = to_orientation(image, self.orientation, image_path)
            labels = reo.forward(labels)
        return {
            "image": image.array.astype(np.float32)[None],
            "label": labels,
            "present": present,
            "case": case,
            "spacing_mm": image.spacing_mm,
            "affine": image.affine,
            "source_affine": source_affine,
            "path": str(image_path),
        }


class CaseFolderDataset(SegmentationDataset):
    """3D CT case folders: ``DIR/<case>/ct.nii.gz`` + ``DIR/<case>/segmentations/<ROI>.nii.gz``."""

    kind = "case_folder"
    layout_hint = "expected DIR/<case>/ct.nii.gz with DIR/<case>/segmentations/<ROI>.nii.gz"

    def __init__(
        self, root: str | Path, structures: Sequence[str] | None = None, cases: Sequence[str] | None = None,
        orientation: str | None = None,
    ):
        super().__init__(root, structures, cases)
        self.orientation = orientation

    def _discover_cases(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / CT_FILE).is_file())

    def _discover_structures(self) -> list[str]:
        names: set[str] = set()
        for case in self.cases:
            seg = self.root / case / SEG_DIR
            if seg.is_dir():
                names.update(_roi_name(p) for p in seg.iterdir() if is_nifti(p))
        return sorted(names)

    def image_path(self, case: str) -> Path:
        return self.root / case / CT_FILE

    def mask_path(self, case: str, structure: str) -> Path | None:
        for suffix in (".nii.gz", ".nii"):
            p = self.root / case / SEG_DIR / f"{structure}{suffix}"
            if p.is_file():
                return p
        return None


class ImageFolderDataset(SegmentationDataset):
    """2D image folders: ``DIR/images/<id>.png`` + ``DIR/<class>/<id>.png`` (0/255).

    pixel_spacing_mm: pixel size for mm-aware metrics (PNG stores none; JSRT at 256x256 is 1.4 mm).
    """

    kind = "image_folder"
    layout_hint = "expected DIR/images/<id>.png with DIR/<class>/<id>.png masks"

    def __init__(
        self,
        root: str | Path,
        structures: Sequence[str] | None = None,
        cases: Sequence[str] | None = None,
        pixel_spacing_mm: float = 1.0,
    ):
        self.pixel_spacing_mm = float(pixel_spacing_mm)
        super().__init__(root, structures, cases)

    def _discover_cases(self) -> list[str]:
        images = self.root / IMAGES_DIR
        if not images.is_dir():
            return []
        return sorted(_roi_name(p) for p in images.iterdir() if p.suffix.lower() == ".png")

    def _discover_structures(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and p.name != IMAGES_DIR and any(p.glob("*.png"))
        )

    def image_path(self, case: str) -> Path:
        return self.root / IMAGES_DIR / f"{case}.png"

    def mask_path(self, case: str, structure: str) -> Path | None:
        p = self.root / structure / f"{case}.png"
        return p if p.is_file() else None

    def read_case_image(self, case: str) -> Image:
        return read_image(self.image_path(case), pixel_spacing_mm=self.pixel_spacing_mm)


def open_dataset(
    root: str | Path,
    structures: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    pixel_spacing_mm: float = 1.0,
    orientation: str | None = None,
) -> SegmentationDataset:
    """Open either layout, detected from what is in ``root``. ``orientation``: axis codes 3D cases
    are brought to (2D image folders have no patient axes and ignore it)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder does not exist")
    if (root / IMAGES_DIR).is_dir():
        return ImageFolderDataset(root, structures, cases, pixel_spacing_mm=pixel_spacing_mm)
    return CaseFolderDataset(root, structures, cases, orientation=orientation)


def split_cases(cases: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split: ``(train, val)``, both sorted."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = sorted(cases)
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(order) * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])
