"""The object store seam: a local directory or S3."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from app.errors import NotFound

_KEY_RE = re.compile(r"^users/[0-9a-f-]{36}/(datasets|models|evaluations|endpoints)/[A-Za-z0-9._/-]+$")


def check_key(key: str) -> str:
    """Keys are built only from ids the service created; refuse anything else."""
    if not _KEY_RE.match(key) or ".." in key.split("/") or "//" in key:
        raise ValueError(f"refusing object key {key!r}")
    return key


def dataset_key(user_id: str, dataset_id: str, name: str) -> str:
    return check_key(f"users/{user_id}/datasets/{dataset_id}/{name}")


def model_key(user_id: str, job_name: str, name: str) -> str:
    return check_key(f"users/{user_id}/models/{job_name}/{name}")


def user_prefix(user_id: str) -> str:
    return f"users/{user_id}/"


class ObjectStore(Protocol):
    kind: str

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> int: ...
    def put_file(self, key: str, path: Path) -> int: ...
    def open(self, key: str) -> AbstractContextManager[BinaryIO]: ...
    def download_to(self, key: str, path: Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def signed_url(self, key: str, expires_in: int = 3600) -> str: ...
    def uri(self, key: str) -> str: ...
    def key_from_uri(self, uri: str) -> str | None: ...
    def health(self) -> None: ...


def owned_key_from_uri(store: ObjectStore, uri: str, user_id: str, what: str = "model") -> str:
    """The key a URI names when it lies in the caller's own prefix; 404 otherwise (tenancy)."""
    key = store.key_from_uri(uri)
    if key is None or not key.startswith(user_prefix(user_id)) or not store.exists(key):
        raise NotFound(f"No {what} found at {uri}", param="model_s3_uri")
    return key
