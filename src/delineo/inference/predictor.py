"""Inference: raw image -> model grid -> network -> input grid -> thresholded, cleaned masks.

Stages (timed separately, see :attr:`Predictor.timings`):

1. ``preprocess``  3D: the array brought to the model's orientation (axis codes in model.json);
                   optionally cropped to the body (``crop_foreground``: the bounding box of the
                   voxels above an intensity threshold, plus a margin; the rest is background);
                   intensity normalisation and resampling to the model's ``spacing_mm``
2. ``model``       whole-volume or MONAI sliding-window inference, optional mirroring TTA
3. ``postprocess`` probabilities resampled to the input grid (each structure, or each group of exclusive
                   ones, inside its own box: the input voxels whose model-grid neighbours reach
                   the threshold, or the quality estimate's floor; the same values as resampling
                   the whole grid at a cost proportional to the structures), threshold, one label per voxel within
                   each group of mutually exclusive structures (``exclusive``: the most probable
                   one), keep the N largest connected components per structure (MONAI
                   ``KeepLargestConnectedComponent``), drop components under a volume in cm³
                   (``min_component_cc``, scikit-image ``remove_small_objects``)
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.transforms import KeepLargestConnectedComponent
from monai.transforms.utils import generate_spatial_bounding_box
from skimage.morphology import remove_small_objects

from delineo.data.boxes import bounding_box
from delineo.data.io import Image, grid_affine, is_png
from delineo.data.orientation import to_orientation
from delineo.data.transforms import preprocess
from delineo.errors import InputError
from delineo.inference.quality import FLOOR, load_quality, structure_features
from delineo.machine import autocast_context, bf16_available, resolve_device
from delineo.models.registry import ModelBundle, load_model


def _pad_to_multiple(x: torch.Tensor, k: int) -> tuple[torch.Tensor, list[slice]]:
    spatial = x.shape[2:]
    target = [int(np.ceil(s / k) * k) for s in spatial]
    pads: list[int] = []
    for s, t in reversed(list(zip(spatial, target))):
        pads += [(t - s) // 2, t - s - (t - s) // 2]
    crop = [slice(None), slice(None)] + [slice((t - s) // 2, (t - s) // 2 + s) for s, t in zip(spatial, target)]
    return (F.pad(x, pads, mode="replicate") if any(pads) else x), crop


@torch.no_grad()
def predict_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    mirror: bool = False,
    amp: bool = False,
    sw_batch_size: int = 2,
) -> torch.Tensor:
    """Sigmoid probabilities ``(B, C, *spatial)`` for a normalised batch ``(B, 1, *spatial)``.

    patch_size: ``None`` runs the whole image at once (padded to the network's divisor);
    otherwise MONAI sliding-window inference with Gaussian blending and ``overlap``.
    mirror: average over all 2**ndim flips of the spatial axes (nnU-Net-style TTA).
    """
    network.eval()
    divisor = network.spec.divisor
    autocast = autocast_context(image.device, amp)

    def run(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            if patch_size is None:
                xp, crop = _pad_to_multiple(x, divisor)
                return network(xp)[tuple(crop)].float()
            with warnings.catch_warnings():  # MONAI 1.5.1 indexes with a list of slices; torch 2.13 warns on every call
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
                return sliding_window_inference(
                    x, roi_size=list(patch_size), sw_batch_size=sw_batch_size, predictor=network,
                    overlap=overlap, mode="gaussian",
                ).float()

    spatial_axes = list(range(2, image.ndim))
    flips: list[tuple[int, ...]] = [()]
    if mirror:
        flips = [c for r in range(len(spatial_axes) + 1) for c in itertools.combinations(spatial_axes, r)]
    total = None
    for axes in flips:
        x = torch.flip(image, axes) if axes else image
        p = torch.sigmoid(run(x))
        p = torch.flip(p, axes) if axes else p
        total = p if total is None else total + p
    return total / len(flips)


def keep_largest_components(masks: np.ndarray, structures: Sequence[str], keep: dict[str, int]) -> np.ndarray:
    """Keep the ``keep[name]`` largest connected components of each listed structure.

    masks: bool ``(C, *spatial)``; structures not in ``keep`` are left as they are.
    """
    out = masks.copy()
    for c, name in enumerate(structures):
        n = keep.get(name)
        if n and out[c].any():
            tool = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, num_components=int(n))
            out[c] = np.asarray(tool(torch.as_tensor(out[c][None].astype(np.uint8))))[0].astype(bool)
    return out


def remove_small_components(
    masks: np.ndarray, structures: Sequence[str], min_cc: dict[str, float], spacing_mm: Sequence[float],
) -> np.ndarray:
    """Drop every connected component (26-connected in 3D, as :func:`keep_largest_components`) of a
    listed structure whose volume is under ``min_cc[name]`` cm³ (area in cm² for 2D).

    masks: bool ``(C, *spatial)`` on a grid of ``spacing_mm`` (mm per axis, in the array's axis order);
    structures not in ``min_cc`` are left as they are. A structure made only of small components
    comes out empty."""
    out = masks.copy()
    unit = 1000.0 if len(spacing_mm) == 3 else 100.0  # mm³ per cm³, mm² per cm²
    voxel = float(np.prod([float(s) for s in spacing_mm]))
    for c, name in enumerate(structures):
        v = min_cc.get(name)
        # a component of n voxels is dropped when n * voxel < v * unit, i.e. n <= ceil(v * unit / voxel) - 1
        # (scikit-image's max_size, not MONAI's RemoveSmallObjects: its min_size maps onto a parameter
        # scikit-image 0.26 deprecates, whose boundary differs by one voxel between versions)
        largest_dropped = math.ceil(float(v) * unit / voxel) - 1 if v else 0
        if largest_dropped >= 1 and out[c].any():
            out[c] = remove_small_objects(out[c], max_size=largest_dropped, connectivity=out[c].ndim)
    return out


def keep_exclusive(probs: torch.Tensor, masks: np.ndarray, structures: Sequence[str], groups: Sequence[Sequence[str]]) -> np.ndarray:
    """Within each group of structures that never share a voxel (e.g. OpenKBP's PTV70/PTV63/PTV56,
    stored as disjoint dose levels), keep each voxel only in the group's most probable structure.

    probs: float ``(C, *spatial)``, masks: bool ``(C, *spatial)`` on the same grid; structures outside
    every group, and groups naming structures the model lacks, are left as they are."""
    if not groups:
        return masks
    out = masks.copy()
    index = {name: c for c, name in enumerate(structures)}
    for group in groups:
        channels = [index[name] for name in group if name in index]
        if len(channels) < 2:
            continue
        winner = torch.argmax(probs[channels], dim=0).cpu().numpy()
        for k, c in enumerate(channels):
            out[c] &= winner == k
    return out


def foreground_box(array: np.ndarray, spacing_mm: Sequence[float], threshold: float, margin_mm: float) -> tuple[slice, ...]:
    """The bounding box of the voxels of ``array`` (``(X, Y, Z)``, raw intensities, e.g. HU) above
    ``threshold``, grown by ``margin_mm`` on every side and clipped to the array; the whole array
    when no voxel is above it. A CT's air around the patient is most of its voxels (OpenKBP: the
    body box holds 27 % of them on average), so the network runs on the body only."""
    margin = [int(np.ceil(margin_mm / s)) for s in spacing_mm]
    start, end = generate_spatial_bounding_box(array[None], select_fn=lambda v: v > threshold, margin=margin)
    if any(e <= b for b, e in zip(start, end)):
        return tuple(slice(None) for _ in array.shape)
    return tuple(slice(max(0, int(b)), min(n, int(e))) for b, e, n in zip(start, end, array.shape))


def _units(channels: Sequence[int], groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """The channels to post-process together: each exclusive group that holds a wanted channel
    (its members compete per voxel), and every other wanted channel alone."""
    units, done = [], set()
    for c in channels:
        if c in done:
            continue
        group = next((list(g) for g in groups if c in g and len(g) > 1), [c])
        units.append(group)
        done.update(group)
    return units


def _source_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output voxel of a linear resampling ``n_in`` -> ``n_out`` (``align_corners=False``,
    as :func:`torch.nn.functional.interpolate`): the two source voxels and the second one's weight."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def input_box(probs: torch.Tensor, low: float, shape: Sequence[int]) -> tuple[slice, ...] | None:
    """The box of the output grid ``shape`` where linear resampling of ``probs`` (``(C, *model grid)``)
    can reach ``low`` in any channel: the output voxels whose source voxels touch the model-grid
    bounding box of the voxels >= ``low``; None when none is."""
    above = (probs >= low).any(0)
    if not bool(above.any()):
        return None
    out = []
    for axis, n_out in enumerate(shape):
        other = [d for d in range(above.ndim) if d != axis]
        hit = torch.nonzero(above.any(dim=other[0], keepdim=True).any(dim=other[1], keepdim=True).flatten()
                            if len(other) == 2 else above.any(dim=other[0]).flatten()).flatten().cpu().numpy()
        lo, hi = int(hit.min()), int(hit.max())
        i0, i1, _ = _source_index(above.shape[axis], int(n_out))
        j = np.flatnonzero(((i0 >= lo) & (i0 <= hi)) | ((i1 >= lo) & (i1 <= hi)))
        out.append(slice(int(j.min()), int(j.max()) + 1))
    return tuple(out)


def resample_box(probs: torch.Tensor, shape: Sequence[int], region: Sequence[slice]) -> torch.Tensor:
    """``region`` of :func:`delineo.data.transforms.resample` ``(probs, shape, "linear")``, computed
    axis by axis from the source voxels it needs only (the same weights; float rounding aside)."""
    p = probs.float()
    for axis, (n_out, r) in enumerate(zip(shape, region)):
        n_in = p.shape[axis + 1]
        if n_in == n_out:
            p = p.narrow(axis + 1, r.start, r.stop - r.start)
            continue
        i0, i1, w = _source_index(n_in, int(n_out))
        i0, i1, w = i0[r], i1[r], w[r]
        first = int(i0.min())
        part = p.narrow(axis + 1, first, int(i1.max()) + 1 - first)
        view = [1] * p.ndim
        view[axis + 1] = len(w)
        w = torch.as_tensor(w, dtype=p.dtype, device=p.device).view(view)
        a = part.index_select(axis + 1, torch.as_tensor(i0 - first, device=p.device))
        b = part.index_select(axis + 1, torch.as_tensor(i1 - first, device=p.device))
        p = a * (1 - w) + b * w
    return p


def _backward_box(reo, where: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
    """A box in the target orientation (array ``shape``) -> the same voxels' box in the input's order."""
    out = []
    for target_axis, flip in reo.ornt:
        t = int(target_axis)
        s, n = where[t], int(shape[t])
        out.append(s if flip > 0 else slice(n - s.stop, n - s.start))
    return tuple(out)


def with_model_pixel_spacing(image: Image, path, bundle: ModelBundle) -> Image:
    """A PNG stores no pixel size: give an image read from one the model's training pixel size."""
    return Image(image.array, grid_affine((bundle.pixel_spacing_mm,) * 2)) if is_png(path) else image


class Predictor:
    """Contour images with a model folder.

    >>> predictor = Predictor("cxr-jsrt")              # doctest: +SKIP
    >>> masks = predictor.predict(read_image("x.png"))  # doctest: +SKIP  {roi_name: bool array}
    """

    def __init__(
        self,
        model: ModelBundle | str,
        device: str | None = "auto",
        *,
        patch_size: Sequence[int] | None | str = "model",
        overlap: float | None = None,
        mirror: bool | None = None,
        threshold: float | None = None,
        amp: bool | None = None,
    ):
        self.device = resolve_device(device)
        self.bundle = model if isinstance(model, ModelBundle) else load_model(model, self.device)
        self.bundle.to(self.device)
        cfg = self.bundle.inference
        self.patch_size = cfg.get("patch_size") if patch_size == "model" else patch_size
        self.overlap = float(cfg.get("overlap", 0.5) if overlap is None else overlap)
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(None, f"sliding-window overlap must be at least 0 and below 1, got {self.overlap:g}")
        self.mirror = bool(cfg.get("mirror", False) if mirror is None else mirror)
        self.threshold = float(cfg.get("threshold", 0.5) if threshold is None else threshold)
        #: 3D: ``{"threshold", "margin_mm"}`` to contour the body box only, None for the whole image
        self.crop_foreground: dict[str, float] | None = cfg.get("crop_foreground") or None
        if amp is None:  # bf16 on CUDA; on a CPU with native bf16 only for a model checked in bf16 (model.json)
            amp = self.device.type == "cuda" or (cfg.get("precision") == "bf16" and bf16_available(self.device))
        self.amp = bool(amp)
        self.timings: dict[str, float] = {}
        #: the model's quality estimator (``quality.json`` in its folder), None when it has none or
        #: when it was fitted for other weights or other inference settings
        self.quality = load_quality(self.bundle.path, self.inference_settings)

    @property
    def inference_settings(self) -> dict[str, Any]:
        """The settings this predictor contours with (the model's, or those given to it), its
        post-processing included."""
        return {"patch_size": self.patch_size, "overlap": self.overlap, "mirror": self.mirror,
                "threshold": self.threshold, "crop_foreground": self.crop_foreground,
                "postprocess": self.bundle.postprocess}

    @property
    def run_settings(self) -> dict[str, Any]:
        """How the network runs, as summaries and reports record it: ``precision`` (bf16 | fp32),
        ``patch_size`` (None: the whole box at once) and ``overlap`` (None without a sliding window)."""
        return {"precision": "bf16" if self.amp else "fp32", "patch_size": self.patch_size,
                "overlap": self.overlap if self.patch_size else None}

    @property
    def structures(self) -> list[str]:
        return self.bundle.structures

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def probabilities_on_model_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(1, *spatial)`` on the model grid -> probabilities ``(C, *spatial)``."""
        return predict_probabilities(
            self.bundle.network, x[None].to(self.device), patch_size=self.patch_size,
            overlap=self.overlap, mirror=self.mirror, amp=self.amp,
        )[0]

    def predict(self, image: Image, structures: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Masks on ``image``'s grid: ``{roi_name: bool array of image.shape}``.

        A 3D image is first brought to the model's orientation (:mod:`delineo.data.orientation`:
        axis permutation and flips from its affine; oblique images are refused) and the masks are
        put back in the input's own voxel order, so they land on the same patient voxels whatever
        order the array arrived in."""
        return self.predict_with_quality(image, structures, features=False)[0]

    def predict_with_quality(
        self, image: Image, structures: Sequence[str] | None = None, *, features: bool | None = None, case: str | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """:meth:`predict`'s masks and, per structure, the quality estimate from the same forward pass
        (:mod:`delineo.inference.quality`): ``{roi_name: {"features": {...}, "quality": float, "review": bool}}``
        (``quality``/``review`` only when the model has an estimator). ``features``: compute them
        (default: when the model has an estimator). ``case``: a case the estimator was fitted on gets
        the calibrator that never saw it (honest figures in ``delineo evaluate``)."""
        wanted = self._wanted(image, structures)
        features = self.quality is not None if features is None else features
        t0 = time.perf_counter()
        oriented, reo, box, x = self._model_input(image)
        t1 = time.perf_counter()
        probs = self.probabilities_on_model_grid(x)
        self._sync()
        t2 = time.perf_counter()
        body_shape = oriented.array[box].shape  # a view
        boxed, info, quality_s = self._masks_in_boxes(probs, wanted, body_shape, oriented.spacing_mm, features)
        del probs
        if features:  # orientation-free numbers: computed before the masks go back to the input's order
            tq = time.perf_counter()
            info = self._estimates(info, wanted, oriented.spacing_mm, case)
            quality_s += time.perf_counter() - tq
        t3 = time.perf_counter()
        out = self._place(boxed, wanted, box, reo, oriented.shape)
        t4 = time.perf_counter()
        self.timings = {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": (t3 - t2 - quality_s) + (t4 - t3)}
        if features:
            self.timings["quality"] = quality_s
        return out, info

    def _wanted(self, image: Image, structures: Sequence[str] | None) -> list[str]:
        """The structures asked for (default: all), checked against the model, and the image's dimensionality."""
        spatial_dims = self.bundle.spec.spatial_dims
        if image.array.ndim != spatial_dims:
            raise InputError(None, f"model {self.bundle.name} expects {spatial_dims}D images, got shape {image.shape}")
        wanted = list(structures) if structures else self.structures
        unknown = sorted(set(wanted) - set(self.structures))
        if unknown:
            raise InputError(None, f"model {self.bundle.name} has no structure(s) {', '.join(unknown)}")
        return wanted

    def _model_input(self, image: Image) -> tuple[Image, Any, tuple[slice, ...], torch.Tensor]:
        """The image in the model's orientation, the reorientation (None for 2D), the box around the
        body on that grid (everything without ``crop_foreground``) and the network's input
        ``(1, *model grid)``: the box's voxels resampled and intensity-normalised."""
        reo = None
        if self.bundle.orientation:  # 3D: the array in the order the network was trained on
            image, reo = to_orientation(image, self.bundle.orientation)
        box = tuple(slice(None) for _ in image.shape)
        crop = self.crop_foreground
        if crop and image.array.ndim == 3:
            box = foreground_box(image.array, image.spacing_mm, float(crop["threshold"]), float(crop.get("margin_mm", 10.0)))
        x = preprocess(image.array[box][None], image.spacing_mm, self.bundle.preprocess)
        return image, reo, box, x

    def _masks_in_boxes(
        self, probs: torch.Tensor, wanted: Sequence[str], body_shape: Sequence[int], spacing_mm: Sequence[float], features: bool,
    ) -> tuple[dict[int, tuple[tuple[slice, ...], np.ndarray]], dict[str, dict[str, Any]], float]:
        """Each structure's mask inside its own box of the body grid ``body_shape``, from the model-grid
        probabilities ``probs`` ``(C, *model grid)``: ``{channel: (box, bool mask of the box)}``; with
        ``features``, each wanted structure's quality features (``{roi_name: {"features": {...}}}``) and
        the seconds they took."""
        index = {name: i for i, name in enumerate(self.structures)}
        groups = [[index[n] for n in g if n in index] for g in self.bundle.postprocess.get("exclusive", [])]
        keep = self.bundle.postprocess.get("keep_largest", {})
        min_cc = self.bundle.postprocess.get("min_component_cc", {})
        lo = min(self.threshold, FLOOR) if features else self.threshold
        boxed: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
        info: dict[str, dict[str, Any]] = {}
        quality_s = 0.0
        for unit in _units([index[name] for name in wanted], groups):
            # the unit's probabilities on the input grid inside the box where any may reach ``lo``
            # (linear interpolation of values below ``lo`` stays below it): the same values as
            # resampling the whole grid, at a cost proportional to the structures
            region = input_box(probs[unit], lo, body_shape)
            if region is None:
                continue
            p = resample_box(probs[unit], body_shape, region)
            m = (p >= self.threshold).cpu().numpy()
            names = [self.structures[c] for c in unit]
            m = keep_exclusive(p, m, names, [names] if len(unit) > 1 else [])
            m = keep_largest_components(m, names, keep)
            m = remove_small_components(m, names, min_cc, spacing_mm)
            for k, c in enumerate(unit):
                boxed[c] = (region, m[k])
            if features:
                tq = time.perf_counter()
                for k, c in enumerate(unit):
                    name = self.structures[c]
                    if name in wanted:
                        f = structure_features(p[k:k + 1], m[k:k + 1], spacing_mm)[0]
                        info[name] = {"features": {key: round(v, 6) for key, v in f.items()}}
                quality_s += time.perf_counter() - tq
            del p
        return boxed, info, quality_s

    def _estimates(
        self, info: dict[str, dict[str, Any]], wanted: Sequence[str], spacing_mm: Sequence[float], case: str | None,
    ) -> dict[str, dict[str, Any]]:
        """``info`` for every wanted structure, in order: an empty structure's features where nothing
        reached the floor, and the estimator's quality and review flag when the model has one."""
        empty = structure_features(torch.zeros((1, 1)), np.zeros((1, 1), bool), spacing_mm)[0]
        for name in wanted:
            if name not in info:  # nothing reached the floor: the features of an empty structure
                info[name] = {"features": {key: round(v, 6) for key, v in empty.items()}}
            if self.quality is not None:
                info[name].update(self.quality.estimate(name, info[name]["features"], case))
        return {name: info[name] for name in wanted}

    def _place(
        self, boxed: dict[int, tuple[tuple[slice, ...], np.ndarray]], wanted: Sequence[str], box: tuple[slice, ...],
        reo: Any, shape: Sequence[int],
    ) -> dict[str, np.ndarray]:
        """Each wanted structure's boxed mask placed into a whole mask of the input (background
        elsewhere, in the input's own voxel order); ``box``: the body box on the model-oriented grid
        of ``shape``."""
        index = {name: i for i, name in enumerate(self.structures)}
        out = {}
        for name in wanted:
            full = np.zeros(reo.input_shape if reo is not None else tuple(shape), dtype=bool)  # calloc: pages outside the box stay untouched
            region, m = boxed.get(index[name], (None, None))
            tight = None if m is None else bounding_box(m)
            if tight is not None:
                where = tuple(slice((b.start or 0) + r.start + t.start, (b.start or 0) + r.start + t.stop)
                              for b, r, t in zip(box, region, tight))
                sub = m[tight]
                if reo is not None and not reo.identity:  # back to the input's own voxel order: every voxel where it came from
                    where, sub = _backward_box(reo, where, shape), reo.backward(sub)
                full[where] = sub
            out[name] = full
        return out
