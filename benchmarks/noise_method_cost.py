"""Training cost of each noisy-label method relative to the plain baseline, measured in one process.

The noise benchmark's seconds per epoch come from separate runs, which share the machine with
whatever else runs at the time. This benchmark instead builds every method from the same base
config (network, loss, weighting, optimiser as `delineo noise-benchmark` would), and times
`delineo.training.loop.training_step` on the same synthetic batch, methods interleaved round by
round so that a change in machine load hits all of them alike. Reported: median seconds per
step, per image, per epoch (steps of one pass over ``--n-train`` images) and the ratio to the
baseline. Synthetic images: no data is needed and none is read.

    python benchmarks/noise_method_cost.py --base-config configs/cxr-jsrt.yaml \
        --out benchmarks/results/jsrt-noise-cost [--methods baseline,qam,...] [--rounds 6 --steps 4]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from delineo.machine import hardware_description, resolve_device
from delineo.models.networks import NetworkSpec
from delineo.experiments.benchmark import load_base, parse_method
from delineo.training.config import TrainConfig
from delineo.training.loop import build_training_parts, training_step


def build(base: dict, spec: str, n_structures: int, device: torch.device):
    """Method, network, weighting, loss, optimiser and batch size of one method, built by the
    training loop's own :func:`build_training_parts`."""
    method = parse_method(spec)
    d = dict(base, name="cost", output="unused", data={"train": "unused"})
    d["training"] = {**(base.get("training") or {}), **method.training}
    cfg = TrainConfig.from_dict(d, where=f"method {spec}")
    net_spec = NetworkSpec.from_dict({"spatial_dims": 2, "in_channels": 1, "out_channels": n_structures, **cfg.network})
    network, weighting, loss_fn, optimizer = build_training_parts(cfg, net_spec, device)
    return method, network.train(), weighting.train(), loss_fn, optimizer, cfg.training.batch_size


def synthetic_batch(batch_size: int, n_structures: int, size: int, seed: int = 0) -> dict:
    """Images ``(B, 1, size, size)`` in [0, 1] and overlapping disc labels ``(B, C, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(batch_size, n_structures, size, size, dtype=torch.uint8)
    for b in range(batch_size):
        for c in range(n_structures):
            cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=g).tolist()
            r = int(torch.randint(size // 10, size // 4, (1,), generator=g))
            labels[b, c] = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).to(torch.uint8)
    image = 0.2 + 0.5 * labels.float().amax(1, keepdim=True) + 0.05 * torch.randn(batch_size, 1, size, size, generator=g)
    return {"image": image, "label": labels, "present": torch.ones(batch_size, n_structures, dtype=torch.bool)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-config", default="configs/cxr-jsrt.yaml")
    ap.add_argument("--methods", default="baseline,qam,nr_dice,dice_gce,small_loss")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (JSRT: 256)")
    ap.add_argument("--n-train", type=int, default=167, help="training images per epoch (JSRT split: 167)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method and round (after one warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base = load_base(args.base_config)
    n_structures = len((base.get("data") or {}).get("structures") or [0, 0, 0])
    specs = [s for s in args.methods.split(",") if s]
    if "baseline" not in specs:
        specs.insert(0, "baseline")
    built = {s: build(base, s, n_structures, device) for s in specs}
    batch_size = {b[5] for b in built.values()}
    if len(batch_size) != 1:
        raise SystemExit(f"methods use different batch sizes {batch_size}: not comparable per step")
    batch_size = batch_size.pop()
    batch = synthetic_batch(batch_size, n_structures, args.size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {s: [] for s in specs}
    for spec, (_, network, weighting, loss_fn, optimizer, _) in built.items():  # warm-up
        training_step(network, weighting, loss_fn, optimizer, batch, device, nullcontext())
    for _ in range(args.rounds):
        for spec, (_, network, weighting, loss_fn, optimizer, _) in built.items():
            for _ in range(args.steps):
                sync()
                t0 = time.perf_counter()
                training_step(network, weighting, loss_fn, optimizer, batch, device, nullcontext())
                sync()
                times[spec].append(time.perf_counter() - t0)

    steps_per_epoch = math.ceil(args.n_train / batch_size)
    base_step = statistics.median(times["baseline"])
    rows = []
    for spec in specs:
        method = built[spec][0]
        step = statistics.median(times[spec])
        rows.append({
            "method": spec, "label": method.label, "seconds_per_step": step, "seconds_per_image": step / batch_size,
            "seconds_per_epoch": step * steps_per_epoch, "relative_to_baseline": step / base_step,
            "extra_parameters": sum(p.numel() for p in built[spec][2].parameters()),
            "steps_timed": len(times[spec]),
        })
    results = {
        "command": "python benchmarks/noise_method_cost.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "hardware": hardware_description(device), "threads": args.threads, "batch_size": batch_size,
        "image_size": args.size, "steps_per_epoch": steps_per_epoch, "rows": rows,
        "note": "median over interleaved rounds; model step only (no data loading or augmentation)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Training cost per method (one process, interleaved)", "",
        f"{results['hardware']}, {args.threads} threads; batch {batch_size} of {args.size}x{args.size} synthetic images; "
        f"epoch = {steps_per_epoch} steps ({args.n_train} images). Median of {args.rounds} rounds x {args.steps} steps; "
        "the model step only (no data loading or augmentation).", "",
        f"`{results['command']}`", "",
        "| method | s/step | ms/image | s/epoch | relative to baseline | extra parameters |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['seconds_per_step']:.3f} | {1000 * r['seconds_per_image']:.0f} | "
                     f"{r['seconds_per_epoch']:.1f} | {r['relative_to_baseline']:.2f}x | {r['extra_parameters']:,} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
