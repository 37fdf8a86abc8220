"""Overview images: the image in a display window with each structure's outline in its fixed colour.

3D volumes get one panel per view (axial, coronal, sagittal) through the centre of the
contoured structures, in radiological convention (patient right on the image left,
anterior/superior at the top), with the voxel aspect ratio respected. A CT's panels are cropped
to the body (voxels above -500 HU, with the structures and a 10 mm margin), so a small patient in a
large field of view fills the panel; the legend has a column of its own beside the panels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from delineo.contours.colors import structure_color
from delineo.data.boxes import centroid_voxel
from delineo.data.io import Image

SOFT_TISSUE_WINDOW = (40.0, 400.0)  # level, width in HU
VIEWS = ("axial", "coronal", "sagittal")
BODY_HU = -500.0  # a CT voxel above this is body (or couch), below it air
CROP_MARGIN_MM = 10.0


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(ornt, ras))


def _ras_spacing(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = np.zeros(3)
    for i, (axis, _) in enumerate(ornt):
        out[int(axis)] = spacing[i]
    return out


def _body_box(vol: np.ndarray, structures: np.ndarray, spacing: np.ndarray) -> tuple[slice, ...] | None:
    """The box (RAS voxel slices) around the body and the structures, with a margin; None if not a CT.

    The body is every voxel above ``BODY_HU``; planes holding under 1 % of the fullest plane's body
    voxels (noise, a stray bright voxel in the air) do not widen the box. An image without both air
    and body (no value below ``BODY_HU``: not a CT in HU) is not cropped.
    """
    body = vol > BODY_HU
    if body.all() or not body.any():
        return None
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = body.sum(axis=others)
        keep = counts >= max(1, 0.01 * counts.max())
        if structures.any():
            keep |= structures.any(axis=others)
        idx = np.flatnonzero(keep)
        margin = int(np.ceil(CROP_MARGIN_MM / max(float(spacing[axis]), 1e-6)))
        box.append(slice(max(0, int(idx[0]) - margin), min(vol.shape[axis], int(idx[-1]) + 1 + margin)))
    return tuple(box)


def _slice(vol: np.ndarray, view: str, index: int) -> np.ndarray:
    # RAS array -> 2D display array with rows top->bottom, cols left->right
    if view == "axial":
        s = vol[:, :, index]
    elif view == "coronal":
        s = vol[:, index, :]
    else:
        s = vol[index, :, :]
    return s.T[::-1, ::-1]


def write_overview(
    image: Image,
    masks: dict[str, np.ndarray],
    out_dir: str | Path,
    *,
    window: tuple[float, float] | None = None,
    title: str = "",
    per_view: bool = True,
    dashed: dict[str, np.ndarray] | None = None,
    line_labels: tuple[str, str] = ("given", "model"),
    review: dict[str, str] | None = None,
) -> list[Path]:
    """Write ``overview.png`` (all views side by side) and, for 3D, ``overview_<view>.png``.

    masks: ``{roi_name: bool array of image.shape}``, drawn as solid outlines. dashed: a second set
    on the same grid (e.g. a model's prediction beside the given contours), drawn dashed in the
    same colours; ``line_labels`` names the solid and dashed sets in the legend.
    window: (level, width) of the display window; default soft tissue (40, 400) HU for 3D and
    the full range for 2D images. review: ``{roi_name: note}`` for the structures to check first
    (e.g. a low quality estimate): marked in the legend in red, ``"! <name> REVIEW <note>"``, and
    listed first. Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dashed = dashed or {}
    names = list(dict.fromkeys([*masks, *dashed]))
    colors = {n: np.array(structure_color(n, i)) / 255.0 for i, n in enumerate(names)}
    review = review or {}
    shown = [n for n in names if (n in masks and masks[n].any()) or (n in dashed and dashed[n].any()) or n in review]
    shown = sorted(shown, key=lambda n: n not in review)  # flagged first
    handles = [Line2D([0], [0], color=colors[n], lw=3, label=f"! {n} REVIEW {review[n]}".rstrip() if n in review else n)
               for n in shown]
    if dashed and handles:
        handles += [Line2D([0], [0], color="0.3", lw=1.2, ls=ls, label=lab) for ls, lab in zip(("-", "--"), line_labels)]

    panels, level, width = _panels(image, masks, dashed, window)

    def draw(ax, name, img2d, masks2d, dashed2d, aspect):
        ax.imshow(img2d, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect, interpolation="nearest")
        for style, drawn in (("solid", masks2d), ("dashed", dashed2d)):
            for n, m in drawn.items():
                if m.any():
                    ax.contour(m.astype(float), levels=[0.5], colors=[colors[n]], linewidths=1.2, linestyles=style)
        ax.set_title(name, fontsize=10)
        ax.axis("off")

    written: list[Path] = []
    # constrained layout with the legend "outside right": the legend gets a column of its own, as wide
    # as its longest label, and the panels share what is left (no label is drawn over a panel)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.6, 4.6), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        draw(ax, *panel)
    if handles:
        _mark_review(fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False), review)
    if title:
        fig.suptitle(title, fontsize=11)
    path = out_dir / "overview.png"
    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)
    written.append(path)
    if per_view and len(panels) > 1:
        for panel in panels:
            name = panel[0]
            fig, ax = plt.subplots(figsize=(6.2, 5.2), layout="constrained")
            draw(ax, *panel)
            if handles:
                _mark_review(fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False), review)
            p = out_dir / f"overview_{name}.png"
            fig.savefig(p, dpi=100, facecolor="white")
            plt.close(fig)
            written.append(p)
    return written


