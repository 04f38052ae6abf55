"""A directory as object store; signed links are HMAC tokens served by the app."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from app.errors import NotFound, Unauthorized
from app.storage import check_key

CHUNK = 1024 * 1024


class LocalObjectStore:
    kind = "local"

    def __init__(self, root: Path, signing_key: bytes, public_base_url: str) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signing_key = signing_key
        self._base = public_base_url.rstrip("/")

    def _path(self, key: str) -> Path:
        check_key(key)
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root):
            raise ValueError(f"refusing object key {key!r}")
        return p

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> int:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".upload-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def put_file(self, key: str, path: Path) -> int:
        with open(path, "rb") as f:
            return self.put_stream(key, f)

    def open(self, key: str) -> BinaryIO:
        p = self._path(key)
        if not p.is_file():
            raise NotFound(f"Object {key} not found")
        return open(p, "rb")

    def download_to(self, key: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.open(key) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        return path

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except ValueError:
            return False

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for k in keys:
            self.delete(k)
        return len(keys)

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        start = base if base.is_dir() else base.parent
        if not start.exists():
            return
        for p in sorted(start.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and rel.startswith(prefix) and not p.name.startswith(".upload-"):
                yield rel

    # Signed links ------------------------------------------------------------------------
    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, key: str, expires_in: int = 3600) -> str:
        check_key(key)
        expires = int(time.time()) + expires_in
        query = urlencode({"expires": expires, "signature": self._sign(key, expires)})
        return f"{self._base}/api/files/{quote(key)}?{query}"

    def verify(self, key: str, expires: int, signature: str) -> Path:
        good = self._sign(key, expires)
        # compare_digest refuses non-ASCII str: compare bytes (a forged link is 401, never a 500).
        if not hmac.compare_digest(good.encode(), signature.encode("utf-8", "surrogatepass")):
            raise Unauthorized("The download link's signature is invalid", code="invalid_signature")
        if expires < time.time():
            raise Unauthorized("The download link has expired; ask for a new one", code="link_expired")
        p = self._path(key)
        if not p.is_file():
            raise NotFound("The file behind this link no longer exists")
        return p

    def uri(self, key: str) -> str:
        return f"local://{check_key(key)}"

    def key_from_uri(self, uri: str) -> str | None:
        if not uri.startswith("local://"):
            return None
        try:
            return check_key(uri[len("local://"):])
        except ValueError:
            return None

    def health(self) -> None:
        """Write, read back and remove a file of this check's own: concurrent checks never race."""
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".health-") as probe:
            probe.write(b"ok")
            probe.flush()
            if Path(probe.name).read_bytes() != b"ok":
                raise OSError("the object store did not read back what it wrote")
