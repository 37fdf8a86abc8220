"""Anatomical sanity checks on finished contours: a guard for orientation errors that slipped through.

Run on the masks in the input's own voxel order, using the image's affine (RAS world, mm):

``laterality``  a structure named for a side (``LeftParotid``, ``Parotid_R``, ``Lung_L`` ...) lies
                on that side of the patient: its centroid on that side of the body's midline
                (RAS: the patient's left is -x) and, when its partner is contoured, on that side
                of the partner. A left/right swap fails both structures.
``craniocaudal`` the brainstem lies above the spinal cord (RAS: superior is +z).

A failed check flags the structures it names; :func:`delineo.api.contour_image` puts the flags in
``summary.json``, the RT Structure Set's ROI descriptions and the log.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from delineo.data.boxes import centroid_voxel

# a side token at the start or end of a name: LeftParotid, Left_Parotid, Parotid_L, Parotid-R, Lung L
_SIDE = re.compile(r"^(?P<pre>left|right)[_\- ]?(?P<rest1>.+)$|^(?P<rest2>.+?)[_\- ](?P<post>l|r|left|right)$", re.IGNORECASE)
#: body threshold (HU) for the midline: air outside the patient is about -1000
BODY_HU = -300.0


@dataclass
class Check:
    """One anatomical check: ``passed`` False flags ``structures``; ``message`` says why."""

    name: str
    structures: list[str]
    passed: bool
    message: str
    values_mm: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def side_of(roi_name: str) -> tuple[str, str] | None:
    """``("left", "parotid")`` for ``LeftParotid`` / ``Parotid_L``; None for names without a side."""
    m = _SIDE.match(roi_name)
    if not m:
        return None
    token = (m.group("pre") or m.group("post")).lower()
    rest = (m.group("rest1") or m.group("rest2")).lower().strip("_- ")
    return ("left" if token.startswith("l") else "right"), rest


def centroid_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """Centroid (RAS mm) of a 3D bool mask, None when empty."""
    c = centroid_voxel(mask)
    if c is None:
        return None
    return (np.asarray(affine)[:3, :3] @ c) + np.asarray(affine)[:3, 3]


def anatomy_checks(masks: Mapping[str, np.ndarray], affine: np.ndarray, image: np.ndarray | None = None) -> list[Check]:
    """Laterality and cranio-caudal checks for 3D masks ``{roi_name: bool (X, Y, Z)}`` on a grid with
    ``affine`` (RAS); ``image`` (HU, same grid) gives the body's midline for structures without a partner."""
    checks: list[Check] = []
    centroids = {n: centroid_ras(m, affine) for n, m in masks.items() if np.asarray(m).ndim == 3}
    midline = None
    if image is not None and np.asarray(image).ndim == 3:
        body = np.asarray(image) > BODY_HU
        c = centroid_ras(body, affine)
        midline = None if c is None else float(c[0])
    sided: dict[str, dict[str, str]] = {}
    for name in centroids:
        s = side_of(name)
        if s:
            sided.setdefault(s[1], {})[s[0]] = name
    for organ, sides in sorted(sided.items()):
        for side, name in sorted(sides.items()):
            c = centroids[name]
            if c is None:
                continue
            values = {"centroid_x_ras": round(float(c[0]), 1)}
            problems = []
            # RAS: the patient's left is -x, the right +x
            if midline is not None:
                values["midline_x_ras"] = round(midline, 1)
                if (side == "left" and c[0] > midline) or (side == "right" and c[0] < midline):
                    problems.append(f"its centre is {abs(c[0] - midline):.0f} mm on the patient's {'right' if side == 'left' else 'left'} of the midline")
            other = sides.get("right" if side == "left" else "left")
            oc = centroids.get(other) if other else None
            if oc is not None:
                values[f"{other}_centroid_x_ras"] = round(float(oc[0]), 1)
                if (side == "left" and c[0] > oc[0]) or (side == "right" and c[0] < oc[0]):
                    problems.append(f"it lies on the patient's {'right' if side == 'left' else 'left'} of {other}")
            checks.append(
                Check(
                    "laterality", [name], not problems,
                    f"{name} is a {side}-sided structure but " + " and ".join(problems) + " (left/right swapped?)"
                    if problems else f"{name} lies on the patient's {side}",
                    values,
                )
            )
    brainstem = next((n for n in centroids if n.lower() == "brainstem"), None)
    cord = next((n for n in centroids if n.lower() in ("spinalcord", "spinal_cord", "spinal cord")), None)
    if brainstem and cord and centroids[brainstem] is not None and centroids[cord] is not None:
        zb, zc = float(centroids[brainstem][2]), float(centroids[cord][2])
        ok = zb > zc
        checks.append(
            Check(
                "craniocaudal", [brainstem, cord], ok,
                f"{brainstem} lies above {cord}" if ok else
                f"{brainstem} lies {zc - zb:.0f} mm below {cord} (head and feet swapped?)",
                {f"{brainstem}_centroid_z_ras": round(zb, 1), f"{cord}_centroid_z_ras": round(zc, 1)},
            )
        )
    return checks


def flagged_structures(checks: list[Check]) -> dict[str, list[str]]:
    """``{roi_name: [messages of the checks it failed]}``."""
    out: dict[str, list[str]] = {}
    for c in checks:
        if not c.passed:
            for n in c.structures:
                out.setdefault(n, []).append(c.message)
    return out
