"""The contouring models this server offers (``delineo.models.registry.available_models``)."""

from __future__ import annotations

import json
from functools import lru_cache

from fastapi import APIRouter, Depends, HTTPException

from delineo.contours.colors import structure_color
from delineo.models.registry import available_models, resolve_model
from delineo.service.models import User
from delineo.service.routes.deps import current_user
from delineo.service.schemas import ModelOut, StructureOut

router = APIRouter(prefix="/api/models", tags=["models"])
PREFERRED = {3: "hn-ct", 2: "cxr-jsrt"}


def model_info(name: str) -> dict:
    try:
        folder = resolve_model(name)
    except Exception:
        raise HTTPException(422, f"no model {name!r} on this server (available: {', '.join(available_models()) or 'none'})") from None
    if name not in available_models():
        raise HTTPException(422, f"no model {name!r} on this server (available: {', '.join(available_models()) or 'none'})")
    path = folder / "model.json"
    return _read_meta(str(path), path.stat().st_mtime)


@lru_cache(maxsize=64)
def _read_meta(path: str, _mtime: float) -> dict:
    meta = json.loads(open(path).read())
    return {"structures": list(meta["structures"]), "spatial_dims": int(meta["network"]["spatial_dims"]),
            "roi_types": meta.get("roi_types", {}), "description": meta.get("description", "")}


def pick_model(requested: str | None, dims: int) -> str:
    """The requested model if it fits a study of ``dims`` dimensions; else the default for it."""
    if requested:
        info = model_info(requested)
        if info["spatial_dims"] != dims:
            kind = "3D CT volumes" if info["spatial_dims"] == 3 else "2D X-ray images"
            raise HTTPException(422, f"model {requested} contours {kind}; this study is {dims}D")
        return requested
    names = available_models()
    fitting = [n for n in names if model_info(n)["spatial_dims"] == dims]
    if not fitting:
        raise HTTPException(422, f"no {dims}D model is installed on this server (available: {', '.join(names) or 'none'})")
    return PREFERRED[dims] if PREFERRED.get(dims) in fitting else fitting[0]


@router.get("", response_model=list[ModelOut])
def list_models(_: User = Depends(current_user)) -> list[ModelOut]:
    """Models available for contouring, with their structures and display colours."""
    out = []
    for name in available_models():
        try:
            info = model_info(name)
        except Exception:
            continue
        out.append(ModelOut(name=name, spatial_dims=info["spatial_dims"], description=info["description"],
                            structures=[StructureOut(name=s, color=list(structure_color(s, i)), roi_type=info["roi_types"].get(s))
                                        for i, s in enumerate(info["structures"])]))
    return out
