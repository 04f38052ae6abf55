from __future__ import annotations

import json

from tests.conftest import assert_error

GOOD = "\n".join(json.dumps({"prompt": f"Question {i}?", "response": f"Answer number {i}."}) for i in range(10))


def upload(client, headers, content, filename="data.jsonl", **form):
    return client.post("/api/datasets", headers=headers, files={"file": (filename, content)}, data=form)


class TestUpload:
    def test_valid_jsonl(self, client, register, store):
        h = register()
        r = upload(client, h, GOOD.encode())
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "ready" and body["format"] == "prompt_response"
        rep = body["report"]
        assert rep["is_valid"] and rep["total_examples"] == 10 and rep["valid_examples"] == 10
        assert body["sha256"] and body["size_bytes"] == len(GOOD.encode())
        prev = client.get(f"/api/datasets/{body['id']}/preview?limit=2", headers=h).json()
        assert prev["data"][0] == {"messages": [{"role": "user", "content": "Question 0?"},
                                                {"role": "assistant", "content": "Answer number 0."}]}
        assert len(prev["data"]) == 2

    def test_invalid_is_kept_and_reported_by_line(self, client, register, store):
        h = register()
        content = GOOD.encode() + b'\n{"prompt": "x"\n{"prompt": "", "response": "y"}\n'
        r = upload(client, h, content)
        assert r.status_code == 201
        body = r.json()
        assert body["status"] == "invalid" and not body["report"]["is_valid"]
        lines = {i["line"]: i["code"] for i in body["report"]["issues"]}
        assert lines[11] == "invalid_json" and lines[12] == "empty_field"
        got = client.get(f"/api/datasets/{body['id']}", headers=h).json()
        assert got["status"] == "invalid"
        keys = [k for k in store.list("users/") if f"/datasets/{body['id']}/" in k]
        assert any(k.endswith("/raw") for k in keys)  # the upload is kept even though invalid

    def test_binary_file_is_415_and_kept(self, client, register):
        h = register()
        r = upload(client, h, b"\x89PNG\r\n\x1a\n\x00\x00\x00binary", filename="x.png")
        err = assert_error(r, 415, "unsupported_file_type", "file")
        ds_id = err["details"][0]["dataset_id"]
        assert client.get(f"/api/datasets/{ds_id}", headers=h).json()["status"] == "invalid"

    def test_too_large_is_413(self, client, register, settings):
        h = register()
        settings.max_upload_bytes = 1000
        r = upload(client, h, b"x" * 5000)
        assert_error(r, 413, "payload_too_large")

    def test_token_stats_with_base_model(self, client, register):
        h = register()
        r = upload(client, h, GOOD.encode(), base_model="llmtuner/tiny-llama")
        stats = r.json()["report"]["token_stats"]
        assert stats["base_model"] == "llmtuner/tiny-llama" and stats["max"] > 0
        r2 = client.get(f"/api/datasets/{r.json()['id']}?base_model=llmtuner/tiny-t5", headers=h)
        assert r2.json()["report"]["token_stats"]["base_model"] == "llmtuner/tiny-t5"

    def test_unknown_base_model_is_422(self, client, register):
        assert_error(upload(client, register(), GOOD.encode(), base_model="nope/nope"), 422,
                     "unknown_base_model", "base_model")


class TestTenancyAndDelete:
    def test_other_users_dataset_is_404(self, client, register):
        a, b = register("alice"), register("bob")
        ds = upload(client, a, GOOD.encode()).json()["id"]
        for path in (f"/api/datasets/{ds}", f"/api/datasets/{ds}/preview"):
            assert_error(client.get(path, headers=b), 404)
        assert_error(client.delete(f"/api/datasets/{ds}", headers=b), 404)
        assert client.get("/api/datasets", headers=b).json()["data"] == []
        assert client.delete(f"/api/datasets/{ds}", headers=a).status_code == 204
        assert_error(client.get(f"/api/datasets/{ds}", headers=a), 404)

    def test_list_paginates(self, client, register):
        h = register()
        ids = [upload(client, h, GOOD.encode(), name=f"d{i}").json()["id"] for i in range(3)]
        p1 = client.get("/api/datasets?limit=2", headers=h).json()
        assert p1["has_more"] and len(p1["data"]) == 2
        p2 = client.get(f"/api/datasets?limit=2&after={p1['next_cursor']}", headers=h).json()
        assert not p2["has_more"]
        assert {d["id"] for d in p1["data"] + p2["data"]} == set(ids)