def _panels(
    image: Image, masks: dict[str, np.ndarray], dashed: dict[str, np.ndarray], window: tuple[float, float] | None,
) -> tuple[list[tuple], float, float]:
    """The panels to draw, each ``(name, 2D image, {roi: 2D mask} solid, {roi: 2D mask} dashed,
    aspect)``, and the display window's level and width: a 2D image whole; for 3D the axial,
    coronal and sagittal slices (RAS, cropped to the body) through the structures' centre."""
    if image.array.ndim == 2:
        lo, hi = float(image.array.min()), float(image.array.max())
        level, width = window or ((lo + hi) / 2, (hi - lo) or 1.0)
        panels = [("image", image.array.astype(float), dict(masks), dict(dashed), 1.0)]
    else:
        level, width = window or SOFT_TISSUE_WINDOW
        # views, not copies (a 512 x 512 x 160 CT is 168 MB in float32, each mask 42 MB)
        vol = _to_ras(np.asarray(image.array, np.float32), image.affine)
        ras_masks = {n: _to_ras(np.asarray(m, bool), image.affine) for n, m in masks.items()}
        ras_dashed = {n: _to_ras(np.asarray(m, bool), image.affine) for n, m in dashed.items()}
        sx, sy, sz = _ras_spacing(image.affine)
        union = np.zeros(vol.shape, bool)
        for m in (*ras_masks.values(), *ras_dashed.values()):
            union |= m
        box = _body_box(vol, union, np.array([sx, sy, sz]))
        if box is not None:
            vol, union = vol[box], union[box]
            ras_masks = {n: m[box] for n, m in ras_masks.items()}
            ras_dashed = {n: m[box] for n, m in ras_dashed.items()}
        middle = centroid_voxel(union)
        centre = [int(round(c)) for c in (middle if middle is not None else np.array(vol.shape) / 2)]
        aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
        index = {"axial": centre[2], "coronal": centre[1], "sagittal": centre[0]}
        panels = [
            (v, _slice(vol, v, index[v]), {n: _slice(m, v, index[v]) for n, m in ras_masks.items()},
             {n: _slice(m, v, index[v]) for n, m in ras_dashed.items()}, aspects[v])
            for v in VIEWS
        ]
    return panels, level, width


def _mark_review(legend, review: dict[str, str]) -> None:
    for text in legend.get_texts():
        if text.get_text().startswith("! "):
            text.set_color("#c00000")
            text.set_fontweight("bold")
