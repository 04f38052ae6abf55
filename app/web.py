"""The dashboard: the static build of frontend/ served at `/`, beside the API under /api and /v1.

Only the dashboard's own paths are routed here (`/`, its page sections, `/assets/...`), so an
unknown /api or /v1 route still answers the API's JSON 404 and a wrong method its 405. Without a
build, those paths answer a page saying how to make one; the API works either way.
"""

from __future__ import annotations

import gzip
import mimetypes
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from app.errors import NotFound

DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"
# The client-side routes of frontend/src/main.tsx: a reload or a shared link lands on index.html.
SECTIONS = ("datasets", "jobs", "endpoints", "evaluations", "models", "usage")
COMPRESSIBLE = (".js", ".css", ".svg", ".json", ".map", ".html")

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>LLM Tuner: dashboard not built</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;color:#111}
code,pre{background:#f3f4f6;border-radius:4px;padding:.1rem .3rem}pre{padding:.75rem;overflow:auto}</style>
</head><body>
<h1>The dashboard is not built yet</h1>
<p>The API is running (<a href="/docs">/docs</a>, <a href="/api/health">/api/health</a>), but the web
dashboard's static files are missing from <code>frontend/dist</code>.</p>
<p><code>make run</code> builds them before starting the server. To build them by hand (Node.js 20+):</p>
<pre>cd frontend
npm ci
npm run build</pre>
<p>then reload this page.</p>
</body></html>
"""


def mount_web(app: FastAPI, dist: Path | None = None) -> None:
    root = (dist or DIST).resolve()

    async def index(request: Request) -> Response:
        page = root / "index.html"
        if not page.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503, headers={"Cache-Control": "no-store"})
        # index.html names the current hashed bundles: never cached, so a rebuild shows at once.
        return _send(page, request, "no-cache")

    async def asset(name: str, request: Request) -> Response:
        base = (root / "assets").resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise NotFound(f"No asset {name!r}", param="name")
        # Vite puts a content hash in every asset's name: a name's bytes never change.
        return _send(path, request, "public, max-age=31536000, immutable")

    app.add_api_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/assets/{name:path}", asset, methods=["GET", "HEAD"], include_in_schema=False)
    for section in SECTIONS:
        app.add_api_route(f"/{section}", index, methods=["GET", "HEAD"], include_in_schema=False)
        app.add_api_route(f"/{section}/{{rest:path}}", index, methods=["GET", "HEAD"], include_in_schema=False)


def _send(path: Path, request: Request, cache: str) -> Response:
    headers = {"Cache-Control": cache, "Vary": "Accept-Encoding"}
    if path.suffix in COMPRESSIBLE and "gzip" in request.headers.get("accept-encoding", ""):
        st = path.stat()
        body = _gzipped(str(path), st.st_mtime_ns, st.st_size)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(body, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    return FileResponse(path, headers=headers)


@lru_cache(maxsize=64)
def _gzipped(path: str, mtime_ns: int, size: int) -> bytes:
    """A file's gzip bytes, compressed once per version of the file (its mtime and size key the cache)."""
    return gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0)
