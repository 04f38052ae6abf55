"""Build the dashboard into frontend/dist when it is missing or stale; `make run`, the browser test
and the bench call it.

Stale means: the dashboard's sources or the API's OpenAPI schema changed since the last build
(a hash of both is kept in dist/.build-hash), so an API change rebuilds the typed client and
type-checks the pages against it. `npm ci` runs when node_modules is missing or older than the
committed package-lock.json. Exit status 1 when the build fails; without Node.js it says so and
exits 0 (the API runs without the dashboard).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FRONTEND = Path(__file__).resolve().parents[1]
DIST = FRONTEND / "dist"
STAMP = DIST / ".build-hash"
SOURCES = ("src", "index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts",
           "openapi-ts.config.ts")
GENERATED = FRONTEND / "src" / "client"


def schema() -> str:
    sys.path.insert(0, str(FRONTEND / "scripts"))
    from dump_openapi import build_schema

    return json.dumps(build_schema(), indent=1, sort_keys=True) + "\n"


def source_hash(openapi: str) -> str:
    h = hashlib.sha256(openapi.encode())
    for name in SOURCES:
        root = FRONTEND / name
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            if GENERATED in p.parents:
                continue
            h.update(str(p.relative_to(FRONTEND)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=FRONTEND, check=True)


def main() -> int:
    openapi = schema()
    want = source_hash(openapi)
    if STAMP.is_file() and STAMP.read_text().strip() == want and (DIST / "index.html").is_file():
        print("dashboard build is up to date (frontend/dist)")
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print("Node.js/npm not found: the dashboard is not built (the API still runs; / says how to build it)",
              file=sys.stderr)
        return 0
    lock = FRONTEND / "package-lock.json"
    marker = FRONTEND / "node_modules" / ".package-lock.json"  # npm rewrites it at every install
    if not marker.is_file() or marker.stat().st_mtime < lock.stat().st_mtime:
        run(npm, "ci", "--no-audit", "--no-fund")
    (FRONTEND / "openapi.json").write_text(openapi)
    try:
        run(npm, "run", "build:web")
    except subprocess.CalledProcessError as e:
        print(f"dashboard build failed ({e.returncode}); see the errors above", file=sys.stderr)
        return 1
    STAMP.write_text(want + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LLMTUNER_ENV", "test")
    sys.exit(main())
