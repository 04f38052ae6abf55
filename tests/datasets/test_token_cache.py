"""Token statistics on GET /api/datasets/{id}: computed once per (base model, max_length), kept in a
bounded cache in the stored report (issue 25, finding 10)."""

from __future__ import annotations

from typing import Any

import pytest

from app.datasets import service as service_module
from app.datasets.models import Dataset
from app.datasets.service import MAX_CACHED_TOKEN_STATS
from tests.datasets.test_router import GOOD, upload

TINY = "llmtuner/tiny-llama"


@pytest.fixture
def tokenize_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The max_length of every tokenization of a dataset file (a spy on tokens.token_stats)."""
    calls: list[int] = []
    real = service_module.tokens.token_stats

    def spy(f: Any, tok: Any, max_length: int, *a: Any, **kw: Any) -> dict[str, Any]:
        calls.append(max_length)
        return real(f, tok, max_length, *a, **kw)

    monkeypatch.setattr(service_module.tokens, "token_stats", spy)
    return calls


def stored_report(session_factory: Any, ds_id: str) -> dict[str, Any]:
    with session_factory() as s:
        return dict(s.get(Dataset, ds_id).report)


def test_many_max_lengths_keep_the_stored_report_bounded(client, register, session_factory, tokenize_calls):
    h = register()
    ds = upload(client, h, GOOD.encode(), base_model=TINY).json()
    default_length = ds["report"]["token_stats"]["max_length"]
    assert tokenize_calls == [default_length]
    # The upload's statistics are cached: the same model and max_length is not tokenized again.
    got = client.get(f"/api/datasets/{ds['id']}?base_model={TINY}", headers=h).json()
    assert got["report"]["token_stats"] == ds["report"]["token_stats"] and len(tokenize_calls) == 1

    lengths = list(range(16, 66))  # 50 distinct max_length values
    for n in lengths:
        r = client.get(f"/api/datasets/{ds['id']}?base_model={TINY}&max_length={n}", headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["report"]["token_stats"]["max_length"] == n
    assert tokenize_calls[1:] == lengths

    report = stored_report(session_factory, ds["id"])
    kept = [f"{TINY}@{n}" for n in lengths[-MAX_CACHED_TOKEN_STATS:]]
    assert list(report["token_stats_by_model"]) == kept  # bounded, the oldest evicted
    assert report["token_stats"]["max_length"] == default_length  # the stored answer stays the upload's

    # A recent (model, max_length) is served from the cache; an evicted one is computed again.
    before = len(tokenize_calls)
    again = client.get(f"/api/datasets/{ds['id']}?base_model={TINY}&max_length={lengths[-1]}", headers=h).json()
    assert again["report"]["token_stats"] == report["token_stats_by_model"][kept[-1]]
    assert len(tokenize_calls) == before
    client.get(f"/api/datasets/{ds['id']}?base_model={TINY}&max_length={lengths[0]}", headers=h)
    assert tokenize_calls[before:] == [lengths[0]]
    report = stored_report(session_factory, ds["id"])
    assert len(report["token_stats_by_model"]) == MAX_CACHED_TOKEN_STATS
    assert list(report["token_stats_by_model"])[-1] == f"{TINY}@{lengths[0]}"


def test_a_tokenizer_that_fails_to_load_is_not_cached(client, register, session_factory, monkeypatch,
                                                       tokenize_calls):
    h = register()
    ds_id = upload(client, h, GOOD.encode()).json()["id"]

    def offline(*a: Any, **kw: Any) -> str:
        raise OSError("hub unreachable")

    online = service_module.catalog.resolve_source
    monkeypatch.setattr(service_module.catalog, "resolve_source", offline)
    for _ in range(2):
        stats = client.get(f"/api/datasets/{ds_id}?base_model={TINY}", headers=h).json()["report"]["token_stats"]
        assert "tokenizer unavailable" in stats["error"]
    assert not stored_report(session_factory, ds_id).get("token_stats_by_model")
    monkeypatch.setattr(service_module.catalog, "resolve_source", online)  # back online: computed, then cached
    stats = client.get(f"/api/datasets/{ds_id}?base_model={TINY}", headers=h).json()["report"]["token_stats"]
    assert "error" not in stats and stats["max"] > 0 and len(tokenize_calls) == 1
    assert list(stored_report(session_factory, ds_id)["token_stats_by_model"]) == [f"{TINY}@{stats['max_length']}"]
