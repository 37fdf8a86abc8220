"""The order ``delineo --help`` lists the commands in, their panels and a one-line example each.

The commands register themselves in their own modules; :func:`apply` sorts them into the order a new
user needs them (contour first, then the contour tools, then training on one's own contours, then
deployment and the research commands) and gives each one its example, in the command list and as the
epilog of its own ``--help``. ``docs/cli.md`` is generated from the same table (``make cli-docs``).
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    command: str
    panel: str
    summary: str
    example: str


START = "Start here: contour"
TOOLS = "Contour tools (masks in, masks out)"
OWN = "Train on your own contours"
DEPLOY = "Deployment"
RESEARCH = "Benchmarks and research"

#: every command, in the order ``delineo --help`` lists them
GUIDE: list[Entry] = [
    Entry("demo", START, "Contour a held-out case of the development data with each bundled model.", "delineo demo"),
    Entry("models", START, "List the bundled models and their structures.", "delineo models"),
    Entry("contour", START, "Contour a CT (NIfTI, DICOM folder or zip) or a chest X-ray PNG; DICOM input also gets an RTSTRUCT and SEG.",
          "delineo contour ~/exports/HN_0042/CT -o out/HN_0042"),
    Entry("serve", START, "Run the web service (and with --dicom-port the DICOM node beside it).",
          "delineo serve --dicom-port 11112"),
    Entry("dicom-node", START, "Receive CT by C-STORE, contour it, send the RT Structure Set to the planning system.",
          "delineo dicom-node --allowed-ae CT1 --forward TPS@10.0.0.5:104"),
    Entry("margin", TOOLS, "Grow or shrink a structure by a margin in mm.", "delineo margin PTV70.nii.gz --mm 5 -o PTV70_5mm.nii.gz"),
    Entry("boolean", TOOLS, "Union, intersection or subtraction of structures on one grid.",
          "delineo boolean subtract Body.nii.gz PTV70.nii.gz -o Body-PTV.nii.gz"),
    Entry("ring", TOOLS, "A ring around a structure (structure + outer mm minus structure + inner mm).",
          "delineo ring PTV70.nii.gz --outer-mm 10 -o Ring.nii.gz"),
    Entry("remove-islands", TOOLS, "Remove connected components smaller than a volume in cc.",
          "delineo remove-islands Mask.nii.gz --min-cc 0.5 -o Clean.nii.gz"),
    Entry("import-dicom", OWN, "Turn a clinic's CT + RT Structure Set export into a training dataset.",
          "delineo import-dicom ~/exports/clinic dataset/ --roi-map roi-map.yaml"),
    Entry("audit", OWN, "Rank a dataset's contours from most to least suspicious, with overlays of the worst.",
          "delineo audit --data dataset/ --model hn-ct --out audit/"),
    Entry("train", OWN, "Train a model from a YAML config (resumes when re-run).", "delineo train --config configs/my-model.yaml"),
    Entry("evaluate", OWN, "Contour every case of a dataset and compare with its reference contours.",
          "delineo evaluate --model models/my-model --data dataset/ --out report.json"),
    Entry("quality-fit", OWN, "Fit a model's quality estimate (estimated Dice, review flag) on cases it did not train on.",
          "delineo quality-fit --model models/my-model --data dataset-val/"),
    Entry("worker", DEPLOY, "Take contouring jobs from the Redis queue (scale-out beside delineo serve).",
          "DELINEO_QUEUE=redis://127.0.0.1:6379/0 delineo worker"),
    Entry("stress", DEPLOY, "Drive a running server with concurrent users; report throughput, latency, errors.",
          "delineo stress --users 20 --studies 2 --admin-password \"$PW\" --out stress.json"),
    Entry("bench-contour", DEPLOY, "Per-stage contouring times and memory, against an nnU-Net-style sliding window.",
          "delineo bench-contour ct.nii.gz --model hn-ct --repeat 5"),
    Entry("noise-benchmark", RESEARCH, "Train noisy-label methods on corrupted labels and score them on clean ones.",
          "delineo noise-benchmark --data jsrt/ --out bench/ --base-config configs/cxr-jsrt.yaml"),
    Entry("noise-summary", RESEARCH, "Pool noise-benchmark replicates over training seeds (mean ± sd, paired differences).",
          "delineo noise-summary bench/ bench-seed1/ --out seeds/"),
    Entry("ablation", RESEARCH, "Train the steps of an ablation (one change each) and compare validation Dice.",
          "delineo ablation configs/hn-ablation.yaml --out ablation/"),
]


def apply(app) -> None:
    """Order ``app``'s registered commands by :data:`GUIDE` and give each its panel, summary and example."""
    from rich.markup import escape

    by_name = {e.command: e for e in GUIDE}
    rank = {e.command: i for i, e in enumerate(GUIDE)}

    def name_of(info) -> str:
        return info.name or info.callback.__name__.replace("_", "-")

    app.registered_commands.sort(key=lambda info: rank.get(name_of(info), len(GUIDE)))
    for info in app.registered_commands:
        entry = by_name.get(name_of(info))
        if entry is None:
            continue
        info.rich_help_panel = entry.panel
        info.short_help = f"{escape(entry.summary)}\n[dim]$ {escape(entry.example)}[/dim]"
        info.epilog = f"Example: {escape(entry.example)}"
