"""A training campaign: one run whose compute adds up over many sittings (issue 39).

A development machine is reclaimed after a few hours and keeps nothing that is not committed, so a
long run lives in a small, **tracked** state folder, written atomically after every epoch and
committed whenever work stops (``make campaign`` resumes it):

* ``weights.safetensors``: the network's parameters and buffers, bfloat16;
* ``moments.safetensors``: Adam's first and second moments, bfloat16;
* ``state.json``: step and epoch, CPU seconds spent, the random-number states (Python, NumPy,
  torch, the loader's generator), the history of every epoch and one record per *segment* (one
  process's share of the campaign: CPU model, threads, start and end).

No pickled classes: the format depends on tensor names and JSON only, not on module paths.

The learning rate is a function of the campaign's CPU time (:func:`lr_factor`), not of a sitting:
a short linear warm-up, a constant phase, then a decay to zero at the end of the budget, so a
curve read during the constant phase says what more compute gives.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from delineo.errors import ConfigError, InputError
from delineo.models.registry import json_safe

WEIGHTS = "weights.safetensors"
MOMENTS = "moments.safetensors"
STATE = "state.json"
FORMAT = 1


def campaign_spec(d: dict[str, Any] | None) -> dict[str, Any]:
    """``training.campaign`` checked and completed: ``cpu_hours`` (total budget), ``warmup_cpu_hours``,
    ``constant_until_cpu_hours``, ``decay`` (``linear`` | ``poly``) and ``state`` (the tracked folder)."""
    d = dict(d or {})
    known = {"cpu_hours", "warmup_cpu_hours", "constant_until_cpu_hours", "decay", "state", "results"}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"training.campaign: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    if "cpu_hours" not in d or "state" not in d:
        raise ConfigError("training.campaign needs cpu_hours (the whole budget) and state (a tracked folder)")
    spec = {"warmup_cpu_hours": 0.1, "decay": "linear", "results": None, **d}
    spec.setdefault("constant_until_cpu_hours", 0.8 * float(spec["cpu_hours"]))
    w, c, total = float(spec["warmup_cpu_hours"]), float(spec["constant_until_cpu_hours"]), float(spec["cpu_hours"])
    if not 0 <= w <= c <= total or total <= 0:
        raise ConfigError(f"training.campaign: need 0 <= warmup ({w}) <= constant_until ({c}) <= cpu_hours ({total}), cpu_hours > 0")
    if spec["decay"] not in ("linear", "poly"):
        raise ConfigError(f"training.campaign.decay: linear or poly, got {spec['decay']!r}")
    return spec


def lr_factor(cpu_hours: float, spec: dict[str, Any]) -> float:
    """Multiplier of the peak learning rate after ``cpu_hours`` of the campaign: linear warm-up from
    1 % to 1 over ``warmup_cpu_hours``, 1 until ``constant_until_cpu_hours``, then down to 0 at
    ``cpu_hours`` (linear, or nnU-Net's poly 0.9)."""
    w, c, total = float(spec["warmup_cpu_hours"]), float(spec["constant_until_cpu_hours"]), float(spec["cpu_hours"])
    if cpu_hours < w:
        return 0.01 + 0.99 * cpu_hours / w
    if cpu_hours < c:
        return 1.0
    left = max(0.0, 1.0 - (cpu_hours - c) / max(total - c, 1e-9))
    return left if spec["decay"] == "linear" else left**0.9


def phase(cpu_hours: float, spec: dict[str, Any]) -> str:
    """``warmup``, ``constant`` or ``decay``: where the campaign stands after ``cpu_hours``."""
    if cpu_hours < float(spec["warmup_cpu_hours"]):
        return "warmup"
    return "constant" if cpu_hours < float(spec["constant_until_cpu_hours"]) else "decay"


# ---- random-number states as JSON ----------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random-number state a training step draws from, JSON-safe."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": _b64(torch.get_rng_state()),
        "generator": _b64(generator.get_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(_unb64(states["torch"]))
    generator.set_state(_unb64(states["generator"]))
    n = states["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = states["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ---- the tracked state ---------------------------------------------------------------------------
def _moments(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam's moments as bf16 tensors named by parameter position, and the per-group step counts."""
    sd = optimizer.state_dict()
    tensors, steps = {}, {}
    for idx, st in sd["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in st and st[key] is not None:
                tensors[f"{key}.{idx}"] = st[key].detach().to(torch.bfloat16).contiguous()
        if "step" in st:
            steps[str(idx)] = float(st["step"])
    return tensors, steps


def save_state(
    folder: str | Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
    generator: torch.Generator, config: dict[str, Any],
) -> Path:
    """Write the campaign's state into ``folder`` atomically (each file via a temporary name, the
    JSON last: a reader sees a complete older or newer state, never half of one)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to(torch.bfloat16).contiguous() if v.is_floating_point() else v.detach().contiguous()
               for k, v in network.state_dict().items()}
    moments, steps = _moments(optimizer)
    tag = f"{os.getpid()}.tmp"
    save_file(weights, str(folder / f"{WEIGHTS}.{tag}"))
    save_file(moments, str(folder / f"{MOMENTS}.{tag}"))
    doc = {
        "format": FORMAT,
        "saved_utc": _now(),
        # the tensors this JSON belongs with: a copy taken between the renames below (a commit
        # while the campaign saves) is detected by check_state instead of resuming mismatched files
        "sha256": {name: hashlib.sha256((folder / f"{name}.{tag}").read_bytes()).hexdigest() for name in (WEIGHTS, MOMENTS)},
        "optimizer_steps": steps,
        "config": config,
        "state": state,
        "rng": rng_states(generator),
    }
    (folder / f"{STATE}.{tag}").write_text(json.dumps(json_safe(doc), indent=0) + "\n")
    (folder / f"{WEIGHTS}.{tag}").replace(folder / WEIGHTS)
    (folder / f"{MOMENTS}.{tag}").replace(folder / MOMENTS)
    (folder / f"{STATE}.{tag}").replace(folder / STATE)
    return folder


def check_state(folder: str | Path, read: Callable[[str], bytes] | None = None) -> list[str]:
    """What is wrong with a state folder: missing files, or tensors that are not the ones its
    ``state.json`` was written with (a copy or commit taken while the campaign was saving).
    ``read(name)`` gives a file's bytes (default: from ``folder``; e.g. from git's index instead).
    An empty list: the three files belong together. States written before the checksums (no
    ``sha256`` in ``state.json``) are only checked for presence."""
    folder = Path(folder)
    read = read or (lambda name: (folder / name).read_bytes())
    try:
        doc = json.loads(read(STATE))
        blobs = {name: read(name) for name in (WEIGHTS, MOMENTS)}
    except (OSError, ValueError) as exc:
        return [f"{folder}: campaign state cannot be read ({exc})"]
    return [f"{folder / name}: not the file {STATE} was saved with (sha256 differs; copied while the campaign was saving?)"
            for name, want in doc.get("sha256", {}).items() if hashlib.sha256(blobs[name]).hexdigest() != want]


def has_state(folder: str | Path) -> bool:
    folder = Path(folder)
    return all((folder / f).is_file() for f in (WEIGHTS, MOMENTS, STATE))


def saved_cpu_seconds(folder: str | Path) -> float:
    """The campaign CPU seconds a state folder was saved at (from its ``state.json``; 0 if it has
    none); an unreadable ``state.json`` is an :class:`InputError` naming it."""
    path = Path(folder) / STATE
    try:
        return float(json.loads(path.read_text())["state"].get("cpu_seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(path, f"campaign state cannot be read ({type(exc).__name__}: {exc})") from exc


def load_state(
    folder: str | Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a state written by :func:`save_state` into ``network``, ``optimizer`` and the random
    states; return ``(state, config)`` (the loop's bookkeeping and the config it was written with)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    folder = Path(folder)
    # each file is read once: the bytes checked are the bytes loaded (a save between a check and
    # a second read could otherwise pair files the check never saw)
    try:
        blobs = {name: (folder / name).read_bytes() for name in (STATE, WEIGHTS, MOMENTS)}
    except OSError as exc:
        raise InputError(folder, f"campaign state cannot be read ({exc})") from exc
    problems = check_state(folder, read=blobs.__getitem__)
    if problems:
        raise InputError(folder, "; ".join(problems))
    try:
        doc = json.loads(blobs[STATE])
        weights = load_tensors(blobs[WEIGHTS])
        moments = load_tensors(blobs[MOMENTS])
    except (ValueError, SafetensorError) as exc:
        raise InputError(folder, f"campaign state cannot be read ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise InputError(folder / STATE, f"campaign state format {doc.get('format')!r}, this delineo reads {FORMAT}")
    own = network.state_dict()
    if set(weights) != set(own) or any(weights[k].shape != own[k].shape for k in own):
        raise InputError(folder / WEIGHTS, "campaign weights do not fit the config's network (changed network settings?)")
    network.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})
    sd = optimizer.state_dict()
    param_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in moments.items():
        key, idx = name.rsplit(".", 1)
        param_state.setdefault(int(idx), {})[key] = t.float()
    for idx, step in doc.get("optimizer_steps", {}).items():
        param_state.setdefault(int(idx), {})["step"] = torch.tensor(step, dtype=torch.float32)
    sd["state"] = param_state
    optimizer.load_state_dict(sd)
    set_rng_states(doc["rng"], generator)
    return doc["state"], doc.get("config", {})


# ---- segments ------------------------------------------------------------------------------------
_stop = {"requested": False}


_old_handlers: dict[int, Any] = {}


def install_stop_handler() -> None:
    """SIGTERM / SIGINT: finish the epoch, save the state, end (``make campaign-stop``); main
    thread only. :func:`restore_stop_handler` puts the earlier handlers back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    _stop["requested"] = False

    def _handler(signum, frame):  # noqa: ARG001
        _stop["requested"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        _old_handlers[sig] = signal.signal(sig, _handler)


def restore_stop_handler() -> None:
    while _old_handlers:
        sig, h = _old_handlers.popitem()
        signal.signal(sig, h)


def stop_requested() -> bool:
    return _stop["requested"]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def begin_segment(state: dict[str, Any], hardware: str, threads: int, precision: str | None = None) -> dict[str, Any]:
    """Open a segment record in ``state["segments"]`` (one process's share of the campaign): the
    CPU model, threads and precision (bf16 autocast where the CPU has it natively, else fp32: a
    host without AVX512-BF16 trains about 3x fewer steps per CPU-hour)."""
    seg = {
        "index": len(state.setdefault("segments", [])),
        "started_utc": _now(),
        "hardware": hardware,
        "threads": threads,
        "precision": precision,
        "commit": git_commit(),
        "start_epoch": state.get("epoch", 0),
        "start_cpu_hours": round(state.get("cpu_seconds", 0.0) / 3600, 4),
    }
    state["segments"].append(seg)
    return seg


def update_segment(seg: dict[str, Any], state: dict[str, Any]) -> None:
    seg.update(ended_utc=_now(), end_epoch=state.get("epoch", 0), end_cpu_hours=round(state.get("cpu_seconds", 0.0) / 3600, 4))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()



# ---- the learning curve across segments ----------------------------------------------------------
def validation_points(state: dict[str, Any], structures: list[str] | None, spec: dict[str, Any] | None = None,
                      since_epoch: int = 0) -> list[dict[str, Any]]:
    """The validated epochs after ``since_epoch`` in a run's ``history``, oldest first: ``epoch``,
    ``cpu_hours`` (the campaign's, training only), ``lr``, ``mean_dice`` and ``dice`` per structure
    (model grid); ``phase`` too when the campaign's ``spec`` is given. ``structures`` None (a config
    that lets the data name them): the structures are numbered."""
    points = []
    for h in state["history"]:
        if h["epoch"] <= since_epoch or h.get("val_dice") is None or h.get("cpu_seconds") is None:
            continue
        hours = h["cpu_seconds"] / 3600
        names = structures or [str(i) for i in range(len(h["val_dice"]))]
        points.append({"epoch": h["epoch"], "cpu_hours": round(hours, 4), "lr": h.get("lr"),
                       **({"phase": phase(hours, spec)} if spec is not None else {}),
                       "mean_dice": h.get("val_mean_dice"), "dice": dict(zip(names, h["val_dice"]))})
    return points


def constant_phase_gain(points: list[dict[str, Any]], spec: dict[str, Any], flat_below: float = 0.005) -> dict[str, Any] | None:
    """What the last quarter of the constant phase says about more compute (issue 39: "flat" only
    there, gain < ``flat_below``): the quarter from ``warmup + 3/4 (constant_until - warmup)`` to
    ``constant_until`` CPU-hours, judged on the validations (``points`` from :func:`validation_points`).

    Two readings of the mean Dice, both over the quarter: ``trend_gain``, the least-squares line's rise
    across the quarter's width (all validations inside it, at least three), and ``best_gain``, the best
    inside it minus the best before it. ``flat`` when both are below ``flat_below``; ``complete`` once
    a validation lies past the quarter's end (the decay has been validated). None before any
    validation inside the quarter."""
    w, c = float(spec["warmup_cpu_hours"]), float(spec["constant_until_cpu_hours"])
    start = w + 0.75 * (c - w)
    inside = [p for p in points if start <= p["cpu_hours"] < c and p.get("mean_dice") is not None]
    before = [p["mean_dice"] for p in points if p["cpu_hours"] < start and p.get("mean_dice") is not None]
    if not inside:
        return None
    x = np.array([p["cpu_hours"] for p in inside])
    y = np.array([p["mean_dice"] for p in inside])
    trend = float(np.polyfit(x, y, 1)[0] * (c - start)) if len(inside) >= 3 else None
    best = float(y.max() - max(before)) if before else None
    known = [g for g in (trend, best) if g is not None]
    return {"from_cpu_hours": round(start, 3), "to_cpu_hours": round(c, 3), "validations": len(inside),
            "trend_gain": None if trend is None else round(trend, 4), "best_gain": None if best is None else round(best, 4),
            "flat_below": flat_below, "flat": bool(known) and all(g < flat_below for g in known),
            "complete": any(p["cpu_hours"] >= c for p in points)}


def write_curve(state: dict[str, Any], structures: list[str], spec: dict[str, Any]) -> Path:
    """``learning_curve.json`` + ``.png`` in ``spec["results"]``: validation Dice per structure against
    the campaign's cumulative CPU hours, segment boundaries marked with their CPU model and threads,
    the learning-rate phase of every point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(spec["results"])
    folder.mkdir(parents=True, exist_ok=True)
    points = validation_points(state, structures, spec)
    curve = {
        "x": "campaign CPU hours (training process, user + system, all threads; validation excluded)",
        "schedule": {k: spec[k] for k in ("cpu_hours", "warmup_cpu_hours", "constant_until_cpu_hours", "decay")},
        "segments": state.get("segments", []),
        "points": points,
        "constant_phase_last_quarter": constant_phase_gain(points, spec),
    }
    (folder / "learning_curve.json").write_text(json.dumps(json_safe(curve), indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(9, 5))
    xs = [p["cpu_hours"] for p in points]
    for name in structures:
        ax.plot(xs, [np.nan if p["dice"][name] is None else p["dice"][name] for p in points], "o-", ms=3, label=name, alpha=0.55)
    ax.plot(xs, [np.nan if p["mean_dice"] is None else p["mean_dice"] for p in points], "ko-", ms=4, lw=2.5, label="mean")
    for seg in state.get("segments", []):
        ax.axvline(seg["start_cpu_hours"], color="grey", ls=":", lw=1)
        ax.text(seg["start_cpu_hours"], 0.02, f" {seg['index']}: {seg['hardware'].split(',')[0].removeprefix('CPU: ')[:28]}, "
                f"{seg['threads']} thr, {seg.get('precision') or '?'}", rotation=90, fontsize=6, va="bottom")
    ax.axvspan(float(spec["constant_until_cpu_hours"]), float(spec["cpu_hours"]), color="orange", alpha=0.08, label="decay")
    ax.set_xlim(0, max(xs + [1.0]) * 1.05)
    ax.set_xlabel("campaign CPU hours"), ax.set_ylabel("validation Dice (model grid)"), ax.set_ylim(0, 1)
    ax.grid(alpha=0.3), ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a point
    fig.tight_layout()
    fig.savefig(folder / "learning_curve.png", dpi=100)
    plt.close(fig)
    return folder
