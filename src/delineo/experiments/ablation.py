"""Ablation: train a sequence of config variants, each adding one change, and compare them.

An ablation file (YAML) names a base training config and the steps, each with the overrides it
adds on top of the previous step (cumulative, like the seed's table: U-Net -> Res-UNet -> + SE
-> + cyclic learning rate -> + Dice loss)::

    base: configs/hn-ct.yaml
    steps:
      - {name: U-Net, set: {network.residual: false, training.loss: bce}}
      - {name: Res-UNet, set: {network.residual: true}}
      - {name: + SE blocks, set: {network.squeeze_excitation: true}}

Optional top-level keys: ``set`` (overrides of the base config for every step, e.g.
``training.init_weights: null`` so that no step starts from a bundled model) and
``cumulative: false`` (each step's overrides apply to the base alone: a comparison of
independent recipe choices rather than a sequence, e.g. ``configs/hn-recipe.yaml``),
``keep_weights: true`` (keep each step's weights and checkpoint, so the winner can be trained
further) and ``budget_cpu_hours`` (each step trains until its process has spent that much CPU time in
training, or until ``training.epochs``: equal compute for every step, see
:func:`delineo.training.loop.train`). ``seed`` (or ``--seed``) trains the steps again with
another training seed, beside the first ones (``runs/NN-step-seedS``).

Every step is trained (resumable: a finished step is skipped, an interrupted one resumes from
its checkpoint) and evaluated with :func:`delineo.inference.evaluate.evaluate` on the base
config's validation cases; ``results.json``, ``results.md`` and ``results.png`` are written.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from delineo.errors import ConfigError, InputError
from delineo.inference.evaluate import evaluate
from delineo.machine import hardware_description, resolve_device
from delineo.settings import read_yaml_mapping
from delineo.training import campaign as campaign_state
from delineo.training.config import TrainConfig
from delineo.training.loop import train


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "step"


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``training.loss``) in a copy of a config dict."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"ablation override {key!r}: {p!r} is not a mapping")
            node = node.setdefault(p, {})
        node[parts[-1]] = copy.deepcopy(value)
    return out


def load_ablation(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read an ablation file -> (base config dict, steps ``[{name, set}]``)."""
    path = Path(path)
    spec = read_yaml_mapping(path)
    if "base" not in spec or not isinstance(spec.get("steps"), list) or not spec["steps"]:
        raise InputError(path, "an ablation file needs 'base' (a training config) and a non-empty list 'steps'")
    base_path = Path(spec["base"])
    if not base_path.is_absolute():
        base_path = (path.parent / base_path) if (path.parent / base_path).is_file() else base_path
    base = read_yaml_mapping(base_path)
    if not isinstance(spec.get("set") or {}, dict):
        raise InputError(path, "'set' must be a mapping of overrides for every step")
    base = apply_overrides(base, spec.get("set") or {})
    steps = []
    for i, s in enumerate(spec["steps"]):
        if not isinstance(s, dict) or "name" not in s:
            raise InputError(path, f"step {i + 1} needs a 'name'")
        steps.append({"name": str(s["name"]), "set": dict(s.get("set") or {})})
    if len({slug(s["name"]) for s in steps}) != len(steps):
        raise InputError(path, "two steps have the same name")
    return base, steps


