"""One loader per image format: NIfTI (nibabel) for CT and 3D masks, PNG (Pillow) for 2D X-rays.

The engine's image representation is :class:`Image`: a numpy array in the file's own voxel order
(NIfTI: ``(X, Y, Z)``, PNG: ``(H, W)``) plus a 4x4 voxel-to-world affine in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delineo.data.boxes import bounding_box
from delineo.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PNG_SUFFIXES = (".png",)


@dataclass
class Image:
    """An image or mask on a voxel grid.

    array: ``(X, Y, Z)`` for volumes or ``(H, W)`` for 2D images, any dtype.
    affine: ``(4, 4)`` voxel index -> world position in mm (NIfTI convention, RAS).
    """

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, ...]:
        """Voxel size along each array axis, in mm."""
        nd = self.array.ndim
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :nd], axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def like(self, array: np.ndarray) -> "Image":
        """A new image on the same grid holding ``array``."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match grid {self.array.shape}")
        return Image(array, self.affine.copy())


def grid_affine(spacing_mm: tuple[float, ...]) -> np.ndarray:
    """Diagonal affine for an image with no stored orientation (e.g. a PNG)."""
    aff = np.eye(4)
    for i, s in enumerate(spacing_mm[:3]):
        aff[i, i] = s
    return aff


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_png(path: str | Path) -> bool:
    return str(path).lower().endswith(PNG_SUFFIXES)


def read_image(path: str | Path, pixel_spacing_mm: float = 1.0) -> Image:
    """Read a NIfTI volume or a PNG image; raise :class:`InputError` naming the file on failure.

    pixel_spacing_mm: pixel size given to PNG images, which store none.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    if is_nifti(path):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            array = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types for truncated/corrupt files
            raise InputError(path, f"not a readable NIfTI image ({exc.__class__.__name__}: {exc})") from exc
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3):
            raise InputError(path, f"expected a 2D or 3D image, got shape {array.shape}")
        return Image(np.asarray(array), np.asarray(img.affine, dtype=np.float64))
    if is_png(path):
        from PIL import Image as PILImage

        try:
            with PILImage.open(path) as im:
                im.load()
                if im.mode not in ("L", "I", "I;16", "1", "P"):
                    im = im.convert("L")
                array = np.asarray(im)
        except Exception as exc:
            raise InputError(path, f"not a readable PNG image ({exc.__class__.__name__}: {exc})") from exc
        if array.ndim != 2:
            raise InputError(path, f"expected a single-channel image, got shape {array.shape}")
        return Image(array, grid_affine((pixel_spacing_mm, pixel_spacing_mm)))
    raise InputError(path, "unsupported file type (expected .nii, .nii.gz or .png)")


def write_image(path: str | Path, image: Image) -> Path:
    """Write a NIfTI (any dimensionality) or PNG (2D, uint8) file; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_nifti(path):
        import nibabel as nib

        nib.save(nib.Nifti1Image(image.array, image.affine), str(path))
    elif is_png(path):
        from PIL import Image as PILImage

        PILImage.fromarray(np.asarray(image.array, dtype=np.uint8)).save(path)
    else:
        raise InputError(path, "unsupported output type (expected .nii, .nii.gz or .png)")
    return path


def write_mask(path: str | Path, mask: np.ndarray, like: Image) -> Path:
    """Write a binary mask on ``like``'s grid: uint8 {0,1} for NIfTI, {0,255} for PNG."""
    mask = np.asarray(mask, dtype=bool)
    if is_png(path):
        return write_image(path, like.like(mask.astype(np.uint8) * 255))
    # NIfTI stores Fortran order: a zeroed Fortran-ordered copy filled inside the mask's box is
    # written as it is, where a C-ordered mask would be transposed whole (half the time at 512 x 512)
    values = np.zeros(mask.shape, np.uint8, order="F")
    box = bounding_box(mask)
    if box is not None:
        values[box] = mask[box]
    return write_image(path, like.like(values))


def as_binary_mask(mask: Image, path: str | Path) -> np.ndarray:
    """Check a mask holds two values at most ({0,1} or {0,255}) and return it as bool."""
    values = np.unique(mask.array)
    if values.size > 2 or not set(values.tolist()) <= {0, 1, 255}:
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise InputError(path, f"mask is not binary: values {shown} (expected 0/1 or 0/255)")
    return mask.array > 0
