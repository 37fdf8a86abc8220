"""The one training loop: 2D and 3D, plain and noisy-label (via a sample-weighting strategy).

``train(config)`` loads and preprocesses the cases once (in memory), trains with MONAI
augmentation, validates every ``val_every`` epochs with the same inference code the product
uses, keeps the best weights by mean validation Dice (unknown structures ignored), checkpoints
every epoch to ``work_dir`` and resumes from there, and writes the model folder, training
curves (PNG) and history (JSON).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader, MetaTensor
from monai.utils import set_determinism
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from delineo.data.datasets import SegmentationDataset, open_dataset, split_cases
from delineo.data.noise import corrupt_labels
from delineo.data.orientation import CANONICAL, normalise_codes
from delineo.data.transforms import model_spacing_mm, preprocess, preprocess_labels, training_augmentation
from delineo.errors import ConfigError, InputError
from delineo.inference.predictor import predict_probabilities
from delineo.machine import autocast_context, bf16_available, hardware_description, resolve_device, set_threads
from delineo.metrics.segmentation import label_agreement
from delineo.models.networks import NetworkSpec, build_network, count_parameters
from delineo.models.registry import WEIGHTS, json_safe, load_model, save_model
from delineo.training import campaign as campaign_state
from delineo.training.campaign import lr_factor
from delineo.training.config import TrainConfig
from delineo.training.distributed import check_weighting, epoch_seed, setup
from delineo.training.losses import SegmentationLoss, deep_supervision_loss
from delineo.training.weighting import UniformWeighting, build_weighting

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, PyTorch and MONAI's transforms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


class PackedLabel:
    """Binary masks ``(C, *spatial)`` held as packed bits: one bit per voxel and structure instead of
    a byte (10 hn-ct structures of a 4 mm CT: 3 MB instead of 24 MB), so that several training runs
    fit in memory side by side. :meth:`tensor` unpacks (about 10 ms per CT)."""

    __slots__ = ("bits", "shape")

    def __init__(self, bits: np.ndarray, shape: tuple[int, ...]):
        self.bits, self.shape = bits, tuple(int(v) for v in shape)

    @classmethod
    def of(cls, label: torch.Tensor | np.ndarray) -> "PackedLabel":
        a = np.asarray(label.numpy() if isinstance(label, torch.Tensor) else label).astype(bool)
        return cls(np.packbits(a.ravel()), a.shape)

    def tensor(self) -> torch.Tensor:
        """uint8 ``(C, *spatial)``."""
        return torch.from_numpy(np.unpackbits(self.bits, count=int(np.prod(self.shape))).reshape(self.shape))


class PreparedCases(Dataset):
    """Cases preprocessed to the model grid and held in memory.

    ``items``: ``{"image": float32 (1, *sp), "label": PackedLabel of uint8 (C, *sp), "present": bool (C,),
    "case": str, "spacing_mm": model-grid voxel size}``; an access (``cases[i]``) returns the label
    unpacked (uint8 tensor) and ``"index"`` (position in the set, for strategies that remember samples),
    after ``transform`` (MONAI, dict-based) when one is set.
    """

    def __init__(
        self, dataset: SegmentationDataset, preprocess_spec: dict[str, Any], desc: str = "loading", quiet: bool = False,
        cache_dir: Path | None = None,
    ):
        self.items: list[dict[str, Any]] = []
        self.transform: Callable | None = None
        for i in tqdm(range(len(dataset)), desc=desc, leave=False, disable=True if quiet else None):
            cached = _cache_path(cache_dir, dataset, i, preprocess_spec) if cache_dir else None
            if cached is not None and cached.is_file():
                self.items.append(_read_cached(cached))
                continue
            s = dataset[i]
            item = {
                "image": preprocess(s["image"], s["spacing_mm"], preprocess_spec),
                "label": PackedLabel.of(preprocess_labels(s["label"], s["spacing_mm"], preprocess_spec)),
                "present": torch.as_tensor(s["present"]),
                "case": s["case"],
                "spacing_mm": model_spacing_mm(s["spacing_mm"], preprocess_spec),
            }
            if cached is not None:
                _write_cached(cached, item)
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        label = item["label"].tensor()
        if self.transform is None:
            return {**item, "label": label, "index": i}
        out = self.transform({"image": item["image"], "label": label})
        if isinstance(out, list):  # crop-by-label transforms return a list of samples
            out = out[0]
        # plain tensors: a MONAI MetaTensor would route every op of the step through __torch_function__
        return {
            "image": _plain(out["image"]).float(),
            "label": _plain(out["label"]).to(torch.uint8),
            "present": item["present"],
            "case": item["case"],
            "index": i,
        }


def mark_absent_as_empty(items: list[dict[str, Any]], structures: Sequence[str], names: Sequence[str]) -> dict[str, int]:
    """``data.absent_is_empty``: in ``items`` (in place), a case without a file for one of ``names``
    has none of it (e.g. a dose level not prescribed): ``present`` becomes True there, so the loss
    learns the channel as empty (the packed label is all-zero already) instead of leaving it out.
    Returns how many cases each name was made empty in."""
    unknown = sorted(set(names) - set(structures))
    if unknown:
        raise ConfigError(f"data.absent_is_empty names structures the model does not train: {', '.join(unknown)}")
    ks = [list(structures).index(name) for name in names]
    counts = {name: sum(not bool(it["present"][k]) for it in items) for name, k in zip(names, ks)}
    for it in items:
        it["present"][ks] = True
    return counts


def exclude_audited_contours(items: list[dict[str, Any]], structures: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """Agreement selection: leave out of the loss the training contours an audit trusts least.

    ``spec``: ``{"audit": audit.csv of delineo audit, "fraction": f}``. Per structure, the fraction
    ``f`` of the audited cases that have it contoured, lowest ``agreement_<structure>`` first (the Dice
    of a model's prediction against the contour), get ``present`` = False in ``items`` (in place): the
    image still trains the other structures. Returns what the model card records."""
    path = Path(str(spec.get("audit", "")))
    fraction = float(spec.get("fraction", 0.1))
    if not path.is_file():
        raise InputError(path, "data.exclude_contours.audit: no such audit.csv (run delineo audit first)")
    if not 0 <= fraction < 1:
        raise ConfigError(f"data.exclude_contours.fraction must be in [0, 1), got {fraction}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not any(f"agreement_{s}" in rows[0] for s in structures):
        raise InputError(path, f"no agreement_<structure> column for any of {', '.join(structures)}: not an audit of these structures")
    index = {str(it["case"]): it for it in items}
    record: dict[str, Any] = {"audit": str(path), "fraction": fraction, "contours": {}}
    for k, name in enumerate(structures):
        scored = [(float(r[f"agreement_{name}"]), r["case"]) for r in rows
                  if r.get(f"agreement_{name}") not in (None, "") and r["case"] in index and bool(index[r["case"]]["present"][k])]
        scored.sort()
        drop = [case for _, case in scored[: int(round(fraction * len(scored)))]]
        for case in drop:
            index[case]["present"][k] = False
        record["contours"][name] = drop
    print(f"excluded {sum(map(len, record['contours'].values()))} training contours named by {path}", file=sys.stderr, flush=True)
    return record


def _config_changes(saved: Any, current: Any, path: str = "") -> list[str]:
    """The settings in which a checkpoint's config differs from the current one, as
    ``"training.threads: 1 -> 2"``; an option added to delineo after the checkpoint was written
    (absent there, None here) is not a change."""
    if isinstance(saved, dict) and isinstance(current, dict):
        changes: list[str] = []
        for k in sorted(set(saved) | set(current), key=str):
            if k not in saved and current.get(k) is None or k not in current and saved.get(k) is None:
                continue
            changes += _config_changes(saved.get(k), current.get(k), f"{path}.{k}" if path else str(k))
        return changes
    return [] if saved == current else [f"{path or 'config'}: {saved!r} -> {current!r}"]


def _list_changes(changes: list[str], limit: int = 8) -> str:
    """``_config_changes`` for a message: the first ``limit``, then how many more."""
    return "; ".join(changes[:limit]) + (f" (and {len(changes) - limit} more)" if len(changes) > limit else "")


def _cache_path(cache_dir: Path, dataset: SegmentationDataset, i: int, spec: dict[str, Any]) -> Path:
    """Where case ``i`` preprocessed by ``spec`` is kept: named by a hash of its files (path, size,
    modification time), the structures, the orientation and the preprocessing, so any change misses."""
    case = dataset.cases[i]
    files = [dataset.image_path(case)] + [p for s in dataset.structures if (p := dataset.mask_path(case, s)) is not None]
    key = json.dumps({
        "files": [[str(Path(f).resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "structures": list(dataset.structures), "orientation": dataset.orientation, "spec": spec, "version": 1,
    }, sort_keys=True, default=str)
    return Path(cache_dir) / f"{case}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _write_cached(path: Path, item: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    label: PackedLabel = item["label"]
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # processes under torchrun write side by side
    np.savez(tmp, image=item["image"].numpy(), label=label.bits, label_shape=np.array(label.shape),
             present=item["present"].numpy(), case=np.array(item["case"]), spacing_mm=np.array(item["spacing_mm"]))
    tmp.replace(path)


def _read_cached(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        return {
            "image": torch.from_numpy(z["image"].copy()), "label": PackedLabel(z["label"].copy(), tuple(z["label_shape"])),
            "present": torch.from_numpy(z["present"].copy()), "case": str(z["case"]),
            "spacing_mm": tuple(float(v) for v in z["spacing_mm"]),
        }


def _plain(x) -> torch.Tensor:
    """A torch.Tensor without MONAI's metadata subclass."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _optimizer(cfg, params) -> torch.optim.Optimizer:
    t = cfg.training
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.99, nesterov=True, weight_decay=t.weight_decay)
    raise ConfigError(f"unknown optimizer {t.optimizer!r} (adam, adamw, sgd)")