def run_ablation(
    ablation: str | Path, out: str | Path, *, epochs: int | None = None, device: str | None = None,
    max_cases: int | None = None, command: str | None = None, log: Callable[[str], None] | None = None,
    train_missing: bool = True, only: list[str] | None = None, budget_cpu_hours: float | None = None,
    seed: int | None = None, threads: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate every step not finished yet; write ``results.json/.md/.png`` into ``out``
    after each finished step (the steps not run yet are listed as such). ``train_missing=False``
    only writes the results of the steps already finished; ``only`` trains just the named steps
    (each still with the changes of the steps before it), e.g. to run steps on several machines.
    ``budget_cpu_hours`` overrides the file's; ``seed`` trains with that training seed (its runs
    beside the base seed's); ``threads`` sets each step's torch threads (``training.threads``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    base, steps = load_ablation(ablation)
    spec = read_yaml_mapping(ablation)
    budget = budget_cpu_hours if budget_cpu_hours is not None else spec.get("budget_cpu_hours")
    budget = float(budget) if budget else None
    if seed is None and spec.get("seed") is not None:
        seed = int(spec["seed"])
    base_seed = int((base.get("training") or {}).get("seed", 0))
    suffix = f"-seed{seed}" if seed is not None and seed != base_seed else ""
    unknown = sorted(set(only or []) - {st["name"] for st in steps})
    if unknown:
        raise ConfigError(f"{ablation}: no step named {', '.join(map(repr, unknown))} (steps: {', '.join(st['name'] for st in steps)})")
    # the command line's settings, the same for every step
    given = {k: v for k, v in {"training.epochs": epochs, "training.device": device, "training.seed": seed if suffix else None,
                               "training.threads": threads, "data.max_cases": max_cases}.items() if v is not None}
    cumulative = bool(spec.get("cumulative", True))
    keep_weights = bool(spec.get("keep_weights", False))
    config = copy.deepcopy(base)
    rows = []
    results, written = None, -1
    for i, step in enumerate(steps, 1):
        config = apply_overrides(config if cumulative else base, step["set"])
        run_dir = out / "runs" / f"{i:02d}-{slug(step['name'])}{suffix}"
        result_path = run_dir / "result.json"
        if result_path.is_file():
            log(f"[{i}/{len(steps)}] {step['name']}{suffix}: finished earlier, skipped")
            continue
        if not train_missing or (only and step["name"] not in only):
            continue
        row = _train_step(ablation, step, config, run_dir, given, command=command, budget=budget, keep_weights=keep_weights,
                          log=log, prefix=f"[{i}/{len(steps)}] {step['name']}{suffix}")
        if row is None:  # stopped on request (SIGTERM / SIGINT) with its campaign state saved: no later step starts
            break
        log(f"[{i}/{len(steps)}] {step['name']}{suffix}: mean Dice {row['mean_dice']:.4f} on {row['n_val']} validation cases")
        rows = _collect_rows(out, steps)
        results = _write_results(out, ablation, command, epochs, max_cases, device, rows, steps, budget)  # after every step
        written = len(rows)
    rows = _collect_rows(out, steps)
    if results is not None and written == len(rows):  # the last step was trained here and wrote them already
        return results
    return _write_results(out, ablation, command, epochs, max_cases, device, rows, steps, budget)


def _train_step(
    ablation: str | Path, step: dict[str, Any], config: dict[str, Any], run_dir: Path, given: dict[str, Any], *,
    command: str | None, budget: float | None, keep_weights: bool, log: Callable[[str], None], prefix: str,
) -> dict[str, Any] | None:
    """Train one step's ``config`` (with the command line's settings ``given``) into ``run_dir``,
    evaluate it on the validation cases and write its ``result.json`` (atomically); unless
    ``keep_weights``, drop its weights and checkpoint; ``prefix`` (``[i/n] step``) starts its log line.
    Returns the row (Dice, HD95 in mm, timing); None when a campaign step was stopped on request
    (``make campaign-stop``'s SIGTERM): its state is saved, it is not finished, and it gets no
    ``result.json``, so the next run resumes it instead of skipping it."""
    result_path = run_dir / "result.json"
    d = apply_overrides(config, {"name": f"ablation-{slug(step['name'])}", "output": str(run_dir / "model"),
                                 "work_dir": str(run_dir / "work"), **given})
    cfg = TrainConfig.from_dict(d, where=f"{ablation}: step {step['name']!r}")
    log(f"{prefix}: training" + (f" for {budget} CPU-hours" if budget else ""))
    model_dir = train(cfg, resume=True, command=command, budget_cpu_hours=budget)
    if campaign_state.stop_requested():
        log(f"{prefix}: stopped on request; its state is saved and the step resumes from it next time")
        return None
    meta = json.loads((model_dir / "model.json").read_text())
    tr = meta["training"]
    val = cfg.data.val or cfg.data.train
    cases = None if cfg.data.val else tr["data"]["val_cases"]
    report = evaluate(model_dir, val, run_dir / "evaluation.json", device=cfg.training.device, cases=cases)
    row = {
        "step": step["name"],
        "adds": step["set"],
        "network": meta["network"],
        "loss": cfg.training.loss,
        "schedule": cfg.training.schedule,
        "dice": {n: s["dice"] for n, s in report["structures"].items()},
        "hd95_mm": {n: s.get("hd95_mm") for n, s in report["structures"].items()},
        "mean_dice": report["mean_dice"],
        "n_val": len(report["cases"]),
        "seed": cfg.training.seed,
        "budget": tr.get("budget"),
        "epochs": tr.get("epochs"),
        "best_epoch": tr.get("best_epoch"),
        "train_seconds": tr.get("seconds"),
        "hardware": tr.get("hardware"),
        "parameters": tr.get("parameters"),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path.with_suffix(".tmp").write_text(json.dumps(row, indent=2) + "\n")
    result_path.with_suffix(".tmp").replace(result_path)
    if not keep_weights:
        (model_dir / "weights.safetensors").unlink(missing_ok=True)  # keep metrics, not 5 sets of weights
        for p in (run_dir / "work").glob("checkpoint.pt*"):
            p.unlink()
    return row


def _collect_rows(out: Path, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished runs under ``out/runs``, in step order, the base seed's run before other seeds'."""
    rows = []
    for i, step in enumerate(steps, 1):
        name = f"{i:02d}-{slug(step['name'])}"
        first = out / "runs" / name / "result.json"
        others = sorted((out / "runs").glob(f"{name}-seed*/result.json"), key=lambda p: p.parent.name)
        for k, p in enumerate([first, *others] if first.is_file() else others):
            row = json.loads(p.read_text())
            row["extra_seed"] = bool(k) or not first.is_file()
            rows.append(row)
    return rows


def _write_results(out: Path, ablation, command, epochs, max_cases, device, rows, steps, budget=None) -> dict[str, Any]:
    """``results.json``, ``results.md`` and ``results.png`` of the finished steps."""
    done = {r["step"] for r in rows if not r.get("extra_seed")}
    results = {
        "ablation": str(ablation),
        "command": command,
        "epochs_override": epochs,
        "budget_cpu_hours": budget,
        "max_cases": max_cases,
        "hardware_now": hardware_description(resolve_device(device or "auto")),
        "evaluation": "Dice on the input grid of each validation case (delineo evaluate); unknown structures skipped",
        "steps": rows,
        "not_run": [st["name"] for st in steps if st["name"] not in done],
        "step_order": [st["name"] for st in steps],
        "cumulative": bool(read_yaml_mapping(ablation).get("cumulative", True)),
    }
    results["seed_spread"] = seed_spread(rows)
    results["curves"] = learning_curves(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    plot_results(results, out / "results.png")
    if results["curves"]:
        plot_learning_curves(results["curves"], out / "learning_curves.png")
    return results


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per step trained with more than one training seed: its mean Dice per seed and the spread
    (largest minus smallest), the noise a difference between steps has to exceed."""
    by_step: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("mean_dice") is not None:
            by_step.setdefault(r["step"], {})[str(r.get("seed"))] = float(r["mean_dice"])
    return {step: {"mean_dice_by_seed": seeds, "spread": round(max(seeds.values()) - min(seeds.values()), 4)}
            for step, seeds in by_step.items() if len(seeds) > 1}


def learning_curves(out: Path) -> dict[str, dict[str, Any]]:
    """Per finished run (``out/runs/<run>``): validation mean Dice on the model grid (as validated
    during training) against CPU-hours of training (the budget's clock; wall hours for runs without a
    budget), and ``last_quarter_gain``: the change over the last quarter of the run (is it flat?)."""
    curves = {}
    for hist in sorted((out / "runs").glob("*/model/history.json")):
        if not (hist.parent.parent / "result.json").is_file():
            continue
        history = json.loads(hist.read_text())
        points = [(h.get("cpu_seconds", h.get("train_seconds")), h["val_mean_dice"]) for h in history
                  if h.get("val_mean_dice") is not None and h.get("cpu_seconds", h.get("train_seconds")) is not None]
        if not points:
            continue
        hours = [round(t / 3600, 4) for t, _ in points]
        dice = [round(float(d), 4) for _, d in points]
        start = next((d for h, d in zip(hours, dice) if h >= 0.75 * hours[-1]), dice[-1])
        curves[hist.parent.parent.name] = {"cpu_hours": hours, "mean_dice_model_grid": dice,
                                           "last_quarter_gain": round(dice[-1] - start, 4),
                                           "clock": "cpu" if "cpu_seconds" in history[-1] else "wall"}
    return curves


def plot_learning_curves(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.plot(c["cpu_hours"], c["mean_dice_model_grid"], "o-", ms=3, label=name)
    ax.set_xlabel("hours of training (CPU time, validation excluded)"), ax.set_ylabel("mean validation Dice (model grid)")
    ax.set_ylim(0, 1), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def results_markdown(results: dict[str, Any]) -> str:
    rows = results["steps"]
    names: list[str] = []
    for r in rows:
        names += [n for n in r["dice"] if n not in names]
    lines = ["| step | " + " | ".join(names) + " | mean | Δ mean |", "|---" * (len(names) + 3) + "|"]
    # Δ against the step just before in the ablation file (cumulative steps) or against the first
    # step, the base recipe (independent choices); "-" when that one has not run
    order = results.get("step_order") or [r["step"] for r in rows]
    cumulative = results.get("cumulative", True)
    by_name = {r["step"]: r for r in rows if not r.get("extra_seed")}
    by_seed = {(r["step"], r.get("seed")): r for r in rows}

    def label(r):
        return f"{r['step']} (seed {r.get('seed')})" if r.get("extra_seed") else r["step"]

    for r in rows:
        i = order.index(r["step"])
        j = i - 1 if cumulative else 0
        if not cumulative and i == 0:
            i = -1  # the base itself: no Δ
        prev = (by_seed.get((order[j], r.get("seed"))) or (None if r.get("extra_seed") else by_name.get(order[j]))) if i > 0 else None
        ok = prev is not None and prev["mean_dice"] is not None and r["mean_dice"] is not None
        delta = f"{r['mean_dice'] - prev['mean_dice']:+.3f}" if ok else "-"
        lines.append(f"| {label(r)} | " + " | ".join(_fmt(r["dice"].get(n)) for n in names) + f" | {_fmt(r['mean_dice'])} | {delta} |")
    if any(r.get("hd95_mm") for r in rows):
        lines += ["", "HD95 (mm, mean over the validation cases where it is defined):", "",
                  "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for r in rows:
            hd = r.get("hd95_mm") or {}
            lines.append(f"| {label(r)} | " + " | ".join("-" if hd.get(n) is None else f"{hd[n]:.1f}" for n in names) + " |")
    budgets = [r.get("budget") for r in rows if r.get("budget")]
    if budgets:
        lines += ["", "Compute per step: " + "; ".join(
            f"{label(r)}: {r['budget']['cpu_seconds_used'] / 3600:.2f} CPU-h, {r['budget']['epochs_done']} epochs (ended by {r['budget']['ended_by']})"
            for r in rows if r.get("budget")) + "."]
    spread = results.get("seed_spread") or {}
    if spread:
        lines += ["", "Training seeds (mean Dice per seed; spread = largest − smallest): " + "; ".join(
            f"{step}: " + ", ".join(f"{d:.3f} (seed {k})" for k, d in v["mean_dice_by_seed"].items())
            + f", spread {v['spread']:.3f}" for step, v in spread.items()) + "."]
    curves = results.get("curves") or {}
    if curves:
        lines += ["", "Still climbing? Mean validation Dice (model grid, as validated during training) gained in the last "
                  "quarter of each run: " + "; ".join(f"{k}: {c['last_quarter_gain']:+.3f} (to {c['mean_dice_model_grid'][-1]:.3f} "
                                                      f"at {c['cpu_hours'][-1]:.2f} {c['clock'].upper()}-h)" for k, c in curves.items())
                  + " (`learning_curves.png`)."]
    hw = {r.get("hardware") for r in rows}
    lines += ["", f"Validation Dice ({rows[0]['n_val'] if rows else 0} cases); trained on: {', '.join(sorted(h for h in hw if h))}.",
              "Δ mean: against the step before (each step adds its change to the previous ones)." if cumulative else
              f"Each step changes one choice of the base recipe; Δ mean: against the first step ({order[0] if order else '-'})."]
    if results.get("not_run"):
        lines.append(f"Not run yet: {', '.join(results['not_run'])}.")
    if results.get("budget_cpu_hours"):
        lines.append(f"Every step trained for {results['budget_cpu_hours']} CPU-hours (CPU time of the training process, validation excluded).")
    if results.get("epochs_override") or results.get("max_cases"):
        lines.append(f"Reduced schedule: epochs={results.get('epochs_override')}, max training cases={results.get('max_cases')}.")
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["steps"]
    names: list[str] = []
    for r in rows:
        names += [n for n in r["dice"] if n not in names]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 3), 4))
    x = range(len(rows))
    for n in names:
        ax.plot(x, [r["dice"].get(n) for r in rows], "o-", alpha=0.5, label=n)
    ax.plot(x, [r["mean_dice"] for r in rows], "ks-", lw=2.5, label="mean")
    ax.set_xticks(list(x), [r["step"] for r in rows], rotation=15)
    ax.set_ylabel("validation Dice"), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
