"""The FastAPI application: ``create_app()`` wires settings, database, queue, routes and the web UI.

OpenAPI document at ``/api/openapi.json``, interactive docs at ``/api/docs``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from delineo.service.config import Settings
from delineo.service.core import ServiceContext
from delineo.service.csrf import OriginCheckMiddleware
from delineo.service.headers import SECURITY_HEADERS, SecurityHeadersMiddleware
from delineo.service.routes import dicom_node
from delineo.service.routes import audit, auth, downloads, jobs, models, review, send, studies, upload, users, viewer
from delineo.service.routes import pacs
from delineo.settings import REPO_ROOT

log = logging.getLogger("delineo.service")

WEB_DIR = Path(__file__).parent / "web"


def niivue_dist() -> Path | None:
    """Where ``npm ci`` put NiiVue's browser build (``node_modules/@niivue/niivue/dist``)."""
    import os

    for root in [os.environ.get("DELINEO_NODE_MODULES"), REPO_ROOT / "node_modules", Path.cwd() / "node_modules"]:
        if root and (Path(root) / "@niivue" / "niivue" / "dist" / "index.js").is_file():
            return Path(root) / "@niivue" / "niivue" / "dist"
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx = ServiceContext(settings)
        app.state.ctx = ctx
        app.state.admin_password = ctx.start(consumer=settings.embedded_queue and settings.start_consumer)
        try:
            yield
        finally:
            ctx.stop()

    app = FastAPI(
        title="delineo",
        summary="Auto-contouring for radiotherapy: upload a CT, get structures back as RTSTRUCT, DICOM SEG and NIfTI.",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc from local files: routes/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    # (the last added is the outermost: the Origin check's 403 gets the security headers too)
    app.add_middleware(OriginCheckMiddleware, allowed_origins=settings.allowed_origins)  # CSRF (csrf.py)
    app.add_middleware(SecurityHeadersMiddleware)  # CSP, nosniff, no framing, HSTS on HTTPS (headers.py)
    app.include_router(dicom_node.router)
    # the study routes, in the order they are matched: POST /api/studies (upload) first, as when they were one router
    study_routers = (upload.router, studies.router, jobs.router, downloads.router, viewer.router, review.router, send.router)
    for r in (auth.router, users.router, models.router, *study_routers, audit.router):
        app.include_router(r)
    app.include_router(pacs.router)  # DICOMweb PACS: configure, search, contour from, store to

    @app.get("/api/health", tags=["meta"])
    def health() -> dict:
        ctx: ServiceContext = app.state.ctx
        return {"status": "ok", "queue": "embedded" if settings.embedded_queue else "redis", "pending_jobs": ctx.queue.pending()}

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # pragma: no cover - last resort
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({exc.__class__.__name__}); the server log has the details"}, status_code=500,
                            headers=SECURITY_HEADERS)  # answered outside the middleware: add them here

    dist = niivue_dist()
    if dist is not None:
        app.mount("/vendor/niivue", StaticFiles(directory=dist), name="niivue")
    else:
        log.warning("NiiVue not found (run `npm ci` in the repository): the viewer is unavailable")

    @app.get("/vendor/niivue/{path:path}", include_in_schema=False)
    def niivue_missing(path: str):
        return JSONResponse({"detail": "NiiVue is not installed on this server (run `npm ci`)"}, status_code=404)

    from delineo.service.routes.docs import install_docs

    install_docs(app)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app