def _scheduler(
    cfg, optimizer, total_steps: int, steps_per_epoch: int, budget_used: Callable[[], float] | None = None,
):
    """Per-step LR schedule: poly (nnU-Net), cosine_restarts (SGDR), cyclic (triangular), constant,
    campaign (warm-up, constant, decay over a campaign's CPU hours: :func:`campaign.lr_factor`).
    ``budget_used``: the fraction of a CPU-time budget spent so far; poly then decays over whichever
    ends first, the steps or the budget."""
    t = cfg.training
    cycle = max(1, t.cycle_epochs * steps_per_epoch)
    if t.schedule == "campaign":
        if not t.campaign or budget_used is None:
            raise ConfigError("schedule: campaign needs training.campaign (its CPU-hour budget)")
        campaign = campaign_state.campaign_spec(t.campaign)
        hours = float(campaign["cpu_hours"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(budget_used() * hours, campaign))
    if t.schedule == "poly" and budget_used is not None:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.0, 1 - min(1.0, max(min(s, total_steps) / total_steps, budget_used()))) ** 0.9
        )
    if t.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, total_steps) / total_steps) ** 0.9)
    if t.schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cycle, eta_min=t.lr * 0.01)
    if t.schedule == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer, base_lr=t.lr * 0.1, max_lr=t.lr, step_size_up=max(1, cycle // 2), mode="triangular",
            cycle_momentum=t.optimizer == "sgd",
        )
    if t.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    raise ConfigError(f"unknown schedule {t.schedule!r} (poly, cosine_restarts, cyclic, constant, campaign)")


