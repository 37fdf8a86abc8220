"""Model-stage speed of one CT under the inference options the field offers, and what each does
to the contours.

On the model's own grid (the input ``delineo contour`` feeds the network, padded to the
network's divisor), the network's forward pass is timed under:

- ``eager fp32`` with the session's thread count (the reference: what ``delineo contour`` does),
- ``eager fp32, 1 thread``,
- ``channels_last_3d`` (network and input in NDHWC memory layout),
- ``bf16 autocast`` (CPU autocast; on CUDA the engine already uses it),
- ``torch.compile`` (inductor; the one-off compile time is reported apart),
- ``ONNX Runtime`` (CPU execution provider; exported with ``torch.onnx.export``), when
  ``onnxruntime`` is installed (``pip install -e '.[bench]'``).

Each variant's masks (sigmoid >= the model's threshold) are compared with the reference's by
Dice per structure, so a faster option that changes the contours shows it.

    python benchmarks/inference_options.py --model hn-ct \
        --case ../shared/data/openkbp/validation/pt_201 --out benchmarks/results/hn-ct/inference-options-cpu

Writes ``options.json`` and ``options.md`` (aggregate numbers only, no image data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _time(fn, repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (allocations, oneDNN primitive caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--case", type=Path, required=True, help="A case folder (ct.nii.gz) or a CT file.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--skip", default="", help="Comma-separated variants to leave out (e.g. compile).")
    args = ap.parse_args()

    from delineo.data.io import read_image
    from delineo.data.transforms import preprocess
    from delineo.inference.predictor import _pad_to_multiple
    from delineo.metrics.segmentation import dice
    from delineo.models.registry import load_model

    torch.set_num_threads(args.threads)
    path = args.case / "ct.nii.gz" if args.case.is_dir() else args.case
    image = read_image(path)
    bundle = load_model(args.model, torch.device("cpu"))
    net = bundle.network.eval()
    x = preprocess(image.array[None], image.spacing_mm, bundle.preprocess)[None]
    x, _ = _pad_to_multiple(x, net.spec.divisor)
    x = x.as_subclass(torch.Tensor).contiguous()  # a plain tensor (MONAI transforms return MetaTensor)
    threshold = float(bundle.inference.get("threshold", 0.5))
    skip = set(filter(None, args.skip.split(",")))

    def forward(model, inp, ctx=None):
        def run():
            with torch.inference_mode():
                if ctx is not None:
                    with ctx():
                        return model(inp).float()
                return model(inp).float()
        return run

    variants: dict[str, dict] = {}

    def record(name: str, fn, note: str = "", extra: dict | None = None) -> None:
        seconds, logits = _time(fn, args.repeat)
        variants[name] = {"model_seconds": round(seconds, 4), "note": note, **(extra or {}),
                          "masks": (torch.sigmoid(logits) >= threshold).cpu().numpy()[0]}
        print(f"{name}: {seconds:.3f} s", file=sys.stderr, flush=True)

    record("eager fp32", forward(net, x), f"{args.threads} threads; what delineo contour runs")
    if "threads1" not in skip:
        torch.set_num_threads(1)
        record("eager fp32, 1 thread", forward(net, x), "1 thread")
        torch.set_num_threads(args.threads)
    if "channels_last" not in skip:
        net_cl = bundle.network.to(memory_format=torch.channels_last_3d)
        record("channels_last_3d", forward(net_cl, x.contiguous(memory_format=torch.channels_last_3d)), "NDHWC layout")
        net = bundle.network.to(memory_format=torch.contiguous_format)
    if "bf16" not in skip:
        record("bf16 autocast", forward(net, x, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
               "CPU autocast to bfloat16 (speed depends on AVX-512 BF16 / AMX support)")
    if "compile" not in skip:
        t0 = time.perf_counter()
        compiled = torch.compile(net)
        with torch.inference_mode():
            compiled(x)
        compile_s = time.perf_counter() - t0
        record("torch.compile", forward(compiled, x), "inductor, default mode", {"compile_seconds": round(compile_s, 1)})
    if "onnx" not in skip:
        try:
            import onnxruntime as ort
        except ImportError:
            variants["ONNX Runtime"] = {"skipped": "onnxruntime not installed (pip install -e '.[bench]')"}
        else:
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = Path(tmp) / "model.onnx"
                t0 = time.perf_counter()
                torch.onnx.export(net, (x,), str(onnx_path), dynamo=False, input_names=["image"], output_names=["logits"],
                                  opset_version=17)
                export_s = time.perf_counter() - t0
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = args.threads
                opts.inter_op_num_threads = 1
                sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
                feed = {"image": x.numpy()}
                record("ONNX Runtime", lambda: torch.from_numpy(sess.run(None, feed)[0]),
                       f"onnxruntime {ort.__version__}, CPU execution provider, {args.threads} intra-op threads",
                       {"export_seconds": round(export_s, 1)})

    ref = variants["eager fp32"]["masks"]
    structures = bundle.structures
    rows = {}
    for name, v in variants.items():
        if "masks" not in v:
            rows[name] = v
            continue
        masks = v.pop("masks")
        d = [dice(masks[c], ref[c]) for c in range(len(structures))]
        rows[name] = {**v, "speedup": round(variants["eager fp32"]["model_seconds"] / v["model_seconds"], 2),
                      "dice_vs_reference": {s: round(x_, 4) for s, x_ in zip(structures, d)},
                      "dice_vs_reference_min": round(min(d), 4)}
    result = {
        "command": "python benchmarks/inference_options.py " + " ".join(sys.argv[1:]),
        "model": bundle.name,
        "input": {"case": path.parent.name if path.name == "ct.nii.gz" else path.name, "image_shape": list(image.shape),
                  "model_grid_shape": list(x.shape[2:])},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, no GPU",
        "repeat": args.repeat,
        "variants": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "options.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Model stage of `{bundle.name}` on one case ({result['input']['image_shape']} voxels, model grid "
             f"{result['input']['model_grid_shape']}), median of {args.repeat} after a warm-up; {result['machine']}.", "",
             "| option | model s | speed-up | min Dice vs reference | note |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {name} | - | - | - | {r['skipped']} |")
            continue
        extra = "".join(f"; {k.replace('_', ' ')} {r[k]} s" for k in ("compile_seconds", "export_seconds") if k in r)
        lines.append(f"| {name} | {r['model_seconds']:.3f} | {r['speedup']:.2f}x | {r['dice_vs_reference_min']:.4f} | {r['note']}{extra} |")
    (args.out / "options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
