"""``GET /ui``: the dashboard, a few static files shipped inside the package (``outlast/ui``).

The page uses the JSON API like any other client; these routes only serve its files. They are
public (the files hold no data; the page asks for a token when the API wants one), and carry a
Content-Security-Policy that allows nothing but this origin: no inline script or style, no
external resource, no framing.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# path under /ui -> (file in outlast/ui, media type)
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    # Served from the package: a new outlast is a new page, so browsers revalidate every load.
    "Cache-Control": "no-cache",
}


def ui_routes() -> list[Route]:
    package = resources.files("outlast") / "ui"
    bodies = {path: (package / name).read_bytes() for path, (name, _) in FILES.items()}

    def endpoint(path: str) -> Route:
        media_type = FILES[path][1]
        body = bodies[path]

        async def serve(request: Request) -> Response:
            return Response(body, media_type=media_type, headers=HEADERS)

        return Route(f"/ui{path}", serve, methods=["GET", "HEAD"])

    return [endpoint(path) for path in FILES]
