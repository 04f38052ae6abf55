"""Property-based API testing: schemathesis generates requests from /openapi.json for every
operation, sent as an authenticated user; no answer may be a 5xx. Bounded (a few examples an
operation, derandomized) to fit CI's time."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.conftest import qa_jsonl

EXAMPLES = 6
# Model servers (/v1) and signed file links are exercised by their own tests; deletes would empty
# the fixture's data for the operations after them.
SKIP_PREFIXES = ("/v1/", "/api/files/")


def test_no_server_errors(app: Any, client: Any, register: Any) -> None:
    auth = register("fuzz")
    client.post("/api/datasets", headers=auth, files={"file": ("qa.jsonl", qa_jsonl())})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    server_errors: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.startswith(SKIP_PREFIXES) or op.method.upper() == "DELETE":
            continue
        operations += 1

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call(headers=auth)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                     f"{response.text[:300]}")

        run()
    assert operations > 20
    assert server_errors == []
