"""Training configuration, read from YAML. Paths may use ``${DELINEO_DATA}``.

Example (``configs/cxr-jsrt.yaml``)::

    name: cxr-jsrt
    output: models/cxr-jsrt
    data: {train: "${DELINEO_DATA}/jsrt", val_fraction: 0.15, structures: [lung, heart, clavicle]}
    network: {spatial_dims: 2, channels: [16, 32, 64, 96, 128]}
    preprocess: {intensity: {kind: window, low: 0, high: 255}}
    training: {epochs: 60, batch_size: 8, loss: dice_bce, schedule: poly}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from delineo.errors import ConfigError, InputError
from delineo.settings import expand, read_yaml_mapping


def _from_dict(cls, d: dict[str, Any] | None, where: str):
    d = dict(d or {})
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")
    return cls(**d)


@dataclass
class DataConfig:
    train: str = ""
    val: str | None = None  # a separate folder; otherwise ``val_fraction`` of ``train`` is held out
    val_fraction: float = 0.15
    split_seed: int = 0
    structures: list[str] | None = None
    pixel_spacing_mm: float = 1.0  # for PNG datasets
    train_cases: list[str] | None = None  # restrict (e.g. for quick runs)
    max_cases: int | None = None
    max_val_cases: int | None = None
    # agreement selection from an audit of the training contours (delineo audit): {audit: path/to/audit.csv,
    # fraction: 0.1}: per structure, that fraction of the contoured training cases with the lowest agreement
    # (Dice of a model's prediction vs the contour) is treated as not contoured (left out of the loss)
    exclude_contours: dict[str, Any] | None = None
    # structures whose missing file means "none in this case", not "not contoured": trained as empty
    # there instead of being left out of the loss (OpenKBP's PTV63/PTV56: a dose level the patient was
    # not prescribed). Training cases only; validation Dice stays over the cases that have the structure.
    absent_is_empty: list[str] | None = None


@dataclass
class TrainingConfig:
    epochs: int = 50
    batch_size: int = 8
    steps_per_epoch: int | None = None  # None: one pass over the training cases
    patch_size: list[int] | None = None  # None: whole images
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 3e-5
    schedule: str = "poly"  # poly | cosine_restarts | cyclic | constant | campaign
    cycle_epochs: int = 10  # period of cosine_restarts / cyclic
    loss: str = "dice_bce"  # dice | dice_bce | bce | nr_dice | gce | dice_gce
    batch_dice: bool = False  # Dice over the whole batch per structure (nnU-Net); uniform weighting only
    foreground_oversample: float = 0.0  # fraction of patches centred on a contoured voxel (nnU-Net: 0.33)
    augment: str = "default"  # default | none
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (fp32 elsewhere)
    val_every: int = 1
    num_workers: int = 0
    cache_cases: bool | str = False  # keep the preprocessed cases in work_dir/cases (fast restarts of long runs), or in this folder (shared by runs)
    threads: int | None = None
    weighting: dict[str, Any] | None = None  # {kind: uniform} or a registered strategy, e.g. qam
    label_noise: dict[str, Any] | None = None  # synthetic label corruption of training samples
    init_weights: str | None = None  # start from a trained model (bundled name or folder): fine-tuning, continued training
    # a campaign (schedule: campaign): {cpu_hours, warmup_cpu_hours, constant_until_cpu_hours, decay, state, results};
    # the learning rate follows the campaign's CPU time and the state lives in a tracked folder (training/campaign.py)
    campaign: dict[str, Any] | None = None


@dataclass
class TrainConfig:
    name: str
    output: str
    data: DataConfig
    network: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=lambda: {"intensity": {"kind": "window", "low": 0, "high": 255}})
    inference: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    work_dir: str | None = None  # checkpoints; default runs/<name>
    description: str = ""
    roi_types: dict[str, str] = field(default_factory=dict)  # roi_name -> PTV / CTV / GTV / ORGAN

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        d = dict(d)
        for key in ("name", "output", "data"):
            if key not in d:
                raise ConfigError(f"{where}: missing required setting {key!r}")
        d["data"] = _from_dict(DataConfig, d["data"], f"{where}: data")
        d["training"] = _from_dict(TrainingConfig, d.get("training"), f"{where}: training")
        cfg = _from_dict(cls, d, where)
        cfg.data.train = expand(cfg.data.train)
        if cfg.data.val:
            cfg.data.val = expand(cfg.data.val)
        cfg.output = expand(cfg.output)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        d = read_yaml_mapping(path)
        try:
            return cls.from_dict(d, where=str(path))
        except TypeError as exc:
            raise InputError(path, str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
