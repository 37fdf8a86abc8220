"""The noisy-label benchmark (``delineo noise-benchmark``): methods x noise fraction x noise level.

For every method and every noise condition (plus clean labels) one model is trained with the one
training loop on labels of the training images corrupted by the thesis's protocol
(:mod:`delineo.data.noise`: a fraction of the samples, every structure eroded or dilated by a disc
of random radius in a range), then evaluated against **clean** labels of a test set: the
``test_data`` folder, or else the validation cases held out from ``data`` (recorded in each
model's ``model.json``; their labels are never corrupted or trained on).

Layout of ``out``::

    runs/<run-id>/result.json      one finished run (its presence means: skip on the next call)
    runs/<run-id>/evaluation.json  the full evaluation report (+ Dice box plot)
    runs/<run-id>/model/           model.json, history.json, curves; weights kept only for `keep`
    runs/<run-id>/work/            checkpoint: an interrupted run resumes from it; kept only for `keep`
    results.json, results.md, results.png   every finished run in runs/ (this sitting's grid and
                                            earlier ones with the same test cases and epochs)

Run ids: ``<method>__clean`` or ``<method>__a<fraction>__r<rmin>-<rmax>`` (e.g. ``qam__a0.75__r5-13``).

Replicates with other training seeds go to folders of their own; :func:`replicate_summary`
(``delineo noise-summary``) pools such folders into mean ± sd per method and condition and the
paired difference of each method from the baseline trained with the same seed.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from delineo.errors import ConfigError, InputError
from delineo.inference.evaluate import evaluate
from delineo.machine import hardware_description, resolve_device
from delineo.settings import read_yaml_mapping
from delineo.training.config import TrainConfig
from delineo.training.loop import train

#: name -> (label in tables, overrides of the ``training`` config section)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("baseline", {}),
    "qam": ("QAM+OCM", {"weighting": {"kind": "qam"}}),
    "qam_raw": ("QAM (no OCM)", {"weighting": {"kind": "qam", "ocm_lambda": None}}),
    "bce": ("cross-entropy only", {"loss": "bce"}),
    "nr_dice": ("noise-robust Dice", {"loss": "nr_dice"}),
    "gce": ("GCE", {"loss": "gce"}),
    "dice_gce": ("Dice+GCE", {"loss": "dice_gce"}),
    "small_loss": ("small-loss", {"weighting": {"kind": "small_loss"}}),
    "loss_gmm": ("loss-GMM", {"weighting": {"kind": "loss_gmm"}}),
    "agreement": ("agreement selection", {"weighting": {"kind": "agreement"}}),
    # not a method: knows which labels were corrupted and ignores them (the ceiling of selection)
    "oracle": ("oracle: corrupted labels ignored", {"label_noise": {"ignore_corrupted": True}}),
}
#: rows that know which labels were corrupted: a reference for the methods, never the best of a row
REFERENCE_METHODS = ("oracle",)
DEFAULT_METHODS = ("baseline", "qam", "nr_dice", "dice_gce", "small_loss", "loss_gmm")
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
DEFAULT_LEVELS = ((1, 8), (5, 13))
#: (fraction, level) whose model folders (weights, checkpoint) are kept, for every method
DEFAULT_KEEP = ((0.75, (5, 13)),)
SELECTIONS = ("last", "best-val")

#: used when no base config is given: the seed's 2D U-Net and schedule (configs/cxr-jsrt.yaml
#: without the JSRT-specific structure names, pixel size and post-processing)
DEFAULT_BASE: dict[str, Any] = {
    "data": {"val_fraction": 0.15, "split_seed": 0},
    "network": {"channels": [16, 32, 64, 96, 128]},
    "preprocess": {"intensity": {"kind": "window", "low": 0, "high": 255}},
    "training": {"epochs": 60, "batch_size": 8, "lr": 0.002, "optimizer": "adam", "schedule": "poly", "loss": "dice_bce", "seed": 0},
}


@dataclass
class Method:
    """One column of the comparison: ``spec`` as given (``qam`` or ``qam:ocm_lambda=1``)."""

    spec: str
    name: str
    label: str
    training: dict[str, Any] = field(default_factory=dict)


def parse_method(spec: str) -> Method:
    """``name[:key=value[+key=value...]]``; options go to the method's weighting block,
    e.g. ``qam:ocm_lambda=1`` or ``small_loss:forget_rate=0.4+warmup_steps=200``."""
    name, _, opts = spec.strip().partition(":")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (available: {', '.join(METHODS)})")
    label, training = METHODS[name]
    training = copy.deepcopy(training)
    options: dict[str, Any] = {}
    for item in filter(None, opts.split("+")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"method {spec!r}: options are key=value joined by '+', got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    if options:
        if "weighting" not in training:
            raise ConfigError(f"method {spec!r}: {name} has no weighting options to set")
        training["weighting"].update(options)
        label += " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    return Method(spec.strip(), name, label, training)


def is_reference(spec: str) -> bool:
    """True for a reference row (:data:`REFERENCE_METHODS`) rather than a method."""
    return spec.partition(":")[0] in REFERENCE_METHODS


def method_order_key(spec: str) -> tuple:
    """Tables list methods as :data:`METHODS` does, each plain method before its option variants."""
    name = spec.partition(":")[0]
    return (list(METHODS).index(name) if name in METHODS else len(METHODS), spec != name, spec)


def parse_level(text: str) -> tuple[int, int]:
    """``"1-8"`` -> ``(1, 8)``: erosion/dilation radius range in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m or int(m[1]) > int(m[2]):
        raise ConfigError(f"noise level {text!r}: expected RMIN-RMAX in pixels, e.g. 1-8")
    return int(m[1]), int(m[2])


