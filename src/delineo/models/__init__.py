"""Networks (the seed's U-Net family) and model folders."""

from delineo.models.networks import NetworkSpec, SegUNet, build_network, count_parameters
from delineo.models.registry import ModelBundle, available_models, load_model, resolve_model, save_model

__all__ = [
    "ModelBundle",
    "NetworkSpec",
    "SegUNet",
    "available_models",
    "build_network",
    "count_parameters",
    "load_model",
    "resolve_model",
    "save_model",
]
