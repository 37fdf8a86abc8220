"""How confident are models trained on noisy labels? Peak probability per structure on held-out images.

A diagnostic for the noise benchmark: when labels disagree (a structure eroded in some samples,
dilated in others), a network can learn a flat probability map whose peak sits near the 0.5
threshold. Its Dice then depends on which side of the threshold the peak lands, not on whether
it found the structure. For every model folder given, on the validation cases it held out
(``model.json``), this reports per structure: the mean over the images of the highest
probability in the image, the share of images whose peak reaches the model's threshold, and
the Dice at that threshold (the benchmark's figure). Nothing is tuned: the threshold stays the
model's.

    python benchmarks/noise_probability_peaks.py --data ../shared/data/jsrt \
        --out benchmarks/results/jsrt-noise-peaks MODEL_DIR [MODEL_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from delineo.data.datasets import open_dataset
from delineo.data.transforms import preprocess, preprocess_labels
from delineo.inference.predictor import Predictor
from delineo.metrics.segmentation import dice_per_structure
from delineo.models.registry import load_model
from delineo.machine import hardware_description


def peaks(model_dir: Path, data: Path) -> dict:
    """Per structure: mean peak probability, share of images whose peak reaches the threshold,
    mean Dice at the threshold, over the model's held-out validation cases (model grid)."""
    bundle = load_model(model_dir, "cpu")
    predictor = Predictor(bundle, device="cpu", amp=False)
    cases = bundle.meta["training"]["data"]["val_cases"]
    ds = open_dataset(data, bundle.structures, cases, bundle.pixel_spacing_mm)
    peak, dice = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            x = preprocess(s["image"], s["spacing_mm"], bundle.preprocess)
            y = preprocess_labels(s["label"], s["spacing_mm"], bundle.preprocess)
            probs = predictor.probabilities_on_model_grid(x)
            peak.append(probs.flatten(1).max(1).values.numpy())
            dice.append(dice_per_structure((probs >= predictor.threshold)[None], y[None].bool())[0].numpy())
    peak, dice = np.array(peak), np.array(dice)
    return {
        "model": str(model_dir),
        "threshold": predictor.threshold,
        "n_cases": len(ds),
        "structures": {
            name: {
                "mean_peak_probability": float(peak[:, c].mean()),
                "share_reaching_threshold": float((peak[:, c] >= predictor.threshold).mean()),
                "dice_model_grid": float(dice[:, c].mean()),
            }
            for c, name in enumerate(bundle.structures)
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="model folders (noise-benchmark runs/<id>/model)")
    ap.add_argument("--data", type=Path, required=True, help="the dataset the models held their validation cases out of")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [peaks(m, args.data) for m in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"hardware": hardware_description(torch.device("cpu")), "data": str(args.data), "models": rows}
    (args.out / "peaks.json").write_text(json.dumps(result, indent=2) + "\n")
    names = list(rows[0]["structures"])
    lines = [
        "# Peak probability per structure on held-out images",
        "",
        f"Validation cases each model held out of `{args.data}`; model grid; threshold {rows[0]['threshold']}. "
        "Per structure: mean over the images of the image's highest probability / share of images whose peak reaches "
        "the threshold / mean Dice at the threshold.",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{s['mean_peak_probability']:.3f} / {s['share_reaching_threshold']:.0%} / {s['dice_model_grid']:.3f}"
                 for s in r["structures"].values()]
        parts = Path(r["model"]).parts
        label = f"{parts[-4]}/{parts[-2]}" if len(parts) >= 4 else r["model"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (args.out / "peaks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
