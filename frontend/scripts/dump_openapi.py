"""Write the API's OpenAPI schema, built from the app factory, for the dashboard's typed client.

The client is generated from this file at every build, so a renamed or removed field breaks
`npm run build` (tsc) instead of the page at run time. Runs without a database or a backend:
the schema needs only the routes.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def build_schema() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from app.config import Settings
    from app.main import create_app

    # Nothing is signed here, but outside development the settings need a secret of their own.
    secret = secrets.token_hex(32)
    return create_app(Settings(env="test", database_url="sqlite://", jwt={"secret": secret})).openapi()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "openapi.json")
    schema = build_schema()
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(schema['paths'])} paths)")


if __name__ == "__main__":
    main()
