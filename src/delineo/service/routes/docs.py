"""The API's interactive documentation, served from this server: Swagger UI at ``/api/docs`` and
ReDoc at ``/api/redoc``, from ``swagger-ui-dist`` and ``redoc`` installed by ``npm ci`` (no CDN:
a hospital network usually cannot reach one). The pages load their scripts from files (no inline
script), so they work under a strict Content-Security-Policy."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from delineo.settings import REPO_ROOT

log = logging.getLogger("delineo.service")

DOCS_DIR = Path(__file__).resolve().parents[1] / "web" / "docs"

#: (URL prefix, package folder inside node_modules, a file that must be there)
PACKAGES = {
    "swagger-ui": ("swagger-ui-dist", "swagger-ui-bundle.js"),
    "redoc": ("redoc/bundles", "redoc.standalone.js"),
}


def node_package(folder: str, probe: str) -> Path | None:
    """Where ``npm ci`` put a package folder (``node_modules/<folder>``), or None."""
    for root in [os.environ.get("DELINEO_NODE_MODULES"), REPO_ROOT / "node_modules", Path.cwd() / "node_modules"]:
        if root and (Path(root) / folder / probe).is_file():
            return Path(root) / folder
    return None


#: URLs outside this server that a bundle would load (ReDoc's "API docs by Redocly" logo), and
#: what this server serves instead
OUTSIDE_URLS = {"https://cdn.redoc.ly/redoc/logo-mini.svg": "/static/docs/blank.svg"}


@lru_cache(maxsize=4)
def _local_bundle(path: str, mtime: float) -> bytes:
    text = Path(path).read_bytes()
    for url, local in OUTSIDE_URLS.items():
        text = text.replace(url.encode(), local.encode())
    return text


def install_docs(app: FastAPI) -> None:
    """Add ``/api/docs`` (Swagger UI), ``/api/redoc`` and their static files to ``app``.
    Create the app with ``docs_url=None, redoc_url=None``."""
    redoc = node_package(*PACKAGES["redoc"])
    if redoc is not None:
        bundle = redoc / "redoc.standalone.js"

        @app.get("/vendor/redoc/redoc.standalone.js", include_in_schema=False)
        def redoc_bundle() -> Response:
            """ReDoc's bundle with its one CDN address (a logo) pointed at this server."""
            return Response(_local_bundle(str(bundle), bundle.stat().st_mtime), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=3600"})

    for prefix, (folder, probe) in PACKAGES.items():
        path = node_package(folder, probe)
        if path is not None:
            app.mount(f"/vendor/{prefix}", StaticFiles(directory=path), name=f"vendor-{prefix}")
        else:
            log.warning("%s not found (run `npm ci` in the repository): /api/docs is unavailable", folder)

            def missing(path: str = "", _p=folder):
                return JSONResponse({"detail": f"{_p} is not installed on this server (run `npm ci`)"}, status_code=404)

            app.add_api_route(f"/vendor/{prefix}/{{path:path}}", missing, include_in_schema=False)
    # the pages' own files are under /static/docs/ (web/docs, served with the rest of web/)

    @app.get("/api/docs", include_in_schema=False)
    def swagger_ui():
        return FileResponse(DOCS_DIR / "swagger.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/redoc", include_in_schema=False)
    def redoc():
        return FileResponse(DOCS_DIR / "redoc.html", headers={"Cache-Control": "no-cache"})
