"""Property-based API testing: schemathesis generates requests from /openapi.json for every
operation, sent as an authenticated user. No answer may be a 5xx, and every answer must be one the
document declares: its status among the operation's responses, its content type and its body
conforming to that response's schema (errors included). Bounded (a few derandomized examples an
operation, ~15 s a database) to fit CI's time.

Generated ids name nothing, so each example whose path, query or body names a resource is sent again
naming ones that exist (a dataset, a completed and a queued job, a registered model, an endpoint, an
evaluation, an API key, the caller as an admin, a signed file link): success bodies and the
state-dependent errors (409s) are checked too, not only the 404s."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update

from app.auth.models import User
from tests.e2e.conftest import qa_jsonl
from tests.jobs import TINY_ID, insert_job

EXAMPLES = 5
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Known mismatches (operation, check, status), each waiting for its fix; none today.
EXPECTED: set[tuple[str, str, int]] = set()


def seed(client: Any, auth: dict[str, str], session_factory: Any, store: Any) -> list[dict[str, str]]:
    """One resource of each kind; the sets of real names to put in requests (the second with the
    queued job where the first has the completed one, the third with the base-model endpoint)."""
    uid = client.get("/api/auth/me", headers=auth).json()["id"]
    with session_factory() as s:  # an admin, so that PUT .../budget can succeed
        s.execute(update(User).where(User.id == uid).values(is_admin=True))
        s.commit()

    def ok(r: Any) -> dict[str, Any]:
        assert r.status_code < 300, r.text
        return dict(r.json())

    dataset_id = ok(client.post("/api/datasets", headers=auth, files={"file": ("qa.jsonl", qa_jsonl())}))["id"]
    queued = ok(client.post("/api/training-job", headers=auth, json={"dataset_id": dataset_id}))["job_name"]
    job_name = insert_job(session_factory, store, uid, "fuzz-completed", b"not a real tarball").job_name
    model_id = ok(client.post("/api/models", headers=auth,
                              json={"job_name": job_name, "model_name": "fuzz"}))["model_id"]
    endpoint = ok(client.post("/api/deploy-model", headers=auth,
                              json={"job_name": job_name, "model_name": "fuzz"}))["deployment"]["endpoint_name"]
    evaluation_id = ok(client.post("/api/evaluations", headers=auth,
                                   json={"model": job_name, "dataset_id": dataset_id}))["id"]
    base = ok(client.post("/api/deploy-model", headers=auth,  # one serving adapters
                          json={"base_model": TINY_ID, "model_name": "fuzzbase"}))["deployment"]["endpoint_name"]
    key_id = ok(client.post("/api/api-keys", headers=auth, json={"name": "fuzz"}))["id"]
    link = urlsplit(ok(client.get(f"/api/model-download/{job_name}", headers=auth))["download_url"])
    query = {k: v[0] for k, v in parse_qs(link.query).items()}
    known = {"dataset_id": dataset_id, "job_name": job_name, "model_id": model_id, "endpoint_name": endpoint,
             "evaluation_id": evaluation_id, "key_id": key_id, "username": "fuzz", "base_model": TINY_ID,
             "model": "fuzz", "key": link.path.removeprefix("/api/files/"), **query}
    return [known, {**known, "job_name": queued, "model": queued}, {**known, "endpoint_name": base}]


def with_real_names(case: Any, names: dict[str, str]) -> bool:
    """Put existing resources' names where the case has generated ones; whether anything changed."""
    changed = False
    for attr in ("path_parameters", "query", "body"):
        value = getattr(case, attr)
        if isinstance(value, dict) and any(k in names and value[k] != names[k] for k in value):
            setattr(case, attr, {k: names.get(k, v) for k, v in value.items()})
            changed = True
    return changed


def test_responses_conform(app: Any, client: Any, register: Any, session_factory: Any, store: Any) -> None:
    auth = register("fuzz")
    name_sets = seed(client, auth, session_factory, store)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[tuple[str, str, int], str] = {}  # the first of each operation, check and status
    ops: list[Any] = [cast(Any, r).ok() for r in schema.get_all_operations()]
    ops.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: they remove the seeded data

    def send(op: Any, case: Any) -> None:
        try:
            response = case.call(headers=auth)
        except Exception as e:  # noqa: BLE001 - the app answered 500, then the transport re-raised
            failures.setdefault((f"{case.method} {op.path}", "Unhandled exception", 500),
                                f"{case.method} {op.path} -> 500 {type(e).__name__}: {e} "
                                f"| sent {case.path_parameters} {case.query}")
            return
        try:
            case.validate_response(response, checks=CHECKS, headers=auth)
        except FailureGroup as group:
            found: list[Failure] = list(group.exceptions)
        except Failure as failure:
            found = [failure]
        else:
            return
        for f in found:
            key = (f"{case.method} {op.path}", f.title, response.status_code)
            body = "" if case.body is NOT_SET else f" {str(case.body)[:200]}"
            failures.setdefault(key, f"{key[0]} -> {response.status_code} [{f.title}] {f.message.splitlines()[0]} "
                                     f"| sent {case.path_parameters} {case.query}{body} | got {response.text[:300]}")

    def fuzz(op: Any) -> None:
        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            send(op, case)
            for names in name_sets:
                if with_real_names(case, names):
                    send(op, case)

        run()

    for op in ops:
        fuzz(op)
    assert len(ops) > 30
    unexpected = {k: v for k, v in failures.items() if k not in EXPECTED}
    assert not unexpected, "\n\n".join(sorted(unexpected.values()))
