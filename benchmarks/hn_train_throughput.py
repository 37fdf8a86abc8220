"""hn-ct training throughput on this CPU: one optimisation step of the real network and loss.

For each setting, batch 2 of random patches with 10 output structures (hn-ct's), the product's
``training_step`` (forward, Dice+BCE with batch Dice, backward, clipped Adam step): median seconds
per step over ``--steps`` steps after one warm-up step, steps/s and voxels/s. Also the
augmentation (MONAI, as ``delineo train`` applies it) per sample, which runs in the main process
unless ``training.num_workers`` > 0. The machine's CPU flags (AVX-512, AVX512-BF16, AMX) and the
load average while measuring are recorded: a loaded machine gives slower steps.

    python benchmarks/hn_train_throughput.py --out benchmarks/results/hn-train-throughput [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

STRUCTURES = 10
BASE = {"channels": [16, 32, 64, 96, 128], "patch": 64, "amp": False, "channels_last": False, "threads": 2}
SETTINGS = [
    ("fp32, 16-32-64-96-128 (hn-ct), 64^3", {}),
    ("fp32, channels_last_3d, 64^3", {"channels_last": True}),
    ("bf16 autocast, 64^3", {"amp": True}),
    ("fp32, 8-16-32-64-128, 64^3", {"channels": [8, 16, 32, 64, 128]}),
    ("fp32, 48^3", {"patch": 48}),
    ("fp32, 96^3", {"patch": 96}),
    ("fp32, 1 thread, 64^3", {"threads": 1}),
    ("bf16 autocast, channels_last_3d, 64^3", {"amp": True, "channels_last": True}),
    ("bf16 autocast, 8-16-32-64-128, 64^3", {"amp": True, "channels": [8, 16, 32, 64, 128]}),
    ("bf16 autocast, 48^3", {"amp": True, "patch": 48}),
    ("bf16 autocast, 80^3", {"amp": True, "patch": 80}),
    ("bf16 autocast, 96^3", {"amp": True, "patch": 96}),
    ("bf16 autocast, 1 thread, 64^3", {"amp": True, "threads": 1}),
]


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(re.findall(r"^flags\s*:\s*(.*)$", text, re.M)[0].split()) if "flags" in text else set()
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def step_seconds(setting: dict, steps: int) -> float:
    from delineo.machine import autocast_context
    from delineo.models.networks import NetworkSpec, build_network
    from delineo.training.losses import SegmentationLoss
    from delineo.training.loop import training_step
    from delineo.training.weighting import UniformWeighting

    torch.set_num_threads(setting["threads"])
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=STRUCTURES, channels=setting["channels"], head_bias=-4.0))
    p = setting["patch"]
    image = torch.randn(2, 1, p, p, p)
    label = (torch.rand(2, STRUCTURES, p, p, p) > 0.97).to(torch.uint8)
    if setting["channels_last"]:
        net = net.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    batch = {"image": image, "label": label, "present": torch.ones(2, STRUCTURES, dtype=torch.bool)}
    weighting, loss = UniformWeighting(), SegmentationLoss("dice_bce", batch_dice=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    ctx = autocast_context("cpu", setting["amp"])
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        training_step(net, weighting, loss, opt, batch, torch.device("cpu"), ctx)
        if i:  # the first step creates the oneDNN primitives
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def augmentation_seconds(patch: int, n: int = 6) -> float:
    from delineo.data.transforms import training_augmentation

    aug = training_augmentation(3, [patch] * 3, "default", foreground=0.5)
    aug.set_random_state(0)
    item = {"image": torch.randn(1, 128, 128, 154), "label": (torch.rand(STRUCTURES, 128, 128, 154) > 0.97).to(torch.uint8)}
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        aug(dict(item))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated indices of SETTINGS to run")
    args = ap.parse_args()
    from delineo.machine import bf16_available

    chosen = [SETTINGS[int(i)] for i in args.only.split(",")] if args.only else SETTINGS
    rows = []
    load_before = os.getloadavg()[0]
    for name, change in chosen:
        setting = {**BASE, **change}
        s = step_seconds(setting, args.steps)
        voxels = 2 * setting["patch"] ** 3
        rows.append({"setting": name, **setting, "seconds_per_step": round(s, 3), "steps_per_s": round(1 / s, 3),
                     "mvoxels_per_s": round(voxels / s / 1e6, 3)})
        print(f"{name}: {s:.3f} s/step", file=sys.stderr, flush=True)
    torch.set_num_threads(2)
    aug = augmentation_seconds(64)
    result = {
        "command": "python benchmarks/hn_train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "cpu_flags": cpu_flags(),
        "onednn_native_bf16": bf16_available("cpu"),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
        "augmentation_seconds_per_64cube_sample": round(aug, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"hn-ct training step (batch 2, 10 structures, Dice+BCE, Adam) on {result['machine']}; "
             f"CPU flags {result['cpu_flags']}, oneDNN native bf16: {result['onednn_native_bf16']}; "
             f"1-min load average {result['load_average_1min']['before']} before, {result['load_average_1min']['after']} after. "
             f"Command: `{result['command']}`", "",
             "| setting | s/step (median) | steps/s | Mvoxel/s |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['seconds_per_step']} | {r['steps_per_s']} | {r['mvoxels_per_s']} |" for r in rows]
    lines += ["", f"MONAI augmentation of one 64^3 sample (crop by label, affine, intensity) in the main process: {aug} s "
              "(twice per step at batch 2)."]
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
