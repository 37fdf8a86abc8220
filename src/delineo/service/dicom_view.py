"""What the viewer needs to speak a planning system's language for a DICOM study: each slice's
position along the slice normal with its Instance Number, and the voxel spacing (issue 37, item 7).
Read from the stored series' headers once, kept in ``view/geometry.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def geometry(folder: Path, cache: Path) -> dict[str, Any] | None:
    """``{"normal": [x, y, z] (LPS), "slices": [[position_mm, instance_number], ...] (by position),
    "spacing_mm": [column, row, slice]}``, or None when the headers do not say."""
    try:
        return json.loads(Path(cache).read_text())
    except (OSError, ValueError):
        pass
    import numpy as np
    import pydicom

    rows: list[tuple[float, int]] = []
    normal = None
    spacing = None
    for f in sorted(Path(folder).rglob("*")):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True,
                                 specific_tags=["ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "PixelSpacing"])
            ipp = [float(v) for v in ds.ImagePositionPatient]
            iop = [float(v) for v in ds.ImageOrientationPatient]
        except Exception:  # noqa: BLE001 - not an image of the series
            continue
        if normal is None:
            normal = np.cross(iop[:3], iop[3:])
            ps = ds.get("PixelSpacing")
            spacing = [float(ps[1]), float(ps[0])] if ps else None
        rows.append((float(np.dot(ipp, normal)), int(ds.get("InstanceNumber", 0) or 0)))
    if normal is None or not rows:
        return None
    rows.sort()
    gaps = [b[0] - a[0] for a, b in zip(rows, rows[1:]) if b[0] - a[0] > 1e-3]
    out = {"normal": [round(float(v), 6) for v in normal], "slices": [[round(p, 3), n] for p, n in rows],
           "spacing_mm": (spacing + [round(float(np.median(gaps)), 4)]) if spacing and gaps else spacing}
    try:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        Path(cache).write_text(json.dumps(out))
    except OSError:
        pass
    return out
