"""Datasets, image I/O and transforms."""

from delineo.data.datasets import (
    CaseFolderDataset,
    ImageFolderDataset,
    SegmentationDataset,
    open_dataset,
    split_cases,
)
from delineo.data.io import Image, read_image, write_image, write_mask

__all__ = [
    "CaseFolderDataset",
    "Image",
    "ImageFolderDataset",
    "SegmentationDataset",
    "open_dataset",
    "read_image",
    "split_cases",
    "write_image",
    "write_mask",
]
