"""Holes a black-box probe found: each answered with a 4xx (or a header), never a 500."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

from app.evaluation.reconcile import public_results
from tests.conftest import assert_error


def test_a_non_ascii_signature_is_refused_not_crashed(client: Any) -> None:
    r = client.get("/api/files/users/00000000-0000-0000-0000-000000000000/datasets/x/a.jsonl",
                   params={"expires": 9999999999, "signature": "é" * 64})
    assert 400 <= r.status_code < 500, r.text


def test_a_cursor_with_a_naive_timestamp_is_400(client: Any, register: Any) -> None:
    h = register()
    cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00|abc").decode()
    for path in ("/api/training-jobs", "/api/datasets"):
        assert_error(client.get(path, params={"after": cursor}, headers=h), 400, "invalid_cursor", "after")


def test_concurrent_health_checks_all_pass(client: Any) -> None:
    store = client.app.state.store
    errors: list[BaseException] = []

    def check() -> None:
        for _ in range(50):
            try:
                store.health()
            except BaseException as e:  # noqa: BLE001 - collected
                errors.append(e)

    threads = [threading.Thread(target=check) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []


def test_a_chunked_body_over_the_limit_is_413(client: Any, register: Any) -> None:
    h = register()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is met while it streams
        yield b'{"dataset_id": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = client.post("/api/training-job", headers={**h, "Content-Type": "application/json"}, content=chunks())
    assert_error(r, 413, "payload_too_large")


def test_security_headers_and_no_store_on_credentials(client: Any, register: Any) -> None:
    h = register()
    r = client.post("/api/auth/token", data={"username": "alice", "password": "correct horse battery"})
    assert r.headers["cache-control"] == "no-store"
    for resp in (r, client.get("/api/auth/me", headers=h), client.get("/api/health")):
        assert resp.headers["x-content-type-options"] == "nosniff" and resp.headers["x-frame-options"] == "DENY"
    assert "no-store" not in client.get("/api/health").headers.get("cache-control", "")


def test_evaluation_results_name_no_server_paths() -> None:
    report = {"base_model": "/srv/llmtuner/data/base_models/tiny-llama",
              "model": {"model_dir": "/tmp/x/model", "kind": "lora", "base_model": "/srv/x"},
              "tuned": {"rouge_l": 0.5}, "samples": [{"prediction": "/help me please", "file": "/srv/a/b.json"}]}
    out = public_results(report, "llmtuner/tiny-llama")
    assert out == {"base_model": "llmtuner/tiny-llama", "model": {"kind": "lora", "base_model": "llmtuner/tiny-llama"},
                   "tuned": {"rouge_l": 0.5}, "samples": [{"prediction": "/help me please", "file": "b.json"}]}
