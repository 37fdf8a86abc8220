"""The Python API behind the CLI, for notebooks and scripts.

>>> from delineo import api
>>> result = api.contour("ct.nii.gz", "out/")              # doctest: +SKIP
>>> result["structures"]["PTV70"]["volume_cc"]             # doctest: +SKIP
>>> report = api.evaluate("cxr-jsrt", "data/jsrt", "r.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from delineo.contours.checks import anatomy_checks, flagged_structures
from delineo.contours.overview import write_overview
from delineo.data.io import Image, read_image, write_mask
from delineo.dicom.rtstruct import write_rtstruct
from delineo.dicom.seg import write_seg
from delineo.dicom.series import is_dicom_input, read_series
from delineo.errors import InputError
from delineo.inference.evaluate import evaluate
from delineo.inference.plausibility import check_ct
from delineo.inference.predictor import Predictor, with_model_pixel_spacing
from delineo.inference.quality import quality_text
from delineo.metrics.segmentation import volume_cc
from delineo.models.registry import available_models
from delineo.training.loop import train

if TYPE_CHECKING:
    from delineo.dicom.dicomweb import DicomwebAuth

DEFAULT_MODELS = {2: "cxr-jsrt", 3: "hn-ct"}
log = logging.getLogger("delineo.contour")

__all__ = ["contour", "contour_dicomweb", "contour_image", "default_model", "evaluate", "train"]

#: ``progress(stage, fraction)``: called as a contouring run passes its stages (fraction 0..1)
Progress = Callable[[str, float], None]


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t0


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


def default_model(spatial_dims: int) -> str:
    """The bundled model used when none is named: ``hn-ct`` for 3D CT, ``cxr-jsrt`` for 2D X-rays."""
    name = DEFAULT_MODELS[spatial_dims]
    if name not in available_models():
        raise InputError(None, f"no bundled {spatial_dims}D model {name!r}; bundled: {', '.join(available_models()) or 'none'} (use --model)")
    return name


def contour_image(
    image: Image,
    out_dir: str | Path,
    *,
    predictor: Predictor,
    structures: Sequence[str] | None = None,
    source: str = "",
    overview: bool = True,
    seconds: dict[str, float] | None = None,
    progress: Progress | None = None,
    series: Any = None,
    title: str | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Contour an in-memory image and write ``segmentations/<ROI>.nii.gz``, ``summary.json`` and
    overview PNGs into ``out_dir``. Returns the summary (volumes in cc, or cm² for 2D).
    seconds: timings of earlier stages (e.g. ``{"read": s}``) to report with the others.
    progress: ``progress(stage, fraction)`` callback (stages ``model``, ``write``, then for DICOM ``rtstruct`` and ``seg``, and ``done``).
    title: the overview's title before the model name (default: the input file's name; the web
    service gives the study's name).
    series: the :class:`delineo.dicom.series.CTSeries` the image came from; then ``rtstruct.dcm``
    (RT Structure Set) and ``seg.dcm`` (DICOM SEG) referencing it are written too.
    started: ``time.perf_counter()`` when the work began (e.g. before reading the input): the
    summary's ``seconds["total"]`` is the wall time from then (default: from this call).
    The image is not checked here: callers that take it from outside (:func:`contour`, the DICOM
    node) run :func:`delineo.inference.plausibility.check_ct` first."""
    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    seg_dir = out_dir / "segmentations"
    seg_dir.mkdir(parents=True, exist_ok=True)
    _report(progress, "model", 0.2)
    masks, quality = predictor.predict_with_quality(image, structures)
    checks = anatomy_checks(masks, image.affine, image.array) if image.array.ndim == 3 else []
    flags = flagged_structures(checks)
    for check in checks:
        if not check.passed:
            log.warning("anatomy check failed for %s: %s", source or "image", check.message)
    _report(progress, "write", 0.7)
    t0 = time.perf_counter()
    # the writers are independent: the DICOM ones and the NIfTI masks run side by side (zlib and
    # numpy release the GIL), the summary and overview are made meanwhile
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="delineo-write")
    pending: dict[str, Future] = {}
    if series is not None:
        pending = _submit_dicom_writers(pool, series, masks, quality, flags, predictor, out_dir, progress)
    writes = [pool.submit(write_mask, seg_dir / f"{name}.nii.gz", mask, image) for name, mask in masks.items()]
    files = {name: str(seg_dir / f"{name}.nii.gz") for name in masks}
    summary = _summary(image, masks, quality, flags, checks, files, source, predictor)
    review = {n: f"(quality {q['quality']:.2f})" for n, q in quality.items() if q.get("review")}
    for name in review:
        log.warning("quality estimate for %s in %s: %s", name, source or "image", quality_text(quality[name]))
    if predictor.quality is not None:
        summary["quality_threshold"] = predictor.quality.threshold
    if overview:
        summary["overview"] = [str(p) for p in write_overview(image, masks, out_dir, title=f"{title or Path(source).name} — {predictor.bundle.name}",
                                                              review=review)]
    try:
        for w in writes:
            w.result()
        predictor.timings["write"] = time.perf_counter() - t0  # NIfTI masks, summary and overview
        for key, future in pending.items():  # each writer's own time; they overlap (``outputs``: all of them)
            path, predictor.timings[key] = future.result()
            summary[key] = str(path)
    finally:
        pool.shutdown(wait=True)
    predictor.timings["outputs"] = time.perf_counter() - t0
    if series is not None:
        summary["series_instance_uid"] = series.series_instance_uid
    summary["seconds"] = {k: round(v, 4) for k, v in {**(seconds or {}), **predictor.timings}.items()}
    summary["seconds"]["total"] = round(time.perf_counter() - started, 4)  # the stages overlap: not their sum
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report(progress, "done", 1.0)
    return summary