def parse_fraction(text: str | float) -> float:
    try:
        f = float(text)
    except ValueError:
        raise ConfigError(f"noise fraction {text!r} is not a number") from None
    if not 0 < f <= 1:
        raise ConfigError(f"noise fraction {text!r} must be in (0, 1]")
    return f


def level_name(level: Sequence[int] | None) -> str:
    return "-" if level is None else f"{level[0]}-{level[1]}"


def run_id(method: Method, fraction: float | None, level: tuple[int, int] | None) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", method.spec)
    return f"{safe}__clean" if fraction is None else f"{safe}__a{fraction:g}__r{level[0]}-{level[1]}"


def load_base(base_config: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """The base config as a dict (a YAML path, a dict, or None for :data:`DEFAULT_BASE`)."""
    if base_config is None:
        return copy.deepcopy(DEFAULT_BASE)
    if isinstance(base_config, dict):
        return copy.deepcopy(base_config)
    return read_yaml_mapping(base_config)


def make_config(
    base: dict[str, Any], method: Method, fraction: float | None, level: tuple[int, int] | None, *,
    data: Path, run_dir: Path, epochs: int | None, device: str | None, selection: str, noise_seed: int | None,
):
    """The :class:`TrainConfig` of one run: the base config with the method's overrides, the
    label noise, and output/work_dir under ``run_dir``."""
    d = copy.deepcopy(base)
    d["name"] = f"noise-{run_dir.name}"
    d["output"] = str(run_dir / "model")
    d["work_dir"] = str(run_dir / "work")
    d["data"] = {**(d.get("data") or {}), "train": str(data)}
    training = dict(d.get("training") or {})
    training.update(copy.deepcopy(method.training))
    if epochs is not None:
        training["epochs"] = int(epochs)
    if device is not None:
        training["device"] = device
    training["label_noise"] = None if fraction is None else {
        **(training.get("label_noise") or {}),
        "fraction": fraction, "radius": list(level), "seed": label_noise_seed(training.get("seed", 0), noise_seed)}
    d["training"] = training
    cfg = TrainConfig.from_dict(d, where=f"noise benchmark run {run_dir.name}")
    if selection == "last":  # validate (and so save) only after the last epoch
        cfg.training.val_every = cfg.training.epochs
    return cfg


def label_noise_seed(training_seed: int | None, noise_seed: int | None) -> int:
    """The seed of the label corruption: ``noise_seed``, or by default the training seed."""
    return int(training_seed or 0) if noise_seed is None else int(noise_seed)


def _cleanup(run_dir: Path, keep: bool) -> None:
    """Drop the weights and checkpoint of a finished run unless it is one to keep."""
    if keep:
        return
    for p in (run_dir / "model" / "weights.safetensors", run_dir / "work" / "checkpoint.pt", run_dir / "work" / "checkpoint.pt.tmp"):
        p.unlink(missing_ok=True)


def _selection_record(record: dict[str, Any] | None, noise: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For a method that drops training labels (``agreement``): how many it kept and, with
    synthetic noise, how many of the kept and of the dropped were corrupted."""
    if not record or "dropped_cases" not in record:
        return None
    dropped = set(record["dropped_cases"])
    corrupted = {r["case"] for r in noise if r["corrupted"]}
    out = {"n_kept": record["n_kept"], "n_train": record["n_train"], "selected_before_epoch": record.get("selected_before_epoch")}
    if record.get("history"):  # every selection: (epoch, labels kept)
        out["history"] = record["history"]
    if noise:
        kept_cases = [r["case"] for r in noise if r["case"] not in dropped]
        out["corrupted_among_kept"] = sum(c in corrupted for c in kept_cases)
        out["corrupted_among_dropped"] = len(dropped & corrupted)
    return out


def clean_method_specs(specs: Sequence[str], clean_methods: Iterable[str] | None) -> list[str]:
    """The methods also trained on clean labels: ``clean_methods``, checked against ``specs``, or by
    default every method but the reference rows (with nothing corrupted, the oracle trains the
    baseline again)."""
    chosen = [s for s in specs if not is_reference(s)] if clean_methods is None else list(clean_methods)
    unknown = sorted(set(chosen) - set(specs))
    if unknown:
        raise ConfigError(f"clean methods {', '.join(unknown)} are not among the methods run ({', '.join(specs)})")
    if any(is_reference(s) for s in chosen):
        raise ConfigError(f"clean methods: {', '.join(s for s in chosen if is_reference(s))} differs from the baseline only "
                          "on noisy labels (nothing is corrupted on clean ones)")
    return chosen


def _condition_key(row: dict[str, Any]) -> tuple:
    return (row["level"] is not None, tuple(row["radius"] or ()), row["fraction"])


def _noise_label(fraction: float | None) -> str:
    return "none" if fraction is None else f"{fraction:.0%}"


def run_benchmark(
    data: str | Path,
    out: str | Path,
    *,
    test_data: str | Path | None = None,
    methods: Iterable[str] = DEFAULT_METHODS,
    fractions: Iterable[float] = DEFAULT_FRACTIONS,
    levels: Iterable[Sequence[int]] = DEFAULT_LEVELS,
    clean: bool = True,
    clean_methods: Iterable[str] | None = None,
    epochs: int | None = None,
    device: str | None = None,
    base_config: str | Path | dict[str, Any] | None = None,
    selection: str = "last",
    keep: Iterable[tuple[float, Sequence[int]]] | None = None,
    noise_seed: int | None = None,
    seed: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (method, condition) not finished yet; write the summary files.

    Returns the content of ``results.json``. ``selection``: ``last`` uses the last epoch's weights
    (no clean labels are used in training at all); ``best-val`` keeps the epoch with the best Dice
    on the clean held-out validation cases of ``data``. ``keep``: the (fraction, level) whose model
    weights and checkpoints stay (default :data:`DEFAULT_KEEP`); other runs keep only their metrics.
    ``clean_methods``: the methods also trained on clean labels (default: all of ``methods``; with
    ``clean=False`` none), e.g. only ``baseline`` for the thesis's single clean row. ``seed``: the
    training seed (default: the base config's); ``noise_seed``: the seed of the label corruption
    (default: the training seed). A replicate with another training seed and the same noisy labels
    (``seed=1, noise_seed=0``) belongs in its own ``out`` (run ids do not name the seed).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    data, out = Path(data), Path(out)
    _check_benchmark_inputs(data, test_data, selection)
    method_list, fraction_list, level_list, keep_set = _parse_grid(methods, fractions, levels, keep)
    base = load_base(base_config)
    if seed is not None:
        base["training"] = {**(base.get("training") or {}), "seed": int(seed)}

    clean_specs = clean_method_specs([m.spec for m in method_list], clean_methods)
    conditions = [(f, lv) for lv in level_list for f in fraction_list]
    grid = [(m, None, None) for m in method_list if clean and m.spec in clean_specs]
    grid += [(m, f, lv) for f, lv in conditions for m in method_list]  # condition-major: rows fill up together
    rows: list[dict[str, Any]] = []
    runs_dir = out / "runs"
    for i, (method, fraction, level) in enumerate(grid, 1):
        rows.append(_run_or_reuse(
            f"[{i}/{len(grid)}]", method, fraction, level, runs_dir=runs_dir, base=base, data=data, test_data=test_data,
            keep_this=fraction is not None and (fraction, level) in keep_set, epochs=epochs, device=device,
            selection=selection, noise_seed=noise_seed, command=command, log=log))

    rows, method_list, fraction_list, level_list = _add_earlier_runs(rows, runs_dir, method_list, fraction_list, level_list, log)
    results = _results_record(
        rows, method_list, fraction_list, level_list, data=data, test_data=test_data, selection=selection,
        base=base, base_config=base_config, epochs=epochs, noise_seed=noise_seed, command=command, device=device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    plot_results(results, out / "results.png")
    return results


def _check_benchmark_inputs(data: Path, test_data: str | Path | None, selection: str) -> None:
    """Refuse a missing training or test folder and an unknown ``selection``."""
    if not data.is_dir():
        raise InputError(data, "training data folder does not exist")
    if test_data is not None and not Path(test_data).is_dir():
        raise InputError(test_data, "test data folder does not exist")
    if selection not in SELECTIONS:
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def _parse_grid(
    methods: Iterable[str], fractions: Iterable[float], levels: Iterable[Sequence[int]],
    keep: Iterable[tuple[float, Sequence[int]]] | None,
) -> tuple[list[Method], list[float], list[tuple[int, ...]], set[tuple[float, tuple[int, ...]]]]:
    """The parsed methods, noise fractions, levels ((rmin, rmax) in pixels) and the set of
    (fraction, level) whose model folders are kept (default :data:`DEFAULT_KEEP`)."""
    method_list = [parse_method(m) for m in methods]
    if not method_list:
        raise ConfigError("no methods to run")
    if len({m.spec for m in method_list}) != len(method_list):
        raise ConfigError("a method is named twice")
    fraction_list = [parse_fraction(f) for f in fractions]
    level_list = [tuple(int(r) for r in lv) if not isinstance(lv, str) else parse_level(lv) for lv in levels]
    keep_set = {(float(f), tuple(int(r) for r in lv)) for f, lv in (DEFAULT_KEEP if keep is None else keep)}
    return method_list, fraction_list, level_list, keep_set


def _run_or_reuse(
    prefix: str, method: Method, fraction: float | None, level: tuple[int, int] | None, *,
    runs_dir: Path, base: dict[str, Any], data: Path, test_data: str | Path | None, keep_this: bool,
    epochs: int | None, device: str | None, selection: str, noise_seed: int | None, command: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The result row of one run: read from its ``result.json`` when it finished earlier, else
    trained, evaluated on clean labels and written there (atomically). ``prefix``: ``[i/n]`` for the log."""
    rid = run_id(method, fraction, level)
    run_dir = runs_dir / rid
    result_path = run_dir / "result.json"
    if result_path.is_file():
        log(f"{prefix} {rid}: finished earlier, skipped")
        row = json.loads(result_path.read_text())
        _cleanup(run_dir, keep_this)
        return row
    log(f"{prefix} {rid}: training")
    cfg = make_config(base, method, fraction, level, data=data, run_dir=run_dir, epochs=epochs, device=device,
                      selection=selection, noise_seed=noise_seed)
    t0 = time.perf_counter()
    model_dir = train(cfg, resume=True, command=command)
    wall = time.perf_counter() - t0
    tr = json.loads((model_dir / "model.json").read_text())["training"]
    if test_data is not None:
        report = evaluate(model_dir, test_data, run_dir / "evaluation.json", device=cfg.training.device)
    else:
        report = evaluate(model_dir, data, run_dir / "evaluation.json", device=cfg.training.device, cases=tr["data"]["val_cases"])
    row = _result_row(rid, method, fraction, level, cfg=cfg, tr=tr, report=report, wall=wall,
                      model_dir=model_dir, run_dir=run_dir, keep_this=keep_this)
    tmp = result_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    tmp.replace(result_path)
    _cleanup(run_dir, keep_this)
    avg = "-" if row["avg"] is None else f"{row['avg']:.4f}"
    log(f"{prefix} {rid}: avg Dice {avg} on {row['n_test']} clean test cases")
    return row


def _result_row(
    rid: str, method: Method, fraction: float | None, level: tuple[int, int] | None, *, cfg, tr: dict[str, Any],
    report: dict[str, Any], wall: float, model_dir: Path, run_dir: Path, keep_this: bool,
) -> dict[str, Any]:
    """The ``result.json`` of one finished run: Dice per structure and average on the clean test
    cases, the training record ``tr`` (model.json's ``training``), timing (seconds) and the label noise."""
    noise = tr.get("label_noise") or []
    corrupted = [r for r in noise if r["corrupted"]]
    return {
        "run": rid,
        "method": method.spec,
        "label": method.label,
        "fraction": fraction,
        "level": None if level is None else level_name(level),
        "radius": None if level is None else list(level),
        "dice": {name: s["dice"] for name, s in report["structures"].items()},
        "avg": report["mean_dice"],
        "n_test": len(report["cases"]),
        "test_cases": [c["case"] for c in report["cases"]],
        "loss": cfg.training.loss,
        "weighting": cfg.training.weighting,
        "epochs": tr.get("epochs"),
        "seed": cfg.training.seed,
        "best_epoch": tr.get("best_epoch"),
        "train_seconds": tr.get("seconds"),
        "seconds_per_epoch": (tr["seconds"] / tr["epochs"]) if tr.get("seconds") is not None and tr.get("epochs") else None,
        "wall_seconds_this_sitting": round(wall, 1),
        "hardware": tr.get("hardware"),
        "device": tr.get("device"),
        "noise": {
            "n_train": tr["data"]["n_train"],
            "n_corrupted": len(corrupted),
            "mean_label_dice_of_corrupted": float(np.mean([np.mean(r["dice_vs_clean"]) for r in corrupted])) if corrupted else None,
            "seed": (cfg.training.label_noise or {}).get("seed"),
        },
        "selection": _selection_record(tr.get("weighting_record"), noise),
        "model": str(model_dir) if keep_this else None,
        "evaluation": str(run_dir / "evaluation.json"),
    }


def _add_earlier_runs(
    rows: list[dict[str, Any]], runs_dir: Path, method_list: list[Method], fraction_list: list[float],
    level_list: list[tuple[int, ...]], log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[Method], list[float], list[tuple[int, ...]]]:
    """This sitting's rows plus the finished runs of earlier sittings in ``runs_dir``, with the
    methods, fractions and levels widened to cover them.

    Earlier sittings may have run other methods or conditions into the same folder: the report
    covers every finished run there, so the table grows over sittings (only those trained as long
    and tested on the same cases as this sitting's runs)."""
    done = {r["run"] for r in rows}
    earlier = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/result.json")) if p.parent.name not in done]
    same = [r for r in earlier if not rows or (r.get("test_cases") == rows[0]["test_cases"] and r.get("epochs") == rows[0]["epochs"])]
    if len(same) < len(earlier):
        log(f"report: {len(earlier) - len(same)} earlier run(s) in {runs_dir} left out (other test cases or epochs)")
    earlier = same
    if earlier:
        log(f"report: also {len(earlier)} finished run(s) of earlier sittings in {runs_dir}")
        rows += earlier
        known = {m.spec for m in method_list}
        method_list += [parse_method(spec) for spec in dict.fromkeys(r["method"] for r in earlier) if spec not in known]
        # one order whatever each sitting asked for: as METHODS lists them, options after the plain method
        method_list.sort(key=lambda m: method_order_key(m.spec))
        noisy = [r for r in earlier if r["fraction"] is not None]
        if noisy:
            fraction_list = sorted(set(fraction_list) | {r["fraction"] for r in noisy})
            new_levels = {tuple(r["radius"]) for r in noisy} - set(level_list)
            if new_levels:
                level_list = sorted(set(level_list) | new_levels)
    return rows, method_list, fraction_list, level_list


def _results_record(
    rows: list[dict[str, Any]], method_list: list[Method], fraction_list: list[float], level_list: list[tuple[int, ...]], *,
    data: Path, test_data: str | Path | None, selection: str, base: dict[str, Any],
    base_config: str | Path | dict[str, Any] | None, epochs: int | None, noise_seed: int | None, command: str | None,
    device: str | None,
) -> dict[str, Any]:
    """The content of ``results.json``: the settings of the benchmark, every run's row, the
    structures seen and the training cost per epoch."""
    if test_data is not None:
        test_desc = f"clean labels of every case in {test_data}"
    else:
        n = rows[0]["n_test"] if rows else 0
        test_desc = (
            f"clean labels of the {n} validation cases held out from {data} (listed in each model's model.json; "
            "never trained on)" + ("; they also selected the epoch, so these figures are optimistic" if selection == "best-val" else "")
        )
    training_seed = (base.get("training") or {}).get("seed", 0)
    return {
        "data": str(data),
        "test": {"data": str(test_data) if test_data is not None else str(data),
                 "cases": "all" if test_data is not None else "validation split of data", "description": test_desc},
        "selection": selection,
        "base_config": str(base_config) if base_config is not None and not isinstance(base_config, dict) else ("dict" if base_config else "built-in default"),
        "epochs": epochs if epochs is not None else (base.get("training") or {}).get("epochs"),
        "seed": training_seed,
        "noise_seed": label_noise_seed(training_seed, noise_seed),
        "command": command,
        "hardware_now": hardware_description(resolve_device(device or "auto")),
        "methods": [{"method": m.spec, "label": m.label, "training": m.training} for m in method_list],
        "fractions": fraction_list,
        "levels": [level_name(lv) for lv in level_list],
        "clean": [m.spec for m in method_list if any(r["method"] == m.spec and r["fraction"] is None for r in rows)],
        "structures": _structures(rows),
        "cost_per_epoch": cost_per_epoch(rows),
        "runs": rows,
    }


def _structures(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [n for n in r["dice"] if n not in names]
    return names


def cost_per_epoch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per epoch of each method (mean over its runs) and, relative to ``baseline``, the mean
    ratio over the conditions both ran on the same hardware."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    base = {(r["fraction"], r["level"]): r for r in by_method.get("baseline", [])}
    out: dict[str, Any] = {}
    for method, rs in by_method.items():
        secs = [r["seconds_per_epoch"] for r in rs if r.get("seconds_per_epoch") is not None]
        ratios = [
            r["seconds_per_epoch"] / b["seconds_per_epoch"]
            for r in rs
            if (b := base.get((r["fraction"], r["level"]))) and r.get("seconds_per_epoch") is not None and b.get("seconds_per_epoch")
            and r.get("hardware") == b.get("hardware")
        ]
        out[method] = {
            "seconds_per_epoch": float(np.mean(secs)) if secs else None,
            "relative_to_baseline": float(np.mean(ratios)) if ratios else None,
            "n_compared": len(ratios),
        }
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The table: rows noise fraction x level x method (clean first), columns per structure + avg;
    the best average of each condition in bold."""
    names = results["structures"]
    rows = sorted(results["runs"], key=_condition_key)
    order = {m["method"]: i for i, m in enumerate(results["methods"])}
    lines = [
        "# Noisy-label benchmark",
        "",
        f"Training data: `{results['data']}` (labels of the training cases corrupted as in the thesis: a fraction of the samples, "
        "every structure eroded or dilated by a disc of random radius in the level's range, in pixels).",
        f"Test: {results['test']['description']}. Dice per structure and their average.",
        f"Epoch used: {'the last' if results['selection'] == 'last' else 'best Dice on the clean validation split'}; "
        f"epochs: {results['epochs']}; base config: {results['base_config']}; training seed {results.get('seed', 0)}, "
        f"label-noise seed {results['noise_seed']}.",
        "",
        "| noise | level | method | " + " | ".join(names) + " | avg |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_condition_key(r), []).append(r)
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda r: order.get(r["method"], len(order)))
        avgs = [r["avg"] for r in group if r["avg"] is not None and not is_reference(r["method"])]
        best = max(avgs) if len(group) > 1 and avgs else None
        for r in group:
            noise = _noise_label(r["fraction"])
            avg = _fmt(r["avg"])
            if best is not None and r["avg"] == best:
                avg = f"**{avg}**"
            cells = [_fmt(r["dice"].get(n)) for n in names]
            lines.append(f"| {noise} | {r['level'] or '-'} | {r['label']} | " + " | ".join(cells) + f" | {avg} |")
    if any(is_reference(r["method"]) for r in rows):
        lines += ["", "The oracle rows are a reference, not a method: they know which training labels were corrupted and "
                  "ignore them (only the clean labels teach the network), the most any sample selection could do; "
                  "the best method of each row is in bold."]
    selected = [r for r in rows if r.get("selection")]
    if selected:
        lines += ["", "Training labels kept by the selecting methods (the rest dropped from the epoch named on):", ""]
        for r in selected:
            sel = r["selection"]
            cond = "clean labels" if r["fraction"] is None else f"{_noise_label(r['fraction'])}, {r['level']} px"
            known = (f": {sel['corrupted_among_kept']} of the kept and {sel['corrupted_among_dropped']} of the dropped were corrupted"
                     if "corrupted_among_kept" in sel else "")
            steps = (" (kept at each selection: " + ", ".join(f"{h['n_kept']} from epoch {h['selected_before_epoch']}" for h in sel["history"]) + ")"
                     if len(sel.get("history") or ()) > 1 else "")
            lines.append(f"- {r['label']}, {cond}: kept {sel['n_kept']}/{sel['n_train']} from epoch {sel['selected_before_epoch']}{known}{steps}")
    cost = results["cost_per_epoch"]
    if cost:
        lines += ["", "Training cost per epoch (mean over the method's runs; relative: mean ratio to the baseline's run "
                  "of the same condition on the same hardware):", "", "| method | s/epoch | relative to baseline |", "|---|---|---|"]
        labels = {m["method"]: m["label"] for m in results["methods"]}
        for method, c in sorted(cost.items(), key=lambda kv: order.get(kv[0], len(order))):
            rel = "-" if c["relative_to_baseline"] is None else f"{c['relative_to_baseline']:.2f}x"
            secs = "-" if c["seconds_per_epoch"] is None else f"{c['seconds_per_epoch']:.1f}"
            lines.append(f"| {labels.get(method, method)} | {secs} | {rel} |")
    return "\n".join(lines) + "\n"


def method_styles(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Matplotlib line style of each method, the same in every panel of a plot: the ten tab10
    colours with round markers and solid lines, then the same colours with squares, dashed, and so on."""
    from matplotlib import colormaps

    tab10 = colormaps["tab10"]
    return {m: dict(color=tab10(i % 10), marker="os^D"[(i // 10) % 4], linestyle="-" if (i // 10) % 2 == 0 else "--")
            for i, m in enumerate(methods)}


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Average Dice against noise fraction (0 = clean labels), one panel per level, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"] or ["-"]
    width_in = 5.0 * len(levels)
    methods = [m["method"] for m in results["methods"]]
    # the legend goes under the panels, in as many columns as fit (long labels need ~3.5 in)
    ncol = max(1, min(len(methods), int(width_in // 3.5)))
    legend_in = 0.18 * math.ceil(max(1, len(methods)) / ncol) + 0.25
    height_in = 4.0 + legend_in
    fig, axes = plt.subplots(1, len(levels), figsize=(width_in, height_in), squeeze=False, sharey=True)
    styles = method_styles(methods)
    handles: dict[str, Any] = {}
    for ax, level in zip(axes[0], levels):
        for m in results["methods"]:
            pts = [(0.0 if r["fraction"] is None else r["fraction"], r["avg"]) for r in results["runs"]
                   if r["method"] == m["method"] and r["avg"] is not None and (r["level"] == level or r["fraction"] is None)]
            if pts:
                pts.sort()
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], **styles[m["method"]])
                handles.setdefault(m["method"], line)
        ax.set_title(f"noise level {level} px" if level != "-" else "clean")
        ax.set_xlabel("fraction of training labels corrupted (0 = clean)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("average Dice (clean test labels)")
    # one legend for the figure, every method that has a point in any panel
    shown = [m for m in results["methods"] if m["method"] in handles]
    fig.legend([handles[m["method"]] for m in shown], [m["label"] for m in shown], loc="lower center", ncol=ncol, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, legend_in / height_in, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _run_seed(row: dict[str, Any], folder: Path, folder_seed: int) -> int:
    """Training seed of a finished run: recorded in the row (newer runs), else in its model.json,
    else the seed of the sitting that wrote the folder's results.json."""
    if row.get("seed") is not None:
        return int(row["seed"])
    meta = folder / "runs" / row["run"] / "model" / "model.json"
    if meta.is_file():
        seed = ((json.loads(meta.read_text()).get("training") or {}).get("config") or {}).get("training", {}).get("seed")
        if seed is not None:
            return int(seed)
    return int(folder_seed)


def replicate_summary(result_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Pool noise-benchmark folders that differ only in the training seed.

    Every folder must hold a ``results.json`` with the same test cases and epochs. Runs are grouped
    by (fraction, level, method); for each group: the seeds, the average Dice of each seed, its mean
    and sample standard deviation (ddof=1), the mean per structure; and, against the ``baseline`` run
    of the same condition and seed, the paired differences of the average Dice (mean, sd, a 95 %
    t interval when there are at least two pairs, and in how many seeds the method was better).
    A (method, condition, seed) found in two folders is refused.
    """
    dirs = [Path(d) for d in result_dirs]
    if not dirs:
        raise ConfigError("no benchmark folders to summarise")
    runs, reference, labels = _load_replicate_runs(dirs)
    if not runs:
        raise InputError(dirs[0], "the benchmark folders hold no finished runs")

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["fraction"], r["level"], r["method"]), []).append(r)
    rows = [_replicate_row(key, rs, labels[key[2]], groups.get((key[0], key[1], "baseline"), []))
            for key, rs in groups.items()]
    rows.sort(key=lambda r: (*_condition_key(r), method_order_key(r["method"])))
    return {
        "folders": [str(d) for d in dirs],
        "epochs": reference[1] if reference else None,
        "n_test": len(reference[0] or []) if reference else 0,
        "structures": _structures(runs),
        "rows": rows,
        "noise_seeds": sorted({(r.get("noise") or {}).get("seed") for r in runs if r["fraction"] is not None} - {None}),
        "runs": [{**{k: r[k] for k in ("folder", "run", "method", "fraction", "level", "seed", "avg")},
                  "noise_seed": (r.get("noise") or {}).get("seed")} for r in runs],
    }


def _load_replicate_runs(
    dirs: Sequence[Path],
) -> tuple[list[dict[str, Any]], tuple[Any, Any, Path] | None, dict[str, str]]:
    """Every run of the folders' ``results.json`` with its training seed and folder added; the
    (test cases, epochs, folder) of the first run, which every other must match; each method's label.
    A (method, condition, seed) in two folders is refused."""
    runs: list[dict[str, Any]] = []
    reference: tuple[Any, Any, Path] | None = None
    seen: dict[tuple, Path] = {}
    labels: dict[str, str] = {}
    for d in dirs:
        path = d / "results.json"
        if not path.is_file():
            raise InputError(path, "no results.json here: not a noise-benchmark output folder (run delineo noise-benchmark first)")
        try:
            res = json.loads(path.read_text())
            folder_runs = res["runs"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(path, f"not a noise-benchmark results file ({exc})") from None
        for r in folder_runs:
            if reference is None:
                reference = (r.get("test_cases"), r.get("epochs"), d)
            elif (r.get("test_cases"), r.get("epochs")) != reference[:2]:
                raise InputError(path, f"run {r['run']} was tested on other cases or trained for other epochs than the runs in "
                                       f"{reference[2]}: replicates must differ only in the seed")
            seed = _run_seed(r, d, res.get("seed", 0))
            key = (r["method"], r["fraction"], r["level"], seed)
            if key in seen:
                raise InputError(path, f"run {r['run']} with training seed {seed} is also in {seen[key]}")
            seen[key] = d
            labels.setdefault(r["method"], r["label"])
            runs.append({**r, "seed": seed, "folder": str(d)})
    return runs, reference, labels


def _t_interval(diffs: list[float]) -> list[float] | None:
    """95 % t interval of the mean of ``diffs`` (None for fewer than two)."""
    from scipy import stats

    if len(diffs) < 2:
        return None
    half = stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / math.sqrt(len(diffs))
    return [float(np.mean(diffs) - half), float(np.mean(diffs) + half)]


def _replicate_row(
    key: tuple, rs: list[dict[str, Any]], label: str, baseline_runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """One pooled row: the runs ``rs`` of one (fraction, level, method) ``key`` over seeds, and
    their paired differences from ``baseline_runs`` (the same condition) of the same seed."""
    fraction, level, method = key
    rs = sorted(rs, key=lambda r: r["seed"])
    avgs = [float(r["avg"]) for r in rs if r["avg"] is not None]
    structures = _structures(rs)
    row: dict[str, Any] = {
        "method": method, "label": label, "fraction": fraction, "level": level, "radius": rs[0]["radius"],
        "seeds": [r["seed"] for r in rs],
        "avg_per_seed": [r["avg"] for r in rs],
        "avg_mean": float(np.mean(avgs)) if avgs else None,
        "avg_sd": float(np.std(avgs, ddof=1)) if len(avgs) > 1 else None,
        "dice_mean": {n: float(np.mean([r["dice"][n] for r in rs if r["dice"].get(n) is not None] or [np.nan])) for n in structures},
        "paired_vs_baseline": None,
    }
    base = {r["seed"]: r for r in baseline_runs}
    if method != "baseline" and base:
        diffs = [float(r["avg"] - base[r["seed"]]["avg"]) for r in rs
                 if r["seed"] in base and r["avg"] is not None and base[r["seed"]]["avg"] is not None]
        if diffs:
            row["paired_vs_baseline"] = {
                "n": len(diffs), "diff_per_seed": diffs, "mean": float(np.mean(diffs)),
                "sd": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
                "ci95": _t_interval(diffs), "better": sum(d > 0 for d in diffs),
            }
    return row


def _pm(mean: float | None, sd: float | None) -> str:
    return _fmt(mean) if sd is None else f"{_fmt(mean)} ± {sd:.3f}"


def replicate_markdown(summary: dict[str, Any]) -> str:
    """The pooled table: one row per (condition, method), mean Dice over seeds and the paired
    difference of the average from the baseline of the same seed."""
    names = summary["structures"]
    lines = [
        "# Noisy-label benchmark: replicates over training seeds",
        "",
        f"Folders: {', '.join(f'`{d}`' for d in summary['folders'])}. {summary['epochs']} epochs; each run tested on the clean "
        f"labels of the same {summary['n_test']} cases; label-noise seed(s) "
        f"{', '.join(map(str, summary['noise_seeds'])) or '-'}. Structure columns: mean Dice over the seeds; avg: mean ± sample sd over "
        "seeds of the per-run average Dice. Δ: the method's average minus the baseline's trained with the same seed "
        "(mean, 95 % t interval over the seeds when there are two or more, seeds where the method was better).",
        "",
        "| noise | level | method | seeds | " + " | ".join(names) + " | avg | per seed | Δ vs baseline | better |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for r in summary["rows"]:
        noise = _noise_label(r["fraction"])
        cells = [_fmt(r["dice_mean"].get(n)) for n in names]
        per_seed = ", ".join(f"{s}: {_fmt(a)}" for s, a in zip(r["seeds"], r["avg_per_seed"]))
        p = r["paired_vs_baseline"]
        if p is None:
            delta, better = "-", "-"
        else:
            delta = f"{p['mean']:+.3f}" + (f" [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]" if p["ci95"] else "")
            better = f"{p['better']}/{p['n']}"
        lines.append(f"| {noise} | {r['level'] or '-'} | {r['label']} | {len(r['seeds'])} | " + " | ".join(cells)
                     + f" | {_pm(r['avg_mean'], r['avg_sd'])} | {per_seed} | {delta} | {better} |")
    return "\n".join(lines) + "\n"


def write_replicate_summary(result_dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """:func:`replicate_summary` written to ``out``/summary.json and summary.md."""
    summary = replicate_summary(result_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(replicate_markdown(summary))
    return summary
