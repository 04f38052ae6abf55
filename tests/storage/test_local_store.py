"""LocalObjectStore: a directory as object store, and its signed links served by the app without a token."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from app.errors import NotFound
from app.storage import check_key, dataset_key, model_key, owned_key_from_uri
from app.storage.local import LocalObjectStore
from tests.conftest import assert_error

USER = str(uuid.uuid4())
OTHER = str(uuid.uuid4())


def key(name: str = "model.tar.gz", user: str = USER) -> str:
    return f"users/{user}/models/job-x/output/{name}"


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# --- storage operations ---------------------------------------------------------------------

def test_put_open_exists_size(store: LocalObjectStore) -> None:
    k = key()
    assert not store.exists(k)
    assert store.put_stream(k, io.BytesIO(b"weights" * 1000)) == 7000
    assert store.exists(k) and store.size(k) == 7000
    with store.open(k) as f:
        assert f.read() == b"weights" * 1000
    assert store.local_path(k) == store.root / k
    # Overwrite replaces the whole object.
    store.put_stream(k, io.BytesIO(b"v2"))
    with store.open(k) as f:
        assert f.read() == b"v2"


def test_put_stream_in_chunks_larger_than_one_read(store: LocalObjectStore) -> None:
    data = bytes(range(256)) * (5 * 1024 * 1024 // 256 + 3)  # > several 1 MiB chunks
    assert store.put_stream(key("big.bin"), io.BytesIO(data)) == len(data)
    with store.open(key("big.bin")) as f:
        assert f.read() == data


def test_put_file_and_download_to(store: LocalObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_text('{"prompt": "a", "completion": "b"}\n')
    k = dataset_key(USER, str(uuid.uuid4()), "train.jsonl")
    assert store.put_file(k, src) == src.stat().st_size
    out = store.download_to(k, tmp_path / "deep" / "copy.jsonl")
    assert out.read_text() == src.read_text()


def test_failed_upload_leaves_nothing(store: LocalObjectStore) -> None:
    class Broken(io.RawIOBase):
        calls = 0

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("client went away")
            return b"x" * 1024

    k = key("partial.bin")
    with pytest.raises(OSError):
        store.put_stream(k, Broken())  # type: ignore[arg-type]
    assert not store.exists(k)
    assert not list((store.root / k).parent.iterdir()), "no temporary file left behind"


def test_open_missing_is_not_found(store: LocalObjectStore) -> None:
    with pytest.raises(NotFound):
        store.open(key("nope"))


def test_list_and_delete_prefix(store: LocalObjectStore) -> None:
    keys = [key("a.bin"), key("b.bin"), f"users/{USER}/models/job-y/output/c.bin", key("a.bin", user=OTHER)]
    for k in keys:
        store.put_stream(k, io.BytesIO(b"1"))
    # An upload in progress (temporary file) is never listed.
    (store.root / f"users/{USER}/models/job-x/output/.upload-123").write_bytes(b"partial")
    assert list(store.list(f"users/{USER}/models/job-x/")) == [key("a.bin"), key("b.bin")]
    assert set(store.list(f"users/{USER}/")) == set(keys[:3])
    assert list(store.list(f"users/{USER}/models/job-x/output/a")) == [key("a.bin")]  # a partial name
    assert list(store.list(f"users/{USER}/datasets/")) == []
    assert store.delete_prefix(f"users/{USER}/models/job-x/") == 2
    assert not store.exists(key("a.bin")) and store.exists(keys[2]) and store.exists(keys[3])
    store.delete(keys[2])
    store.delete(keys[2])  # deleting twice is fine
    assert list(store.list(f"users/{USER}/")) == []
    assert store.exists(keys[3]), "another user's objects are untouched"


# --- keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [
    "../etc/passwd",
    "/etc/passwd",
    f"/users/{USER}/models/job-x/model.tar.gz",
    f"users/{USER}/models/../../../etc/passwd",
    f"users/{USER}/models/job-x/../../{OTHER}/models/x",
    f"users/{USER}/models/..",
    f"users/{USER}/models//x",
    f"users/{USER}/other/x",
    "users/not-a-uuid/models/x",
    f"users/{USER}/models/job x/model",
    f"users/{USER}/models/job-x/\x00",
    f"users/{USER}/models/",
    "",
])
def test_keys_outside_the_rule_are_refused(store: LocalObjectStore, bad: str) -> None:
    with pytest.raises(ValueError):
        check_key(bad)
    with pytest.raises(ValueError):
        store.put_stream(bad, io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        store.open(bad)
    with pytest.raises(ValueError):
        store.signed_url(bad)
    with pytest.raises(ValueError):
        store.uri(bad)
    assert store.exists(bad) is False
    assert not (store.root.parent / "etc").exists()


def test_key_builders() -> None:
    d = str(uuid.uuid4())
    assert dataset_key(USER, d, "train.jsonl") == f"users/{USER}/datasets/{d}/train.jsonl"
    assert model_key(USER, "job-1", "output/model.tar.gz") == f"users/{USER}/models/job-1/output/model.tar.gz"
    with pytest.raises(ValueError):
        model_key(USER, "../x", "y")


def test_uri_round_trip(store: LocalObjectStore) -> None:
    k = key()
    assert store.uri(k) == f"local://{k}"
    assert store.key_from_uri(store.uri(k)) == k
    assert store.key_from_uri(f"s3://bucket/{k}") is None
    assert store.key_from_uri("local://../etc/passwd") is None
    assert store.key_from_uri(f"local:///{k}") is None


def test_owned_key_from_uri_keeps_tenants_apart(store: LocalObjectStore) -> None:
    mine, theirs = key(), key(user=OTHER)
    store.put_stream(mine, io.BytesIO(b"1"))
    store.put_stream(theirs, io.BytesIO(b"1"))
    assert owned_key_from_uri(store, store.uri(mine), USER) == mine
    with pytest.raises(NotFound):
        owned_key_from_uri(store, store.uri(theirs), USER)
    with pytest.raises(NotFound):
        owned_key_from_uri(store, store.uri(key("missing")), USER)


def test_health(store: LocalObjectStore) -> None:
    store.health()
    assert not (store.root / ".health").exists()


def test_root_is_created(tmp_path: Path) -> None:
    s = LocalObjectStore(tmp_path / "a" / "b", b"k", "http://x/")
    assert s.root.is_dir()
    assert s.signed_url(key()).startswith("http://x/api/files/")


# --- signed links through the app -----------------------------------------------------------

def test_signed_url_downloads_without_a_token(client, store: LocalObjectStore) -> None:
    k = key()
    store.put_stream(k, io.BytesIO(b"adapter weights"))
    url = store.signed_url(k, expires_in=600)
    assert url.startswith("http://testserver/api/files/users/")
    r = client.get(path_and_query(url))  # no Authorization header
    assert r.status_code == 200, r.text
    assert r.content == b"adapter weights"
    assert r.headers["content-type"] == "application/octet-stream"
    assert "model.tar.gz" in r.headers["content-disposition"]


def test_signed_url_expires(client, store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    k = key()
    store.put_stream(k, io.BytesIO(b"x"))
    assert_error(client.get(path_and_query(store.signed_url(k, expires_in=-1))), 401, "link_expired")
    # A valid link stops working once its time has passed.
    url = store.signed_url(k, expires_in=60)
    assert client.get(path_and_query(url)).status_code == 200
    now = time.time()
    monkeypatch.setattr("app.storage.local.time.time", lambda: now + 61)
    assert_error(client.get(path_and_query(url)), 401, "link_expired")


def test_tampered_signature_is_rejected(client, store: LocalObjectStore) -> None:
    k = key()
    store.put_stream(k, io.BytesIO(b"x"))
    url = store.signed_url(k)
    q = parse_qs(urlsplit(url).query)
    sig = q["signature"][0]
    forged = ("0" if sig[0] != "0" else "1") + sig[1:]
    path = urlsplit(url).path
    assert_error(client.get(f"{path}?{urlencode({'expires': q['expires'][0], 'signature': forged})}"),
                 401, "invalid_signature")
    # Extending the expiry invalidates the signature too.
    later = int(q["expires"][0]) + 10**6
    assert_error(client.get(f"{path}?{urlencode({'expires': later, 'signature': sig})}"), 401, "invalid_signature")
    # Another store's key (another deployment's secret) signs nothing here.
    other = LocalObjectStore(store.root, b"another-signing-key", "http://testserver")
    assert_error(client.get(path_and_query(other.signed_url(k))), 401, "invalid_signature")


def test_tampered_key_is_rejected(client, store: LocalObjectStore) -> None:
    mine, theirs = key(), key(user=OTHER)
    store.put_stream(mine, io.BytesIO(b"mine"))
    store.put_stream(theirs, io.BytesIO(b"theirs"))
    url = store.signed_url(mine)
    swapped = url.replace(USER, OTHER)
    r = client.get(path_and_query(swapped))
    assert_error(r, 401, "invalid_signature")
    assert b"theirs" not in r.content


def test_link_checks_and_odd_paths_never_500(client, store: LocalObjectStore) -> None:
    k = key()
    store.put_stream(k, io.BytesIO(b"x"))
    url = store.signed_url(k)
    store.delete(k)
    assert_error(client.get(path_and_query(url)), 404)  # the object is gone
    assert_error(client.get(urlsplit(url).path), 422)  # no signature at all
    traversal = store.signed_url(key()).replace("/job-x/output/", "/job-x/../../../../")
    assert client.get(path_and_query(traversal)).status_code in (401, 404)
    assert_error(client.get("/api/files/etc/passwd?expires=9999999999&signature=00"), 401, "invalid_signature")


def test_links_are_refused_when_the_store_is_not_local(client, app) -> None:
    class S3Like:
        pass

    app.state.store = S3Like()
    assert_error(client.get(f"/api/files/{key()}?expires=1&signature=00"), 404)