def _submit_dicom_writers(
    pool: ThreadPoolExecutor, series: Any, masks: dict[str, Any], quality: dict[str, dict[str, Any]],
    flags: dict[str, list[str]], predictor: Predictor, out_dir: Path, progress: Progress | None,
) -> dict[str, Future]:
    """Start writing ``rtstruct.dcm`` and (with a non-empty mask) ``seg.dcm`` on ``pool``; each
    ROI's description names its failed checks and quality estimate. Returns the futures by output."""
    pending: dict[str, Future] = {}
    _report(progress, "rtstruct", 0.8)
    roi_types = predictor.bundle.roi_types
    descriptions = {n: "CHECK FAILED: " + "; ".join(m) for n, m in flags.items()}
    for n, q in quality.items():  # the planning system shows the estimate beside the contour
        if "quality" in q:
            descriptions[n] = "; ".join(filter(None, [descriptions.get(n), "delineo " + quality_text(q)]))
    pending["rtstruct"] = pool.submit(_timed, write_rtstruct, series, masks, out_dir / "rtstruct.dcm", roi_types=roi_types,
                                      label=predictor.bundle.name, roi_descriptions=descriptions)
    _report(progress, "seg", 0.9)
    present = {n: m for n, m in masks.items() if m.any()}
    if present:  # a SEG needs at least one non-empty segment
        pending["seg"] = pool.submit(_timed, write_seg, series, present, out_dir / "seg.dcm", roi_types=roi_types,
                                     model_name=predictor.bundle.name)
    return pending


def _summary(
    image: Image, masks: dict[str, Any], quality: dict[str, dict[str, Any]], flags: dict[str, list[str]],
    checks: list, files: dict[str, str], source: str, predictor: Predictor,
) -> dict[str, Any]:
    """The summary's core: input, model, grid, and per structure its volume (cc, or cm² for 2D),
    ROI type, emptiness, mask file, failed checks and quality estimate; then the checks."""
    unit = "cc" if image.array.ndim == 3 else "cm2"
    roi_types = predictor.bundle.roi_types
    return {
        "input": source,
        "model": predictor.bundle.name,
        "device": str(predictor.device),
        # how the network was run: the same weights give slightly other contours in bf16 or at another overlap
        "inference": predictor.run_settings,
        "spacing_mm": list(image.spacing_mm),
        "shape": list(image.shape),
        "structures": {
            name: {
                f"volume_{unit}": round(volume_cc(mask, image.spacing_mm), 3),
                "roi_type": roi_types.get(name, "ORGAN"),
                "empty": not bool(mask.any()),
                "file": files[name],
                "flags": flags.get(name, []),
                **({"quality": quality[name]["quality"], "review": quality[name]["review"]} if "quality" in quality.get(name, {}) else {}),
            }
            for name, mask in masks.items()
        },
        "checks": [c.to_dict() for c in checks],
        "checks_passed": all(c.passed for c in checks),
    }