@torch.no_grad()
def case_agreement(
    network, cases: PreparedCases, inference: dict[str, Any], device, amp: bool, measure: str = "dice",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Agreement of the network's prediction with each case's label on the model grid, per
    structure, without augmentation (the labels as the cases hold them: noisy ones for a noisy
    training set), by ``measure`` (:func:`delineo.metrics.segmentation.label_agreement`: ``dice``,
    ``soft_dice``, ``surface``; higher is closer).

    Returns ``scores (N, C)`` (float64) and ``present (N, C)`` (bool: the structure is contoured).
    """
    scores, present = [], []
    for item in cases.items:
        probs = predict_probabilities(
            network, item["image"][None].to(device), patch_size=inference.get("patch_size"),
            overlap=float(inference.get("overlap", 0.5)), amp=amp,
        )
        scores.append(label_agreement(probs[0], item["label"].tensor(), item["spacing_mm"], measure, float(inference.get("threshold", 0.5))))
        present.append(item["present"].bool())
    return torch.stack(scores), torch.stack(present)


def validate(network, cases: PreparedCases, inference: dict[str, Any], device, amp: bool) -> dict[str, Any]:
    """Dice per structure on the model grid, over cases where the structure is contoured.

    Returns ``{"per_structure": [C floats or nan], "mean": float}``.
    """
    d, p = case_agreement(network, cases, inference, device, amp, "dice")
    p = p.double()
    counts = p.sum(0)
    per = ((d * p).sum(0) / counts.clamp_min(1)).tolist()
    per = [v if c > 0 else float("nan") for v, c in zip(per, counts.tolist())]
    valid = [v for v in per if not math.isnan(v)]
    return {"per_structure": per, "mean": float(np.mean(valid)) if valid else float("nan")}


def plot_curves(history: list[dict[str, Any]], structures: list[str], path: Path) -> None:
    """Training loss and validation Dice per epoch, as a PNG."""
    import matplotlib  # here, not at the top: the Agg backend is chosen before pyplot loads (slow, only for plots)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [h["loss"] for h in history], label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.set_title("training loss"), ax1.grid(alpha=0.3)
    val = [h for h in history if h.get("val_dice") is not None]
    if val:
        for c, name in enumerate(structures):
            ax2.plot([h["epoch"] for h in val], [h["val_dice"][c] for h in val], label=name, alpha=0.7)
        ax2.plot([h["epoch"] for h in val], [h["val_mean_dice"] for h in val], "k-", lw=2, label="mean")
        ax2.set_ylim(0, 1), ax2.legend(fontsize=7, ncol=2)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("Dice"), ax2.set_title("validation Dice"), ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_learning_curve(history: list[dict[str, Any]], structures: list[str], folder: Path, hardware: str) -> None:
    """``learning_curve.json`` + ``.png``: validation Dice per structure against hours of training
    (wall clock on ``hardware``, validation excluded), so anyone can see whether a run still climbs."""
    import matplotlib  # here, not at the top: the Agg backend is chosen before pyplot loads (slow, only for plots)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = [h for h in history if h.get("val_dice") is not None and h.get("train_seconds") is not None]
    if not val:
        return
    hours = [h["train_seconds"] / 3600 for h in val]
    curve = {
        "hardware": hardware,
        "x": "hours of training, wall clock (validation excluded)",
        "points": [
            {"epoch": h["epoch"], "hours": round(x, 4), "mean_dice": h["val_mean_dice"], "dice": dict(zip(structures, h["val_dice"]))}
            for h, x in zip(val, hours)
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "learning_curve.json").write_text(json.dumps(json_safe(curve), indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c, name in enumerate(structures):
        ax.plot(hours, [h["val_dice"][c] for h in val], label=name, alpha=0.6)
    ax.plot(hours, [h["val_mean_dice"] for h in val], "k-", lw=2.5, label="mean")
    ax.set_xlabel(f"hours of training ({hardware})"), ax.set_ylabel("validation Dice (model grid)")
    ax.set_ylim(0, 1), ax.grid(alpha=0.3), ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "learning_curve.png", dpi=100)
    plt.close(fig)


def build_training_parts(
    cfg: TrainConfig, spec: NetworkSpec, device, n_samples: int | None = None,
) -> tuple[Any, Any, SegmentationLoss, torch.optim.Optimizer]:
    """Network, sample weighting, loss and optimiser (over the network's and the weighting's
    parameters) of a config, for a network ``spec`` whose ``out_channels`` are the structures;
    ``n_samples`` (the training set's size) sizes the per-sample state of strategies that keep one."""
    t = cfg.training
    n = spec.out_channels
    network = build_network(spec).to(device)
    weighting = build_weighting(t.weighting, in_channels=1 + n, n_structures=n, spatial_dims=spec.spatial_dims)
    if n_samples is not None:
        weighting.bind(int(n_samples))
    weighting = weighting.to(device)
    if t.batch_size < weighting.min_batch_size:
        raise ConfigError(
            f"weighting {type(weighting).__name__} compares samples within a batch: batch_size must be >= "
            f"{weighting.min_batch_size}, got {t.batch_size}"
        )
    if t.batch_dice and not isinstance(weighting, UniformWeighting):
        raise ConfigError(f"batch_dice gives one loss per batch; weighting {type(weighting).__name__} needs per-sample losses")
    loss_fn = SegmentationLoss(t.loss, batch_dice=t.batch_dice)
    optimizer = _optimizer(cfg, list(network.parameters()) + list(weighting.parameters()))
    return network, weighting, loss_fn, optimizer


def training_step(network, weighting, loss_fn, optimizer, batch: dict[str, Any], device, autocast) -> float:
    """One optimisation step on a batch (``image (B, 1, *spatial)``, ``label (B, C, *spatial)``,
    ``present (B, C)``, optionally ``index (B,)``): weighted per-sample loss, backward, clipped step;
    returns the loss."""
    image = batch["image"].to(device)
    label = batch["label"].to(device)
    present = batch["present"].to(device)
    with autocast:
        outputs = network(image)
        per_sample = deep_supervision_loss(loss_fn, outputs, label, present)
        if weighting.tracks_samples and "index" in batch:
            weights = weighting(image, label, present, per_sample, index=batch["index"].to(device))
        else:
            weights = weighting(image, label, present, per_sample)
        loss = (weights * per_sample).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
    optimizer.step()
    return float(loss.detach())


def _init_weights(network: torch.nn.Module, source: str, structures: list[str]) -> dict[str, Any]:
    """Load a trained model's weights into ``network`` (same architecture and structures) and
    return what the model card records about the starting point."""
    init = load_model(source)
    if list(init.structures) != list(structures):
        raise ConfigError(f"training.init_weights {source}: its structures {init.structures} differ from {structures}")
    try:
        # auxiliary deep-supervision heads the starting model lacks begin from their initialisation
        missing, unexpected = network.load_state_dict(init.network.state_dict(), strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"training.init_weights {source}: its weights do not fit this network ({exc})") from exc
    bad = [k for k in missing if not k.startswith("aux_heads.")] + list(unexpected)
    if bad:
        raise ConfigError(f"training.init_weights {source}: its weights do not fit this network (keys {', '.join(bad[:5])})")
    trained = init.meta.get("training", {})
    return {
        "model": str(init.path),
        "weights_sha256": hashlib.sha256((init.path / WEIGHTS).read_bytes()).hexdigest(),
        **{k: trained.get(k) for k in ("command", "epochs", "best_epoch", "seconds", "hardware", "device")},
    }


def train(
    config: TrainConfig | str | Path, *, resume: bool = True, command: str | None = None, budget_cpu_hours: float | None = None,
) -> Path:
    """Train a model from a config (object or YAML path); return the model folder.

    ``budget_cpu_hours``: end the training once the process has spent this much CPU time (user +
    system, all threads, :func:`time.process_time`) in training epochs, validation excluded, or at
    ``training.epochs``, whichever comes first; the poly schedule decays over the budget. For
    comparisons at equal compute on a shared machine (``delineo ablation``); the budget is not part
    of the config, so a finished run can be given more and continue from its checkpoint.

    Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the N processes train one model
    with DistributedDataParallel (:mod:`delineo.training.distributed`); process 0 alone validates
    and writes the model folder and the checkpoint."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_yaml(config)
    dist_info, device = setup(resolve_device(cfg.training.device))
    try:
        return _train(cfg, device, dist_info, resume=resume, command=command, budget_cpu_hours=budget_cpu_hours)
    finally:
        dist_info.close()
        campaign_state.restore_stop_handler()


@dataclass
class _Cases:
    """The cases of a run, preprocessed and in memory, and what was done to their labels."""

    orientation: Any
    structures: list[str]
    train_ids: list[str]
    val_ids: list[str]
    train: PreparedCases
    val: PreparedCases | None  # process 0 only: it alone validates
    absent_empty: dict[str, int] | None = None
    excluded: dict[str, Any] | None = None
    noise_records: list | None = None


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch (built by :func:`_setup_run`)."""

    cfg: TrainConfig
    device: torch.device
    dist_info: Any
    main: bool  # process 0 (the only one without torchrun): validates, writes, logs
    amp: bool
    camp: dict[str, Any] | None
    cases: _Cases
    patch: list[int]
    network: torch.nn.Module
    model: torch.nn.Module  # what the training step calls: the network, or its DistributedDataParallel wrapper
    weighting: Any
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    sampler: Any
    loader: Any
    steps_per_epoch: int
    budget_cpu_hours: float | None
    budget_s: float | None
    cpu_now: dict[str, float]  # CPU seconds of training so far, updated every step (budgeted runs)
    work_dir: Path
    output: Path
    ckpt_path: Path
    config_dict: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    segment: dict[str, Any] | None = None


def _train(
    cfg: TrainConfig, device: torch.device, dist_info, *, resume: bool, command: str | None, budget_cpu_hours: float | None = None,
) -> Path:
    t = cfg.training
    camp = campaign_state.campaign_spec(t.campaign) if t.campaign else None
    if camp:
        if t.schedule != "campaign":
            raise ConfigError("training.campaign is set: training.schedule must be campaign")
        budget_cpu_hours = float(camp["cpu_hours"])
        spent = campaign_state.saved_cpu_seconds(camp["state"]) if resume and campaign_state.has_state(camp["state"]) else 0.0
        if spent >= budget_cpu_hours * 3600:  # said at once, before minutes of preparing the cases
            print(f"{cfg.name}: the campaign is complete ({spent / 3600:.2f} of {budget_cpu_hours:g} CPU-hours spent, "
                  f"state in {camp['state']}); nothing to train", file=sys.stderr, flush=True)
            return Path(cfg.output)
    set_threads(t.threads)
    seed_everything(t.seed)
    amp = bool(t.amp and bf16_available(device))  # bf16 autocast: CUDA, or a CPU with native bf16
    cases = _prepare_cases(cfg, dist_info.is_main)
    run = _setup_run(cfg, device, dist_info, cases, amp=amp, camp=camp, budget_cpu_hours=budget_cpu_hours)
    _resume(run, resume)
    if dist_info.enabled:
        # built after the weights are in place (all processes loaded the same ones); it broadcasts process 0's
        run.model = DistributedDataParallel(run.network, device_ids=[device.index] if device.type == "cuda" else None)
    run.meta = _model_card(run, command)

    # ---- loop ------------------------------------------------------------------------------
    autocast = autocast_context(device, amp)
    if camp and run.main:
        run.segment = campaign_state.begin_segment(run.state, run.meta["training"]["hardware"], torch.get_num_threads(),
                                                   "bf16" if amp else "fp32")
        campaign_state.install_stop_handler()  # put back by train()
    bar = tqdm(range(run.state["epoch"], t.epochs), desc=f"train {cfg.name}", initial=run.state["epoch"], total=t.epochs,
               disable=None if run.main else True)
    for epoch in bar:
        if run.budget_s and run.state.get("cpu_seconds", 0.0) >= run.budget_s:  # spent before this (resumed) run
            break
        t_start = time.perf_counter()  # the epoch's time includes scoring the training labels, if any
        record, budget_spent = _train_epoch(run, epoch, autocast, t_start)
        if run.main and ((epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs or budget_spent):
            _validate_and_keep_best(run, record, epoch)
        run.state["seconds"] += time.perf_counter() - t_start
        record["train_seconds"] = round(run.state["seconds"], 1)  # cumulative wall time, for the learning curve
        run.state["history"].append(record)
        run.state["epoch"] = epoch + 1
        if not run.main:  # process 0 validates and writes the checkpoint; the others wait for it
            dist_info.barrier()
            if budget_spent:
                break
            continue
        _report_epoch(run, bar, record, epoch, t_start)
        _checkpoint(run, record)
        dist_info.barrier()
        if budget_spent:
            break
        if camp and campaign_state.stop_requested():
            print(f"{cfg.name}: stopped on request after epoch {epoch + 1}; state saved in {camp['state']}", file=sys.stderr, flush=True)
            break

    if not run.main:
        dist_info.barrier()  # until process 0 has written the model folder
        return run.output
    if (run.output / "model.json").is_file():
        _finish(run)
    else:  # a campaign segment stopped before its first validation on this machine: nothing to finish
        print(f"{cfg.name}: no model folder on this machine yet ({run.output}: written at a sitting's first validation)", file=sys.stderr)
    dist_info.barrier()
    return run.output


# ---- preparing the cases -----------------------------------------------------------------------


def _prepare_cases(cfg: TrainConfig, main: bool) -> _Cases:
    """Open the training and validation cases, preprocess them into memory (or the case cache) and
    apply the label changes the config asks for (absent as empty, audited exclusions, label noise)."""
    t = cfg.training
    # 3D cases are brought to the model's orientation (the canonical one unless the config names one)
    try:
        orientation = normalise_codes(cfg.preprocess.get("orientation") or CANONICAL)
    except ValueError as exc:
        raise ConfigError(f"preprocess.orientation: {exc}") from exc
    structures, train_ds, val_ds, train_ids, val_ids = _open_splits(cfg, orientation)
    # fast restarts of long runs; a folder name shares the cache between runs (cases are keyed by their preprocessing)
    cache = (Path(t.cache_cases) if isinstance(t.cache_cases, str) else Path(cfg.work_dir or Path("runs") / cfg.name) / "cases") if t.cache_cases else None
    train_cases = PreparedCases(train_ds, cfg.preprocess, "loading training cases", quiet=not main, cache_dir=cache)
    val_cases = PreparedCases(val_ds, cfg.preprocess, "loading validation cases", cache_dir=cache) if main else None
    cases = _Cases(orientation, structures, train_ids, val_ids, train_cases, val_cases)

    if cfg.data.absent_is_empty:
        cases.absent_empty = mark_absent_as_empty(train_cases.items, structures, cfg.data.absent_is_empty)
    if cfg.data.exclude_contours:
        cases.excluded = exclude_audited_contours(train_cases.items, structures, cfg.data.exclude_contours)
    if t.label_noise:
        cases.noise_records = _corrupt_training_labels(train_cases, dict(t.label_noise), t.seed)
    return cases


def _open_splits(cfg: TrainConfig, orientation) -> tuple[list[str], SegmentationDataset, SegmentationDataset, list[str], list[str]]:
    """The structures, the training and validation datasets and their case ids."""
    d = cfg.data
    full = open_dataset(d.train, d.structures, d.train_cases, d.pixel_spacing_mm, orientation)
    structures = full.structures
    if d.val:
        train_ids = list(full.cases)
        val_ds = open_dataset(d.val, structures, None, d.pixel_spacing_mm, orientation)
        val_ids = list(val_ds.cases)
    else:
        train_ids, val_ids = split_cases(full.cases, d.val_fraction, d.split_seed)
        val_ds = open_dataset(d.train, structures, val_ids, d.pixel_spacing_mm, orientation)
    if d.max_cases:
        train_ids = train_ids[: d.max_cases]
    if d.max_val_cases:
        val_ids = val_ids[: d.max_val_cases]
        val_ds = open_dataset(val_ds.root, structures, val_ids, d.pixel_spacing_mm, orientation)
    if not train_ids:
        raise ConfigError(f"{d.train}: no training cases left after holding out validation cases ({len(val_ids)})")
    if not val_ds.presence_matrix().any():
        raise ConfigError(f"{val_ds.root}: no validation case has any of the structures {', '.join(structures)} contoured")
    train_ds = open_dataset(d.train, structures, train_ids, d.pixel_spacing_mm, orientation)
    return structures, train_ds, val_ds, train_ids, val_ids


def _corrupt_training_labels(train_cases: PreparedCases, ln: dict[str, Any], seed: int) -> list:
    """``training.label_noise``: corrupt a fraction of the training labels (:mod:`delineo.data.noise`)."""
    labels, noise_records = corrupt_labels(
        [it["case"] for it in train_cases.items],
        [it["label"].tensor().numpy() for it in train_cases.items],
        [it["present"].numpy() for it in train_cases.items],
        fraction=float(ln.get("fraction", 0.5)),
        radius=tuple(ln.get("radius", (1, 8))),
        seed=int(ln.get("seed", seed)),
    )
    ignore_corrupted = bool(ln.get("ignore_corrupted"))  # the oracle reference: only clean labels count (noise.py)
    for it, lab, rec in zip(train_cases.items, labels, noise_records):
        it["label"] = PackedLabel.of(lab)
        if ignore_corrupted and rec.corrupted:
            it["present"] = torch.zeros_like(it["present"])
    return noise_records


def _network_and_patch(cfg: TrainConfig, cases: _Cases) -> tuple[NetworkSpec, list[int]]:
    """The network spec for the data and the training patch (the whole image when none is set)."""
    t = cfg.training
    items = cases.train.items
    spatial_dims = items[0]["image"].ndim - 1
    try:
        spec = NetworkSpec.from_dict({"spatial_dims": spatial_dims, "in_channels": 1, "out_channels": len(cases.structures), **cfg.network})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"network: {exc}") from exc
    if spec.spatial_dims != spatial_dims:
        raise ConfigError(f"network.spatial_dims={spec.spatial_dims} but the data is {spatial_dims}D")
    spec.out_channels = len(cases.structures)
    patch = t.patch_size
    if patch is None:
        shapes = {tuple(it["image"].shape[1:]) for it in items}
        if len(shapes) > 1:
            raise ConfigError(f"training images differ in size {sorted(shapes)[:3]}...; set training.patch_size")
        patch = [int(math.ceil(s / spec.divisor) * spec.divisor) for s in next(iter(shapes))]
    if any(p % spec.divisor for p in patch):
        raise ConfigError(f"training.patch_size {patch} must be a multiple of {spec.divisor}")
    return spec, patch


# ---- the run: model, loader, schedule, resuming ------------------------------------------------


def _setup_run(cfg: TrainConfig, device, dist_info, cases: _Cases, *, amp: bool, camp, budget_cpu_hours) -> _Run:
    """Network, loss, weighting, optimiser, loader and schedule of a run, from its first epoch."""
    t = cfg.training
    spec, patch = _network_and_patch(cfg, cases)
    train_cases = cases.train
    train_cases.transform = training_augmentation(spec.spatial_dims, patch, t.augment, t.foreground_oversample)
    network, weighting, loss_fn, optimizer = build_training_parts(cfg, spec, device, n_samples=len(train_cases))
    check_weighting(weighting, dist_info)
    init_record = _init_weights(network, t.init_weights, cases.structures) if t.init_weights else None
    generator = torch.Generator().manual_seed(t.seed)
    sampler = None
    if dist_info.enabled:  # each process its share of the cases, reshuffled by (seed, epoch)
        sampler = DistributedSampler(train_cases, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=t.seed)
    # MONAI's DataLoader re-seeds the random transforms in every worker
    loader = DataLoader(
        train_cases, batch_size=t.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=(len(train_cases) if sampler is None else sampler.num_samples) >= t.batch_size,
        num_workers=t.num_workers, generator=generator, collate_fn=_collate,
    )
    steps_per_epoch = t.steps_per_epoch or max(1, len(loader))
    total_steps = steps_per_epoch * t.epochs
    budget_s = float(budget_cpu_hours) * 3600 if budget_cpu_hours else None
    if budget_s and dist_info.enabled:  # each process would count its own CPU time and decay its own LR
        raise ConfigError("a CPU-time budget is for single-process runs (delineo ablation), not under torchrun")
    cpu_now = {"used": 0.0}
    scheduler = _scheduler(cfg, optimizer, total_steps, steps_per_epoch, (lambda: cpu_now["used"] / budget_s) if budget_s else None)
    work_dir = Path(cfg.work_dir or Path("runs") / cfg.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(
        cfg=cfg, device=device, dist_info=dist_info, main=dist_info.is_main, amp=amp, camp=camp, cases=cases, patch=patch,
        network=network, model=network, weighting=weighting, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
        generator=generator, sampler=sampler, loader=loader, steps_per_epoch=steps_per_epoch,
        budget_cpu_hours=budget_cpu_hours, budget_s=budget_s, cpu_now=cpu_now, work_dir=work_dir, output=Path(cfg.output),
        ckpt_path=work_dir / CHECKPOINT, config_dict=cfg.to_dict(),
        state={"epoch": 0, "history": [], "best": -1.0, "best_epoch": None, "seconds": 0.0},
    )
    run.meta = {"init_weights": init_record}  # completed by _model_card
    return run


def _resume(run: _Run, resume: bool) -> None:
    """Continue from this machine's checkpoint (same config) or, for a campaign, from its tracked
    state when that is further on; a campaign's learning rate is set to where it stands."""
    cfg, camp, main = run.cfg, run.camp, run.main
    if resume and run.ckpt_path.is_file():
        ckpt = torch.load(run.ckpt_path, map_location=run.device, weights_only=False)
        changes = _config_changes(ckpt.get("config"), run.config_dict)
        if not changes:
            run.network.load_state_dict(ckpt["network"])
            run.weighting.load_state_dict(ckpt["weighting"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.scheduler.load_state_dict(ckpt["scheduler"])
            run.state = ckpt["state"]
            run.generator.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            np.random.set_state(ckpt["numpy_rng"])
            random.setstate(ckpt["python_rng"])
            if main:
                print(f"resuming {cfg.name} from epoch {run.state['epoch']} ({run.ckpt_path})", file=sys.stderr)
            if run.budget_s:
                run.cpu_now["used"] = run.state.get("cpu_seconds", 0.0)
        elif main:
            instead = "the campaign's state" if camp and campaign_state.has_state(camp["state"]) else "starting afresh"
            print(f"checkpoint {run.ckpt_path} is for a different config ({_list_changes(changes)}): not used, {instead}", file=sys.stderr)
    if camp and resume and campaign_state.has_state(camp["state"]):
        # the tracked state (committed, survives the machine) unless this machine's own checkpoint is further on
        if campaign_state.saved_cpu_seconds(camp["state"]) >= run.state.get("cpu_seconds", 0.0):
            run.state, saved_config = campaign_state.load_state(camp["state"], run.network, run.optimizer, run.generator)
            changes = _config_changes(saved_config, run.config_dict)
            if main:
                if changes:
                    print(f"note: {camp['state']} was written with other settings than {cfg.name}'s config now: "
                          f"{_list_changes(changes)}", file=sys.stderr)
                print(f"resuming campaign {cfg.name} from {camp['state']}: epoch {run.state['epoch']}, "
                      f"{run.state.get('cpu_seconds', 0.0) / 3600:.3f} CPU-hours", file=sys.stderr)
        run.cpu_now["used"] = run.state.get("cpu_seconds", 0.0)
    if camp:
        for g in run.optimizer.param_groups:  # the learning rate where the campaign stands, from the first step
            g["lr"] = cfg.training.lr * lr_factor(run.state.get("cpu_seconds", 0.0) / 3600, camp)


def _model_card(run: _Run, command: str | None) -> dict[str, Any]:
    """The model.json written with the weights (validation and timings are added as they come)."""
    cfg, t, c, dist_info, device = run.cfg, run.cfg.training, run.cases, run.dist_info, run.device
    spatial_dims = c.train.items[0]["image"].ndim - 1
    meta = {
        "name": cfg.name,
        "description": cfg.description,
        "structures": c.structures,
        "roi_types": cfg.roi_types,
        "preprocess": {**cfg.preprocess, "orientation": c.orientation} if spatial_dims == 3 else cfg.preprocess,
        "inference": {"patch_size": None, "overlap": 0.5, "mirror": False, "threshold": 0.5, **cfg.inference},
        "postprocess": cfg.postprocess,
        "training": {
            "data": {"train": cfg.data.train, "n_train": len(c.train_ids), "val": cfg.data.val or f"{cfg.data.val_fraction:.0%} of train, split seed {cfg.data.split_seed}",
                     "n_val": len(c.val_ids), "val_cases": c.val_ids},
            "config": run.config_dict,
            "command": command or "delineo train --config <config>",
            "seed": t.seed,
            "device": str(device),
            "hardware": hardware_description(device) if not dist_info.enabled else f"{dist_info.world_size} processes ({dist_info.backend}), each {hardware_description(device)}",
            "parameters": count_parameters(run.network),
            "label_noise": [asdict(r) for r in c.noise_records] if c.noise_records else None,
            "excluded_contours": c.excluded,
            "absent_trained_as_empty": c.absent_empty,
            "init_weights": run.meta.get("init_weights"),
        },
    }
    if dist_info.enabled:
        meta["training"]["processes"] = {
            "world_size": dist_info.world_size, "backend": dist_info.backend, "batch_size_per_process": t.batch_size,
            "note": "DistributedDataParallel: gradients averaged over the processes; one step trains on world_size x batch_size patches",
        }
    return meta


# ---- one epoch ---------------------------------------------------------------------------------


def _train_epoch(run: _Run, epoch: int, autocast, t_start: float) -> tuple[dict[str, Any], bool]:
    """Train ``steps_per_epoch`` steps (``t_start``: when the epoch began); returns the epoch's
    record and whether the CPU budget is spent."""
    t, state, network, weighting, sampler = run.cfg.training, run.state, run.network, run.weighting, run.sampler
    c_start = time.process_time()
    if weighting.wants_scores(epoch):  # e.g. agreement selection: score every training label first
        network.eval()
        weighting.set_scores(*case_agreement(network, run.cases.train, run.meta["inference"], run.device, run.amp, weighting.agreement_measure), epoch)
    network.train()
    weighting.train()
    losses = []
    # augmentation randomness is a function of (seed, epoch) (and of the process): a resumed run repeats it exactly
    run.cases.train.transform.set_random_state(seed=epoch_seed(t.seed, epoch, run.dist_info.rank))
    if sampler is not None:
        sampler.set_epoch(epoch * 100_003)
    it = iter(run.loader)
    for k in range(run.steps_per_epoch):
        try:
            batch = next(it)
        except StopIteration:
            if sampler is not None:
                sampler.set_epoch(epoch * 100_003 + k)
            it = iter(run.loader)
            batch = next(it)
        losses.append(training_step(run.model, weighting, run.loss_fn, run.optimizer, batch, run.device, autocast))
        if run.budget_s:
            run.cpu_now["used"] = state.get("cpu_seconds", 0.0) + time.process_time() - c_start
        run.scheduler.step()
    step_s = (time.perf_counter() - t_start) / run.steps_per_epoch
    budget_spent = False
    if run.budget_s:
        state["cpu_seconds"] = run.cpu_now["used"] = state.get("cpu_seconds", 0.0) + time.process_time() - c_start
        budget_spent = state["cpu_seconds"] >= run.budget_s
    epoch_loss = float(np.mean(losses))
    if run.dist_info.enabled:  # the mean over all processes' steps
        total = torch.tensor([epoch_loss], dtype=torch.float64, device=run.device)
        dist.all_reduce(total)
        epoch_loss = float(total.item()) / run.dist_info.world_size
    patch_voxels = int(np.prod(run.patch)) * t.batch_size * run.dist_info.world_size  # all processes together
    record: dict[str, Any] = {
        "epoch": epoch + 1, "loss": epoch_loss, "lr": run.optimizer.param_groups[0]["lr"],
        "steps_per_s": round(1.0 / step_s, 4), "voxels_per_s": round(patch_voxels / step_s),
    }
    if run.budget_s:
        record["cpu_seconds"] = round(state["cpu_seconds"], 3)
    if run.segment is not None:
        record["segment"] = run.segment["index"]
    return record, budget_spent


# ---- validation, checkpoints, the model folder -------------------------------------------------


def _validate_and_keep_best(run: _Run, record: dict[str, Any], epoch: int) -> None:
    """Validate (process 0) and, on a new best mean Dice, write the model folder with these weights."""
    v = validate(run.network, run.cases.val, run.meta["inference"], run.device, run.amp)
    record["val_dice"] = v["per_structure"]
    record["val_mean_dice"] = v["mean"]
    state = run.state
    if state["best_epoch"] is None or v["mean"] > state["best"]:
        state["best"], state["best_epoch"] = v["mean"], epoch + 1
        run.meta["training"]["best_epoch"] = epoch + 1
        run.meta["validation"] = {
            "mean_dice_model_grid": v["mean"],
            "dice_model_grid": dict(zip(run.cases.structures, v["per_structure"])),
            "note": "validation Dice on the model grid during training, used to select the epoch",
        }
        save_model(run.output, run.network, run.meta)
        save_quality_module(run.output, run.weighting)


def _report_epoch(run: _Run, bar, record: dict[str, Any], epoch: int, t_start: float) -> None:
    """The learning curve (after a validation) and the progress bar, or one log line per epoch."""
    t = run.cfg.training
    if "val_dice" in record:
        write_learning_curve(run.state["history"], run.cases.structures, run.output, run.meta["training"]["hardware"])
    bar.set_postfix(loss=f"{record['loss']:.4f}", val_dice=f"{record.get('val_mean_dice', float('nan')):.3f}")
    if bar.disable:  # not a terminal (log file, CI): one line per epoch instead of a bar
        print(
            f"{run.cfg.name} epoch {epoch + 1}/{t.epochs} loss {record['loss']:.4f} "
            f"val Dice {record.get('val_mean_dice', float('nan')):.4f} ({time.perf_counter() - t_start:.1f} s, "
            f"{record['steps_per_s']:.2f} steps/s, {record['voxels_per_s'] / 1e6:.2f} Mvoxel/s, {'bf16' if run.amp else 'fp32'})",
            file=sys.stderr, flush=True,
        )


def _checkpoint(run: _Run, record: dict[str, Any]) -> None:
    """This machine's checkpoint (everything to resume exactly) and, for a campaign, its tracked state."""
    tmp = run.work_dir / (CHECKPOINT + ".tmp")
    torch.save(
        {
            "config": run.config_dict, "network": run.network.state_dict(), "weighting": run.weighting.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "state": run.state,
            "generator": run.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
        },
        tmp,
    )
    tmp.replace(run.ckpt_path)
    camp = run.camp
    if camp:  # the tracked state, after every epoch (a stop loses at most one epoch)
        campaign_state.update_segment(run.segment, run.state)
        campaign_state.save_state(camp["state"], run.network, run.optimizer, run.state, run.generator, run.config_dict)
        if "val_dice" in record and camp.get("results"):
            campaign_state.write_curve(run.state, run.cases.structures, camp)


def _finish(run: _Run) -> None:
    """Final metadata beside the weights of the best epoch: epochs, budget, timing, throughput,
    the weighting's record; the history and the training curves."""
    t, state, output, budget_s = run.cfg.training, run.state, run.output, run.budget_s
    final = json.loads((output / "model.json").read_text())
    final["training"]["epochs"] = t.epochs if not budget_s else state["epoch"]
    if budget_s:
        final["training"]["budget"] = {
            "cpu_hours": run.budget_cpu_hours, "cpu_seconds_used": round(state.get("cpu_seconds", 0.0), 3),
            "epochs_done": state["epoch"], "epochs_cap": t.epochs,
            "ended_by": "budget" if state.get("cpu_seconds", 0.0) >= budget_s else "epochs",
            "note": "CPU time of the training process (user + system, all threads) in training epochs, validation excluded",
        }
    final["training"]["seconds"] = round(state["seconds"], 1)
    rates = [h["steps_per_s"] for h in state["history"] if h.get("steps_per_s")]
    final["training"]["throughput"] = {
        "steps_per_s_median": float(np.median(rates)) if rates else None,
        "voxels_per_s_median": float(np.median([h["voxels_per_s"] for h in state["history"] if h.get("voxels_per_s")])) if rates else None,
        "bf16_autocast": run.amp, "threads": torch.get_num_threads(), "patch_size": list(run.patch), "batch_size": t.batch_size,
        "note": "per epoch: training steps only (augmentation included, validation excluded)",
    }
    final["training"]["weighting_record"] = run.weighting.record([it["case"] for it in run.cases.train.items])
    (output / "model.json").write_text(json.dumps(json_safe(final), indent=2) + "\n")
    (output / "history.json").write_text(json.dumps(json_safe(state["history"]), indent=1) + "\n")
    plot_curves(state["history"], run.cases.structures, output / "training_curves.png")


QUALITY_WEIGHTS = "quality.safetensors"


def save_quality_module(folder: Path, weighting: torch.nn.Module) -> Path | None:
    """Keep a learned weighting's parameters (the QAM) beside the model, for ``delineo audit``.
    Strategies without parameters write nothing."""
    state = weighting.state_dict()
    if not state:
        return None
    path = Path(folder) / QUALITY_WEIGHTS
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    return path


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([i["image"] for i in items]),
        "label": torch.stack([i["label"] for i in items]),
        "present": torch.stack([i["present"] for i in items]),
        "case": [i["case"] for i in items],
        "index": torch.as_tensor([i["index"] for i in items], dtype=torch.long),
    }
