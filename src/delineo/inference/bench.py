"""Timing of end-to-end contouring, stage by stage, against an nnU-Net-style slow path.

The fast path is the model's own inference settings (e.g. whole-volume, no TTA). The slow
path is what nnU-Net does by default: sliding window at the training patch size with 50 %
overlap, Gaussian blending and mirroring TTA over all spatial axes. Both run on the same case
with the same weights; the Dice between their masks says what the speed costs in accuracy.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delineo.data.io import read_image, write_mask
from delineo.inference.predictor import Predictor, with_model_pixel_spacing
from delineo.metrics.segmentation import dice

STAGES = ("read", "preprocess", "model", "postprocess", "write")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _run_once(predictor: Predictor, path: Path, out_dir: Path) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    t0 = time.perf_counter()
    image = with_model_pixel_spacing(read_image(path), path, predictor.bundle)
    read_s = time.perf_counter() - t0
    masks, _ = predictor.predict_with_quality(image)  # the quality estimate when the model has one, as contour runs it
    t1 = time.perf_counter()
    for name, mask in masks.items():
        write_mask(out_dir / f"{name}.nii.gz", mask, image)
    write_s = time.perf_counter() - t1
    return {"read": read_s, **predictor.timings, "write": write_s}, masks


def bench_contour(
    input_path: str | Path,
    model: str = "hn-ct",
    device: str = "auto",
    repeat: int = 3,
    slow_path: bool = True,
    slow_mirror: bool = False,
) -> dict[str, Any]:
    """Median per-stage seconds over ``repeat`` runs (after one warm-up), peak memory, and the
    slow-path comparison. Returns a JSON-ready dict."""
    input_path = Path(input_path)
    fast = Predictor(model, device)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _run_once(fast, input_path, out)  # warm-up (allocations, thread pools, cuDNN autotune)
        if fast.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for _ in range(max(1, repeat)):
            times, fast_masks = _run_once(fast, input_path, out)
            runs.append(times)
        stages = {k: statistics.median(r[k] for r in runs) for k in (*STAGES, "quality") if k in runs[0]}
        report: dict[str, Any] = {
            "input": str(input_path),
            "model": fast.bundle.name,
            "device": str(fast.device),
            "threads": torch.get_num_threads(),
            "repeat": repeat,
            "fast_path": {"patch_size": fast.patch_size, "mirror": fast.mirror, "overlap": fast.overlap},
            "seconds": {k: round(v, 4) for k, v in stages.items()},
            "seconds_total": round(sum(stages.values()), 4),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
        if "quality" in stages:  # what the per-structure quality estimate adds to contouring
            report["quality_estimate"] = {
                "seconds": round(stages["quality"], 4),
                "fraction_of_contouring_without_it": round(stages["quality"] / max(sum(stages.values()) - stages["quality"], 1e-9), 4),
            }
        if fast.device.type == "cuda":
            report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if slow_path:
            cfg = fast.bundle.meta.get("training", {}).get("config", {}).get("training", {})
            patch = cfg.get("patch_size") or fast.patch_size
            # nnU-Net mirrors at test time because it trains with mirroring; delineo's models are trained
            # without it (left/right structures), and mirrored inputs then give wrong contours, so the
            # slow path mirrors only when asked (slow_mirror) and says which it did
            slow = Predictor(fast.bundle, device, patch_size=patch, overlap=0.5, mirror=slow_mirror)
            _run_once(slow, input_path, out)
            slow_runs = [_run_once(slow, input_path, out) for _ in range(max(1, repeat))]
            slow_total = statistics.median(sum(t.values()) for t, _ in slow_runs)
            slow_model = statistics.median(t["model"] for t, _ in slow_runs)
            slow_masks = slow_runs[-1][1]
            report["slow_path"] = {
                "description": "sliding window at the training patch size, overlap 0.5, Gaussian blending"
                + (", mirroring TTA over all axes" if slow_mirror else "; no mirroring TTA (the model was trained without mirroring)"),
                "mirror": slow_mirror,
                "patch_size": patch,
                "seconds_total": round(slow_total, 4),
                "seconds_model": round(slow_model, 4),
                "speedup_total": round(slow_total / report["seconds_total"], 2),
                "speedup_model": round(slow_model / max(stages["model"], 1e-9), 2),
                "dice_fast_vs_slow": {n: round(dice(fast_masks[n], slow_masks[n]), 4) for n in fast_masks},
            }
    return report