def contour(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    model: str | None = None,
    device: str = "auto",
    structures: Sequence[str] | None = None,
    overview: bool = True,
    progress: Progress | None = None,
    series_uid: str | None = None,
    bf16: bool | None = None,
    title: str | None = None,
    overlap: float | None = None,
) -> dict[str, Any]:
    """Contour a NIfTI CT, a DICOM CT series (folder or zip; ``series_uid`` picks one of several)
    or a PNG X-ray with a bundled or given model; see :func:`contour_image`. DICOM input also gives
    ``rtstruct.dcm`` and ``seg.dcm``. A volume for a 3D model that is not a plausible CT is refused
    before contouring (:func:`delineo.inference.plausibility.check_ct`). ``bf16``: bfloat16
    autocast for the network (default: on CUDA, and on a CPU with native bf16 (AVX-512 BF16, AMX)
    for a model whose model.json says ``"precision": "bf16"``: one checked to give the same validation Dice as in fp32).
    ``overlap``: the sliding window's overlap, 0 <= overlap < 1 (default the model's, 0.5 for ``hn-ct``;
    0.25 runs fewer than half the windows, at a small cost in Dice: docs/benchmarks/hn-ct-cpu.md §7);
    a model's quality estimate is only given at the overlap it was fitted with."""
    _report(progress, "read", 0.0)
    t0 = time.perf_counter()
    series = None
    if is_dicom_input(input_path):
        series = read_series(input_path, series_uid)
        image = series.image
    else:
        image = read_image(input_path)
    read_s = time.perf_counter() - t0
    predictor = Predictor(model or default_model(image.array.ndim), device, amp=bf16, overlap=overlap)
    image = with_model_pixel_spacing(image, input_path, predictor.bundle)
    check_ct(image, predictor.bundle, input_path)  # a 3D model's input must be a plausible CT (InputError if not)
    return contour_image(
        image, out_dir, predictor=predictor, structures=structures, source=str(input_path), overview=overview,
        seconds={"read": read_s}, progress=progress, series=series, title=title, started=t0,
    )


def contour_dicomweb(
    url: str,
    study_uid: str,
    out_dir: str | Path,
    *,
    series_uid: str | None = None,
    auth: "DicomwebAuth | None" = None,
    store: bool = True,
    model: str | None = None,
    device: str = "auto",
    structures: Sequence[str] | None = None,
    overview: bool = True,
    progress: Progress | None = None,
    bf16: bool | None = None,
    overlap: float | None = None,
) -> dict[str, Any]:
    """Contour a CT series from a DICOMweb server (a PACS) and store the results back: QIDO-RS finds
    the study's CT series (``series_uid`` picks one when it has several), WADO-RS fetches it into a
    temporary folder, :func:`contour` contours it (``out_dir`` gets what a DICOM folder gives:
    ``rtstruct.dcm``, ``seg.dcm``, the NIfTI masks, ``summary.json``), and unless ``store=False``
    STOW-RS stores the RT Structure Set and SEG into the same study. ``auth``: a
    :class:`delineo.dicom.dicomweb.DicomwebAuth` (bearer token, basic, client certificate, CA bundle).
    The summary gets ``dicomweb``: the URL, study, series and the stored SOP Instance UIDs."""
    import tempfile

    from delineo.dicom.dicomweb import Pacs

    pacs = Pacs(url, auth)
    _report(progress, "find", 0.0)
    series_uid = pacs.find_ct_series(study_uid, series_uid)
    with tempfile.TemporaryDirectory(prefix="delineo-dicomweb-") as tmp:
        _report(progress, "fetch", 0.05)
        t0 = time.perf_counter()
        pacs.fetch_series(study_uid, series_uid, tmp)
        fetch_s = time.perf_counter() - t0
        summary = contour(tmp, out_dir, model=model, device=device, structures=structures, overview=overview,
                          progress=progress, bf16=bf16, title=f"series {series_uid}", overlap=overlap)
    summary["input"] = f"{pacs.url} study {study_uid} series {series_uid}"
    summary["seconds"] = {"fetch": round(fetch_s, 4), **summary["seconds"]}
    stored: list[str] = []
    if store:
        _report(progress, "store", 0.95)
        t0 = time.perf_counter()
        stored = pacs.store([summary[k] for k in ("rtstruct", "seg") if k in summary], study_uid)
        summary["seconds"]["store"] = round(time.perf_counter() - t0, 4)
    summary["dicomweb"] = {"url": pacs.url, "study_instance_uid": study_uid, "series_instance_uid": series_uid, "stored": stored}
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
