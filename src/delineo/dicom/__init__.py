"""DICOM in and out: CT series -> engine image, masks -> RT Structure Set / DICOM SEG, a DICOM node."""

from delineo.dicom.series import CTSeries, list_series, read_series

__all__ = ["CTSeries", "list_series", "read_series"]
