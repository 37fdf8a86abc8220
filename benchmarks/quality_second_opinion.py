"""Does a second model's opinion improve the quality estimate (issue 21)?

A classic reference-free signal: where two models disagree, a contour is more likely wrong. This
runs the bundled model and a second model folder on every case of a dataset, adds the Dice between
their masks (``second_opinion``, per structure) to the features that ``delineo quality-fit
--save-features`` saved for the bundled model, and cross-fits the quality calibrator with and
without it (5 folds over cases, as quality-fit; all figures out-of-fold).

    # the second model: hn-ct v1 (5 x 5 x 3.5 mm grid), from git (run on the body box in bf16 like v3)
    mkdir -p /tmp/hn-ct-v1 && for f in model.json weights.safetensors; do
        git show 7bf0993:models/hn-ct/$f > /tmp/hn-ct-v1/$f; done
    OMP_NUM_THREADS=1 python benchmarks/quality_second_opinion.py --second /tmp/hn-ct-v1 \
        --features benchmarks/results/quality/hn-ct-features.json \
        --data ../shared/data/openkbp/validation --out benchmarks/results/quality/hn-ct-second-opinion.json

Prints and writes the three rows (chosen inputs; + second opinion; the opinion alone) and the
median model seconds of each network on this machine (the cost a second forward pass would add).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hn-ct")
    ap.add_argument("--second", type=Path, required=True, help="The second model's folder.")
    ap.add_argument("--features", type=Path, required=True, help="quality-fit --save-features file of --model.")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from delineo.data.datasets import open_dataset
    from delineo.data.io import Image
    from delineo.inference import quality as Q
    from delineo.inference.predictor import Predictor
    from delineo.metrics.segmentation import dice
    from delineo.models.registry import load_model

    main_model = Predictor(args.model, "cpu")
    # the second model runs the way the bundled one does (body box, bf16 where the CPU has it); its
    # folder is left as it is: the settings change in memory only
    bundle = load_model(args.second, "cpu")
    bundle.meta["inference"] = {**bundle.inference, **{k: main_model.bundle.inference[k] for k in ("crop_foreground", "precision")
                                                        if k in main_model.bundle.inference}}
    second = Predictor(bundle, "cpu")
    dataset = open_dataset(args.data, main_model.structures, None)
    opinion: dict[tuple[str, str], float] = {}
    seconds = {"model": [], "second": []}
    for i in range(len(dataset)):
        sample = dataset[i]
        image = Image(sample["image"][0], sample["affine"])
        a = main_model.predict(image)
        seconds["model"].append(main_model.timings["model"])
        b = second.predict(image)
        seconds["second"].append(second.timings["model"])
        for name in main_model.structures:
            opinion[(str(sample["case"]), name)] = float(dice(a[name], b[name])) if (a[name].any() or b[name].any()) else 1.0

    saved = json.loads(args.features.read_text())
    samples = saved["samples"] if isinstance(saved, dict) else saved
    for s in samples:
        s["features"]["second_opinion"] = opinion[(s["case"], s["structure"])]
    structures = list(dict.fromkeys(s["structure"] for s in samples))
    chosen = Q.INPUTS
    rows = []
    for name, inputs in [("chosen inputs", chosen), ("+ second opinion", (*chosen, "second_opinion")),
                         ("second opinion alone (+ per-structure offset)", ("second_opinion", "empty"))]:
        Q.INPUTS = tuple(inputs)
        try:
            _, _, out = Q.cross_fit(samples, structures, 5, 1.0)
        finally:
            Q.INPUTS = chosen
        a = Q.agreement([r["quality"] for r in out], [r["dice"] for r in out])
        rows.append({"candidate": name, **{k: a[k] for k in ("spearman", "mae", "auroc_dice_below_0.7", "n")}})
        print(json.dumps(rows[-1]))
    report = {"model": args.model, "second": str(args.second), "data": str(args.data), "threads": torch.get_num_threads(),
              "model_seconds_median": {k: round(statistics.median(v), 3) for k, v in seconds.items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["model_seconds_median"]))


if __name__ == "__main__":
    main()
