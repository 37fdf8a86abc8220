"""MkDocs hook: one model-card page per bundled model, generated from ``models/<name>/model.json`` at every
build, so a card never drifts from the model it describes (a retrained model's card changes with it).

Also: ``<!-- delineo:settings -->`` in a page becomes the web service's settings table, the docstring of
``src/delineo/service/config.py`` (read, not imported), so the documented settings are the code's.

And: figures that a benchmark writes under ``benchmarks/results/`` (``RESULT_FIGURES``) are served
from there at the path a page links to, so that the page shows the figure the last run wrote, without
a second copy of it in the repository.

And: pages that another part of the project owns and that may not exist yet (``OPTIONAL_PAGES``) are
left out of the navigation, with a note in the build log, instead of failing a ``--strict`` build.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.model_cards")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
OPTIONAL_PAGES = {"security.md", "viewer.md"}
# docs path -> figure a benchmark writes (rewritten by its runs; shown where a page links the docs path)
RESULT_FIGURES = {"benchmarks/figures/hn-campaign-learning-curve.png": ROOT / "benchmarks/results/hn-campaign/learning_curve.png"}
# figures a model folder may hold, shown on its card
FIGURES = {"training_curves.png": "Training curves", "learning_curve.png": "Learning curve (validation Dice per structure)"}


def _models() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for card in sorted(MODELS.glob("*/model.json")):
        out.append((card.parent.name, json.loads(card.read_text())))
    return out


def _prune(nav: list, docs_dir: Path) -> list:
    kept = []
    for item in nav:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                kept.append({title: _prune(value, docs_dir)})
                continue
            if isinstance(value, str) and value in OPTIONAL_PAGES and not (docs_dir / value).is_file():
                log.info("nav: %s is not written yet; left out", value)
                continue
        kept.append(item)
    return kept


def on_config(config, **kwargs):
    docs_dir = Path(config["docs_dir"])
    nav = _prune(config["nav"], docs_dir)
    for i, item in enumerate(nav):
        if isinstance(item, dict) and "Model cards" in item:
            nav[i] = {"Model cards": ["models/index.md"] + [{name: f"models/{name}.md"} for name, _ in _models()]}
    config["nav"] = nav
    return config


def on_files(files, config, **kwargs):
    models = _models()
    files.append(File.generated(config, "models/index.md", content=_index(models)))
    for name, meta in models:
        files.append(File.generated(config, f"models/{name}.md", content=_card(name, meta)))
        for figure in FIGURES:
            if (MODELS / name / figure).is_file():
                files.append(File.generated(config, f"models/{name}-{figure}", abs_src_path=str(MODELS / name / figure)))
    for uri, source in RESULT_FIGURES.items():
        if source.is_file():
            files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    import re

    for name in OPTIONAL_PAGES:  # a link to a page not written yet stays as its text
        if files.get_file_from_path(name) is None:
            markdown = re.sub(r"\[([^\]]+)\]\((?:\.\./)?" + re.escape(name) + r"(#[^)]*)?\)", r"\1", markdown)
    marker = "<!-- delineo:settings -->"
    if marker in markdown:
        import ast

        source = (ROOT / "src" / "delineo" / "service" / "config.py").read_text()
        doc = ast.get_docstring(ast.parse(source)) or ""
        markdown = markdown.replace(marker, "```\n" + doc.replace("``", "") + "\n```")
    return markdown


def on_serve(server, config, builder, **kwargs):  # `mkdocs serve` rebuilds when a model card changes
    server.watch(str(MODELS))
    return server


# ---- rendering ---------------------------------------------------------------------------------

def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _mean_dice(meta: dict) -> tuple[float | None, str]:
    v = meta.get("validation") or {}
    if "evaluated" in v:
        return v["evaluated"].get("mean_dice"), "input grid, `delineo evaluate`"
    return v.get("mean_dice_model_grid"), "model grid, during training"


def _index(models: list[tuple[str, dict]]) -> str:
    lines = [
        "# Model cards",
        "",
        "One page per model under `models/`, generated from its `model.json` at every documentation build",
        "(`docs/hooks/model_cards.py`): what it contours, how it was trained, on which data and machine, and",
        "its measured accuracy with the command that measured it. `delineo models` lists the same models.",
        "",
        "| model | input | structures | mean Dice (validation) | measured on |",
        "|---|---|---|---|---|",
    ]
    for name, meta in models:
        dims = meta.get("network", {}).get("spatial_dims")
        dice, where = _mean_dice(meta)
        lines.append(f"| [{name}]({name}.md) | {'3D CT' if dims == 3 else '2D image'} | {len(meta.get('structures', []))} "
                     f"| {_f(dice)} | {where} |")
    return "\n".join(lines) + "\n"


def _card(name: str, meta: dict) -> str:
    net = meta.get("network", {})
    tr = meta.get("training", {})
    data = tr.get("data", {})
    cfg_t = (tr.get("config") or {}).get("training", {})
    pre = meta.get("preprocess", {})
    roi_types = meta.get("roi_types") or {}
    weights = MODELS / name / "weights.safetensors"
    lines = [f"# {name}", "", meta.get("description", ""), ""]
    lines += ["Generated from `models/%s/model.json`; use it with `--model %s`." % (name, name), ""]

    lines += ["## Structures", "", "| structure | RT ROI type |", "|---|---|"]
    lines += [f"| {s} | {roi_types.get(s, '-')} |" for s in meta.get("structures", [])]
    lines += [""]

    lines += ["## Network and preprocessing", ""]
    lines += [f"- {net.get('spatial_dims')}D U-Net, channels {net.get('channels')}, residual {net.get('residual', False)}, "
              f"squeeze-excitation {net.get('squeeze_excitation', False)}, {net.get('norm', 'instance')} norm; "
              f"{tr.get('parameters', 0):,} parameters"]
    if weights.is_file():
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        lines += [f"- weights `weights.safetensors`: {weights.stat().st_size / 1e6:.1f} MB, SHA-256 `{digest}`"]
    if "spacing_mm" in pre:
        lines += [f"- resampled to {pre['spacing_mm']} mm"]
    inten = pre.get("intensity") or {}
    if inten:
        lines += [f"- intensity: {inten.get('kind')} {inten.get('low')} to {inten.get('high')}"]
    inf = meta.get("inference") or {}
    lines += [f"- inference: {'whole image' if not inf.get('patch_size') else 'sliding window ' + str(inf['patch_size'])}, "
              f"threshold {inf.get('threshold')}, mirroring {inf.get('mirror')}"]
    post = meta.get("postprocess") or {}
    if post.get("keep_largest"):
        lines += ["- keep the largest connected components: " + ", ".join(f"{k} {v}" for k, v in post["keep_largest"].items())]
    if post.get("min_component_cc"):
        lines += ["- drop connected components under a volume: "
                  + ", ".join(f"{k} {v:g} cm³" for k, v in post["min_component_cc"].items())]
    if post.get("exclusive"):
        lines += ["- one structure per voxel (the most probable) within: " + "; ".join(", ".join(g) for g in post["exclusive"])]
    lines += [""]

    lines += ["## Training", ""]
    lines += [f"- command: `{tr.get('command', '-')}`"]
    lines += [f"- data: `{data.get('train')}` ({data.get('n_train')} training cases); validation: {data.get('val')} "
              f"({data.get('n_val')} cases)"]
    epochs = f"{tr['epochs']} epochs (best {tr.get('best_epoch')})" if tr.get("epochs") else f"epoch {tr.get('best_epoch')}"
    lines += [f"- {epochs}, batch {cfg_t.get('batch_size')}, "
              f"{cfg_t.get('optimizer')} lr {cfg_t.get('lr')}, {cfg_t.get('schedule')} schedule, loss {cfg_t.get('loss')}, "
              f"seed {tr.get('seed')}"]
    if tr.get("seconds") is not None:
        lines += [f"- {tr['seconds'] / 60:.1f} min on {tr.get('hardware')} (device {tr.get('device')})"]
    camp = tr.get("campaign")
    if camp:
        lines += [f"- trained by the campaign `{camp['config']}` to epoch {camp['epoch']} ({camp['steps']:,} steps, "
                  f"{camp['cpu_hours']:.2f} of its {camp['budget_cpu_hours']} CPU-hours, learning rate {camp.get('lr')}), "
                  f"in {len(camp['segments'])} segments:"]
        lines += [f"    - epochs {s['epochs'][0]}-{s['epochs'][1]}: {s['cpu_hours']:.2f} CPU-hours on {s['hardware']}, "
                  f"{s.get('precision') or 'precision not recorded'}"
                  for s in camp["segments"]]
    init = tr.get("init_weights")
    while isinstance(init, dict):
        lines += [f"- started from `{init.get('model')}` (SHA-256 `{str(init.get('weights_sha256', ''))[:16]}…`), itself trained by "
                  f"`{init.get('command')}`: {init.get('epochs')} epochs, {(init.get('seconds') or 0) / 60:.1f} min on {init.get('hardware')}"]
        init = init.get("init_weights")
    if tr.get("label_noise"):
        corrupted = sum(1 for r in tr["label_noise"] if r.get("corrupted"))
        lines += [f"- synthetic label noise: {corrupted} of {len(tr['label_noise'])} training labels corrupted"]
    lines += [""]

    v = meta.get("validation") or {}
    lines += ["## Accuracy", ""]
    ev = v.get("evaluated")
    if ev:
        lines += [f"Measured by `{ev.get('command')}` on {ev.get('cases')} ({ev.get('hardware')}, "
                  f"{_f(ev.get('seconds_per_case'), 2)} s per case{', ' + ev['precision'] if ev.get('precision') else ''}); "
                  "a structure counts only in the cases where it has a reference contour.", ""]
        lines += ["| structure | Dice | HD95 mm | ASD mm | surface Dice 2 mm | n |", "|---|---|---|---|---|---|"]
        for s, m in ev.get("structures", {}).items():
            lines.append(f"| {s} | {_f(m.get('dice'))} | {_f(m.get('hd95_mm'), 1)} | {_f(m.get('asd_mm'), 2)} | "
                         f"{_f(m.get('surface_dice_2mm'))} | {m.get('n', '-')} |")
        lines.append(f"| **mean** | **{_f(ev.get('mean_dice'))}** | | | | |")
        lines += [""]
    if v.get("dice_model_grid"):
        lines += [f"{(v.get('note') or 'validation Dice on the model grid during training').capitalize()}: mean "
                  f"{_f(v.get('mean_dice_model_grid'))}; " + ", ".join(f"{k} {_f(x)}" for k, x in v["dice_model_grid"].items()) + ".", ""]
    if not ev and not v.get("dice_model_grid"):
        lines += ["No validation figures recorded yet.", ""]
    lines += ["The validation cases also chose the epoch kept, so these figures are slightly optimistic; "
              "they are not from a separate held-out test set.", ""]

    q = meta.get("quality")
    if q:  # the per-structure quality estimate (issue 21)
        oof = q.get("out_of_fold") or {}
        lines += ["## Quality estimate", "",
                  f"Each contour gets `quality` (an estimate of its Dice against an expert's) and `review` (below "
                  f"{_f(q.get('threshold'))}: {q.get('threshold_rule')}). Method: {q.get('method')}. Fitted by `{q.get('command')}` "
                  f"on {q.get('n_cases')} cases the model did not train on; out-of-fold ({q.get('folds')} folds) over "
                  f"{oof.get('n')} contours: Spearman {_f(oof.get('spearman'))}, mean absolute error {_f(oof.get('mae'))}, "
                  f"AUROC for Dice < 0.7 {_f(oof.get('auroc_dice_below_0.7'))} ({oof.get('n_dice_below_0.7')} such contours). "
                  "Details: `benchmarks/results/quality/`.", ""]

    for figure, title in FIGURES.items():
        if (MODELS / name / figure).is_file():
            lines += [f"## {title}", "", f"![{title.lower()} of {name}]({name}-{figure})", ""]
    return "\n".join(lines)
