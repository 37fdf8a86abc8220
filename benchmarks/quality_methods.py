"""Which quality estimate (issue 21): candidate estimators compared out-of-fold on saved features.

Reads the per-case features and Dice that ``delineo quality-fit --save-features`` writes (the
contours of the model's validation cases) and, for each candidate, cross-fits it over the cases
(5 folds, the same split as quality-fit) and reports Spearman, mean absolute error and AUROC for
Dice < 0.7, all out-of-fold. No model is run.

    python benchmarks/quality_methods.py benchmarks/results/quality/hn-ct-features.json
    python benchmarks/quality_methods.py benchmarks/results/quality/hn-ct-features.json --alphas 0.3,1,3,10

``--alphas``: the chosen inputs with each ridge penalty instead (is the fit, or are the features, the limit?).
"""

from __future__ import annotations

import json
import sys

from delineo.inference import quality as Q

CANDIDATES = [
    ("no fit: expected Dice as it is", None),
    ("no fit: mean confidence inside", "confidence"),
    ("per-structure mean Dice only", ("empty",)),
    ("+ expected Dice", ("expected_dice", "empty")),
    ("+ confidence", ("expected_dice", "confidence", "empty")),
    ("+ mass outside, uncertain band (chosen)", ("expected_dice", "confidence", "outside", "uncertain", "empty")),
    ("+ volume z-score", ("expected_dice", "confidence", "outside", "uncertain", "volume_z", "abs_volume_z", "empty")),
    # saved features only (computed by quality.structure_features at commit c8c6f36,
    # removed after this measurement: it did not help and cost ~0.2 s a contour)
    ("+ contested (another structure's probability inside)", ("expected_dice", "confidence", "outside", "uncertain", "empty", "contested")),
]


def compare(path: str, alpha: float = 1.0) -> list[dict]:
    saved = json.loads(open(path).read())
    samples = saved["samples"] if isinstance(saved, dict) else saved
    structures = list(dict.fromkeys(s["structure"] for s in samples))
    chosen, out = Q.INPUTS, []
    have = set(samples[0]["features"]) | {"volume_z", "abs_volume_z"}
    for name, inputs in CANDIDATES:
        if isinstance(inputs, tuple) and not set(inputs) <= have:
            continue  # features this file was not saved with
        if inputs is None or isinstance(inputs, str):
            key = inputs or "expected_dice"
            rows = [{"quality": s["features"][key], "dice": s["dice"]} for s in samples]
        else:
            Q.INPUTS = tuple(inputs)
            try:
                _, _, rows = Q.cross_fit(samples, structures, 5, alpha)
            finally:
                Q.INPUTS = chosen
        a = Q.agreement([r["quality"] for r in rows], [r["dice"] for r in rows])
        out.append({"candidate": name, **{k: a[k] for k in ("spearman", "mae", "auroc_dice_below_0.7", "auroc_dice_below_0.9", "n")}})
    return out


def alpha_sweep(path: str, alphas: list[float]) -> list[dict]:
    rows = []
    for alpha in alphas:
        row = next(r for r in compare(path, alpha) if r["candidate"].endswith("(chosen)"))
        rows.append({**row, "candidate": f"{row['candidate']}, ridge alpha {alpha:g}"})
    return rows


if __name__ == "__main__":
    if "--alphas" in sys.argv:
        alphas = [float(a) for a in sys.argv[sys.argv.index("--alphas") + 1].split(",")]
        rows = alpha_sweep(sys.argv[1], alphas)
    else:
        rows = compare(sys.argv[1])
    for row in rows:
        print(json.dumps(row))
