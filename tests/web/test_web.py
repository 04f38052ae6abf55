"""The dashboard's static files at / beside the API (app/web.py), without a browser."""

from __future__ import annotations

import gzip
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import install_error_handlers
from app.web import mount_web


def web_client(dist: Path) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/thing")
    def thing() -> dict[str, str]:
        return {"ok": "yes"}

    mount_web(app, dist)
    return TestClient(app)


def test_without_a_build_the_pages_say_how_to_build_it(tmp_path: Path) -> None:
    c = web_client(tmp_path / "missing")
    for path in ("/", "/jobs", "/jobs/llm-tune-x", "/datasets/abc"):
        r = c.get(path)
        assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
        assert "npm ci" in r.text and "npm run build" in r.text and "make run" in r.text
    assert c.get("/api/thing").json() == {"ok": "yes"}  # the API works without it


def test_serves_the_build_with_client_side_routes(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><div id=root></div>")
    js = "console.log('dashboard');" * 200
    (tmp_path / "assets" / "index-abc123.js").write_text(js)
    (tmp_path.parent / "secret.txt").write_text("no")
    c = web_client(tmp_path)
    for path in ("/", "/jobs", "/jobs/llm-tune-alice-1", "/endpoints/x-endpoint", "/usage"):
        r = c.get(path)
        assert r.status_code == 200 and "id=root" in r.text, path
        assert r.headers["cache-control"] == "no-cache"
    r = c.get("/assets/index-abc123.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.text == js  # (the client decodes it)
    assert r.headers["content-encoding"] == "gzip" and "immutable" in r.headers["cache-control"]
    assert r.headers["content-type"].startswith("text/javascript")
    assert int(r.headers["content-length"]) == len(gzip.compress(js.encode(), mtime=0, compresslevel=9))
    plain = c.get("/assets/index-abc123.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers and plain.text == js


def test_only_the_dashboards_own_paths_are_taken(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html>")
    c = web_client(tmp_path)
    for path in ("/api/nope", "/v1/chat/nowhere", "/assets/missing.js", "/assets/%2e%2e/%2e%2e/secret.txt",
                 "/assets/../index.html"):
        r = c.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found", path
    assert c.post("/v1/chat/completions").status_code == 404  # not swallowed by a catch-all
    assert c.post("/jobs").status_code == 405
    assert "/jobs/{rest}" not in c.get("/openapi.json").json()["paths"]


def test_the_app_mounts_the_dashboard_after_the_api(client: TestClient) -> None:
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/api/unknown").json()["error"]["code"] == "not_found"
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert not any(p == "/" or p.startswith("/jobs") for p in client.get("/openapi.json").json()["paths"])
