"""Locations delineo reads from, overridable by environment variables.

``DELINEO_DATA``   development data (default ``../shared/data`` from the repository root).
``DELINEO_MODELS`` folder of bundled models (default ``models/`` in the repository).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from delineo.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Root of the development data (``jsrt/``, ``openkbp/``); may not exist."""
    return Path(os.environ.get("DELINEO_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser()


def models_dir() -> Path:
    """Folder holding bundled models, one sub-folder per model."""
    return Path(os.environ.get("DELINEO_MODELS", REPO_ROOT / "models")).expanduser()


def expand(value: str) -> str:
    """Expand ``${DELINEO_DATA}``, other environment variables and ``~`` in a config path."""
    env = dict(os.environ)
    env.setdefault("DELINEO_DATA", str(data_dir()))
    out = value
    for key, val in env.items():
        out = out.replace("${" + key + "}", val)
    return os.path.expanduser(out)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; InputError naming the file otherwise."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(path, "config file does not exist") from exc
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})") from exc
    if not isinstance(d, dict):
        raise InputError(path, "config must be a YAML mapping")
    return d
