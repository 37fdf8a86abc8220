"""Model folders: ``models/<name>/model.json`` + ``weights.safetensors``.

``model.json`` holds everything needed to use the weights again: the network spec, the
ordered structure names, preprocessing (spacing, intensity), inference and post-processing
settings, and the record of how it was trained (data, command, seed, time, hardware) with
its validation metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from delineo.data.orientation import CANONICAL, normalise_codes
from delineo.errors import InputError
from delineo.models.networks import NetworkSpec, SegUNet, build_network
from delineo.settings import models_dir

MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
TARGET_TYPES = ("PTV", "CTV", "GTV")  # RT ROI Interpreted Types that are targets; everything else is an organ


@dataclass
class ModelBundle:
    """A trained network with its metadata. ``meta`` is the parsed ``model.json``."""

    path: Path | None
    meta: dict[str, Any]
    network: SegUNet

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name if self.path else "model")

    @property
    def structures(self) -> list[str]:
        return list(self.meta["structures"])

    @property
    def roi_types(self) -> dict[str, str]:
        """RT ROI Interpreted Type of each structure (``PTV``, ``CTV``, ``GTV``, ``ORGAN``), from the
        card's ``roi_types``; ``ORGAN`` where it names none."""
        types = self.meta.get("roi_types") or {}
        return {n: str(types.get(n, "ORGAN")).upper() for n in self.structures}

    @property
    def spec(self) -> NetworkSpec:
        return self.network.spec

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.meta.get("preprocess", {})

    @property
    def orientation(self) -> str | None:
        """Axis codes of the training arrays (``"LPI"``), for 3D models; None for 2D ones. A bundle
        built in memory without one is canonical (as :func:`save_model` records it); a folder on
        disk without one is refused by :func:`load_model`."""
        if self.spec.spatial_dims != 3:
            return None
        return self.preprocess.get("orientation") or CANONICAL

    @property
    def inference(self) -> dict[str, Any]:
        return self.meta.get("inference", {})

    @property
    def postprocess(self) -> dict[str, Any]:
        return self.meta.get("postprocess", {})

    @property
    def pixel_spacing_mm(self) -> float:
        """Pixel size assumed for 2D inputs that store none (PNG), from the training data."""
        return float(self.meta.get("training", {}).get("config", {}).get("data", {}).get("pixel_spacing_mm", 1.0))

    def to(self, device: str | torch.device) -> "ModelBundle":
        self.network.to(device)
        return self


def available_models() -> list[str]:
    """Names of the bundled models (folders under ``models/`` with a ``model.json``)."""
    root = models_dir()
    return sorted(p.name for p in root.iterdir() if (p / MODEL_JSON).is_file()) if root.is_dir() else []


def resolve_model(name_or_path: str | Path) -> Path:
    """A model folder from a bundled name (``cxr-jsrt``) or a path."""
    p = Path(name_or_path).expanduser()
    if (p / MODEL_JSON).is_file():
        return p
    bundled = models_dir() / str(name_or_path)
    if (bundled / MODEL_JSON).is_file():
        return bundled
    names = ", ".join(available_models()) or "none"
    raise InputError(p, f"no model folder here and no bundled model of that name (bundled: {names})")


def save_model(folder: str | Path, network: SegUNet, meta: dict[str, Any]) -> Path:
    """Write ``model.json`` and ``weights.safetensors`` (float32) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta["network"] = network.spec.to_dict()
    if network.spec.spatial_dims == 3 and not meta.get("preprocess", {}).get("orientation"):
        # a 3D model made here without a recorded orientation was made on canonical arrays
        meta["preprocess"] = {**meta.get("preprocess", {}), "orientation": CANONICAL}
    state = {k: v.detach().float().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    (folder / MODEL_JSON).write_text(json.dumps(json_safe(meta), indent=2) + "\n")
    return folder


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) by None and NumPy scalars by Python numbers, recursively."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a model folder by bundled name or path, in eval mode on ``device``."""
    folder = resolve_model(name_or_path)
    try:
        meta = json.loads((folder / MODEL_JSON).read_text())
    except json.JSONDecodeError as exc:
        raise InputError(folder / MODEL_JSON, f"not valid JSON ({exc})") from exc
    for key in ("structures", "network"):
        if key not in meta:
            raise InputError(folder / MODEL_JSON, f"missing required key {key!r}")
    try:
        network = build_network(meta["network"])
    except (TypeError, ValueError) as exc:
        raise InputError(folder / MODEL_JSON, f"invalid network description ({exc})") from exc
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise InputError(weights, "weights file is missing")
    try:
        network.load_state_dict(load_file(str(weights)))
    except Exception as exc:
        raise InputError(weights, f"weights do not fit the network in model.json ({exc})") from exc
    network.eval()
    if network.spec.spatial_dims == 3:
        codes = meta.get("preprocess", {}).get("orientation")
        if not codes:
            raise InputError(
                folder / MODEL_JSON,
                "a 3D model must record the orientation of its training arrays as preprocess.orientation "
                "(axis codes such as 'LPI', from the training images' affine); without it images cannot be "
                "brought to the order the network was trained on",
            )
        try:
            normalise_codes(codes)
        except ValueError as exc:
            raise InputError(folder / MODEL_JSON, f"preprocess.orientation: {exc}") from exc
    return ModelBundle(folder, meta, network).to(device)
