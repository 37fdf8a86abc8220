"""Locations delineo reads from, overridable by environment variables.

``DELINEO_DATA``   development data (default ``../shared/data`` from the repository root).
``DELINEO_MODELS`` folder of bundled models (default ``models/`` in the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

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
