"""S3ObjectStore against moto: streams (multipart too), encryption, listing, URIs and tenancy, and a
presigned link fetched over HTTP from a ThreadedMotoServer."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from app.aws import client
from app.config import AWSSettings, Settings
from app.errors import BackendError, NotFound
from app.storage import owned_key_from_uri
from app.storage import s3 as s3_module
from app.storage.s3 import S3ObjectStore
from tests.backends import moto_sagemaker as moto_sm
from tests.settings import make_test_settings

BUCKET = "llmtuner-store-test"
USER = "0b5f3a52-6c1e-4d2b-9a87-3f0c2e1d4b6a"
OTHER = "9d7e2c41-1a3b-4c5d-8e9f-0a1b2c3d4e5f"
DATASET = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def key(name: str, user: str = USER) -> str:
    return f"users/{user}/datasets/{DATASET}/{name}"


def make_settings(tmp_path: Path, **aws_kw: Any) -> Settings:
    return make_test_settings(data_dir=tmp_path / "data", storage="s3", database_url="sqlite://",
                              aws=AWSSettings(region="us-east-1", s3_bucket=BUCKET, **aws_kw))


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with moto_sm.moto_aws(monkeypatch):
        c = client(make_settings(tmp_path), "s3")
        c.create_bucket(Bucket=BUCKET)
        yield c


@pytest.fixture
def store(s3: Any) -> S3ObjectStore:
    return S3ObjectStore(s3, BUCKET)


class OneWayStream:
    """A stream that can only be read forward, like an upload's body."""

    def __init__(self, size: int, chunk: int = 1 << 20) -> None:
        self.left, self.chunk, self.sha = size, chunk, hashlib.sha256()
        self._n = 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = bytes((self._n + i) % 251 for i in range(min(n, 256))) * (n // 256 + 1)
        data = data[:n]
        self._n += n
        self.left -= n
        self.sha.update(data)
        return data


def test_put_stream_open_exists_size_and_sse(store: S3ObjectStore, s3: Any) -> None:
    body = b'{"prompt": "hi", "completion": "there"}\n' * 10
    assert store.put_stream(key("train.jsonl"), io.BytesIO(body), content_type="application/jsonl") == len(body)
    head = s3.head_object(Bucket=BUCKET, Key=key("train.jsonl"))
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/jsonl"
    assert store.open(key("train.jsonl")).read() == body
    assert store.exists(key("train.jsonl")) and store.size(key("train.jsonl")) == len(body)
    assert not store.exists(key("missing.jsonl"))
    assert not store.exists("not/a/valid/key")  # refused keys do not exist
    with pytest.raises(NotFound):
        store.open(key("missing.jsonl"))
    with pytest.raises(ValueError):
        store.put_stream("users/../etc/passwd", io.BytesIO(b"x"))


def test_sse_kms_when_a_key_is_set(s3: Any) -> None:
    store = S3ObjectStore(s3, BUCKET, kms_key_id=KMS)
    store.put_stream(key("secret.jsonl"), io.BytesIO(b"{}\n"))
    head = s3.head_object(Bucket=BUCKET, Key=key("secret.jsonl"))
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == KMS


def test_a_large_stream_goes_up_as_multipart_with_sse(store: S3ObjectStore, s3: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The packaged config switches to multipart at 16 MiB in 16 MiB parts; the same code path at
    # S3's smallest part size keeps the test fast.
    assert s3_module.TRANSFER.multipart_threshold == 16 * 2**20
    monkeypatch.setattr(s3_module, "TRANSFER", TransferConfig(multipart_threshold=5 * 2**20,
                                                              multipart_chunksize=5 * 2**20, max_concurrency=4))
    size = 11 * 2**20 + 123
    stream = OneWayStream(size)
    assert store.put_stream(key("big.jsonl"), stream) == size  # type: ignore[arg-type]
    head = s3.head_object(Bucket=BUCKET, Key=key("big.jsonl"))
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert head["ServerSideEncryption"] == "AES256"
    got = hashlib.sha256()
    body = store.open(key("big.jsonl"))
    while chunk := body.read(1 << 20):
        got.update(chunk)
    assert got.hexdigest() == stream.sha.hexdigest()
    dest = store.download_to(key("big.jsonl"), tmp_path / "dl" / "big.jsonl")
    assert dest.stat().st_size == size


def test_list_delete_and_delete_prefix(store: S3ObjectStore) -> None:
    mine = [key(f"f{i}.jsonl") for i in range(5)]
    theirs = key("f0.jsonl", user=OTHER)
    for k in [*mine, theirs]:
        store.put_stream(k, io.BytesIO(b"x"))
    assert sorted(store.list(f"users/{USER}/datasets/{DATASET}/")) == sorted(mine)
    store.delete(mine[0])
    assert not store.exists(mine[0])
    assert store.delete_prefix(f"users/{USER}/") == 4
    assert list(store.list(f"users/{USER}/")) == []
    assert store.exists(theirs)  # another user's prefix is untouched


def test_uri_key_from_uri_and_tenancy(store: S3ObjectStore) -> None:
    k = f"users/{USER}/models/job-1/output/model.tar.gz"
    store.put_stream(k, io.BytesIO(b"tar"))
    uri = store.uri(k)
    assert uri == f"s3://{BUCKET}/{k}"
    assert store.key_from_uri(uri) == k
    assert store.key_from_uri(f"s3://another-bucket/{k}") is None  # another bucket is never ours
    assert store.key_from_uri(f"s3://{BUCKET}/users/{USER}/../x") is None
    assert store.key_from_uri(f"s3://{BUCKET}/elsewhere/model.tar.gz") is None
    assert owned_key_from_uri(store, uri, USER) == k
    for bad_uri, user in ((uri, OTHER), (f"s3://another-bucket/{k}", USER),
                          (f"s3://{BUCKET}/users/{USER}/models/job-2/output/model.tar.gz", USER)):
        with pytest.raises(NotFound):
            owned_key_from_uri(store, bad_uri, user)


def test_health(store: S3ObjectStore, s3: Any) -> None:
    store.health()
    with pytest.raises(BackendError) as exc:
        S3ObjectStore(s3, "no-such-bucket-here").health()
    assert exc.value.code == "storage_error"


def test_presigned_url_is_fetched_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_sm.moto_server(monkeypatch) as url:
        settings = make_settings(tmp_path, endpoint_url=url)
        s3 = client(settings, "s3")
        s3.create_bucket(Bucket=BUCKET)
        store = S3ObjectStore(s3, BUCKET)
        k = f"users/{USER}/models/job-1/output/model.tar.gz"
        payload = os.urandom(64 * 1024)
        store.put_stream(k, io.BytesIO(payload))
        link = store.signed_url(k, expires_in=600)
        assert link.startswith(f"{url}/{BUCKET}/{k}?") and "X-Amz-Signature=" in link and "X-Amz-Expires=600" in link
        r = httpx.get(link, timeout=10)  # no credentials: the signature in the link is the permission
        assert r.status_code == 200 and r.content == payload
