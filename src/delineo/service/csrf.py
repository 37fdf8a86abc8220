"""Cross-site request forgery defence: a state-changing request (POST, PUT, PATCH, DELETE) that is
not authenticated by an API token (``Authorization: Bearer``) must come from a page of this
server. Its ``Origin`` header (or, without one, the origin of its ``Referer``) must be the
server's own origin (scheme, host and port as the request reached uvicorn: behind a reverse
proxy, with ``--proxy-headers`` and the proxy passing ``Host``) or one of
``DELINEO_ALLOWED_ORIGINS``; otherwise the answer is 403 and the request never reaches a route.

Browsers send ``Origin`` with every cross-site POST/PUT/PATCH/DELETE (``null`` from sandboxed
frames and no-referrer pages, refused too), so a request with neither header does not come from
a page of another site: scripts (curl, Python) and the test client pass. A token request is
exempt: a page of another site cannot set an ``Authorization`` header without a CORS preflight,
which this server never grants. Sign-in is covered too (no signing a browser into an
attacker's account). SameSite=lax on the cookie stays as a second layer.

A pure ASGI middleware, so an upload is refused before its body is read.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.datastructures import URL, Headers

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(text: str) -> str | None:
    """``scheme://host[:port]`` (lower case, default port left out) of an origin or URL; None when
    ``text`` is not an http(s) URL (``null``, garbage)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != _DEFAULT_PORTS[scheme] else "")


def request_origin(headers: Headers) -> tuple[str | None, str | None]:
    """(the origin the browser says the request comes from, the header it came from), or
    (None, None) when there is neither ``Origin`` nor ``Referer``."""
    origin = headers.get("origin")
    if origin is not None:
        return origin.strip(), "Origin"
    referer = headers.get("referer")
    if referer:
        return normalize_origin(referer) or referer.strip()[:200], "Referer"
    return None, None


class OriginCheckMiddleware:
    """Refuse (403) state-changing requests made without an API token from a page of another
    origin; see the module's docstring."""

    def __init__(self, app, allowed_origins: tuple[str, ...] = ()):
        self.app = app
        self.allowed = {o for o in (normalize_origin(a) for a in allowed_origins) if o}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"].upper() not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("authorization", "").lower().startswith("bearer "):
            await self.app(scope, receive, send)
            return
        claimed, header = request_origin(headers)
        if claimed is None:
            await self.app(scope, receive, send)
            return
        own = normalize_origin(str(URL(scope=scope)))
        if normalize_origin(claimed) in ({own} | self.allowed) - {None}:
            await self.app(scope, receive, send)
            return
        detail = (f"cross-site request refused: its {header} {claimed[:200]!r} is not this server ({own}). "
                  f"Requests that change something with the session cookie must come from this server's own page; "
                  f"scripts use an API token (Authorization: Bearer). Behind a reverse proxy, pass the Host header on "
                  f"or list the public address in DELINEO_ALLOWED_ORIGINS.")
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
