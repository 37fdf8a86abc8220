"""Security headers on every response of the web service (a pure ASGI middleware, so it also
covers static files, streamed downloads and error answers).

The Content-Security-Policy fits what the pages load, all from this server: the app and the API
documentation load only local scripts (no inline script, no CDN); NiiVue (the viewer) draws with
WebGL, instantiates WebAssembly decoders that it carries as ``data:`` URLs (``'wasm-unsafe-eval'``,
``connect-src data:``), may start workers from ``blob:`` URLs and loads its font atlas and
colour maps as ``data:``/``blob:`` images. Inline *styles* stay allowed: the pages set
``style="..."`` on generated elements and ReDoc/Swagger UI inject style sheets. Nothing may frame
the pages (``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``). HSTS is sent only on
HTTPS requests (as uvicorn sees them; behind a proxy run it with ``--proxy-headers``).
"""

from __future__ import annotations

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "worker-src 'self' blob:",
    "child-src 'self' blob:",
    "connect-src 'self' data: blob:",
    "img-src 'self' data: blob:",
    "style-src 'self' 'unsafe-inline'",
    "font-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Add :data:`SECURITY_HEADERS` (and HSTS over HTTPS) to every HTTP response; headers a
    route set itself are left as they are."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = dict(SECURITY_HEADERS)
        if scope.get("scheme") == "https":
            extra["strict-transport-security"] = HSTS

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.decode("latin-1").lower() for k, _ in headers}
                headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items() if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
