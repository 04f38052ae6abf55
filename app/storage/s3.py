"""S3 (or any S3-compatible store) through boto3. Call from a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from app.errors import BackendError, NotFound
from app.storage import check_key

# Streams larger than 16 MiB go up as multipart uploads in 16 MiB parts.
TRANSFER = TransferConfig(multipart_threshold=16 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)


class S3ObjectStore:
    kind = "s3"

    def __init__(self, client: Any, bucket: str, kms_key_id: str | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id

    def _extra(self, content_type: str | None = None) -> dict[str, str]:
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id} if self.kms_key_id else {
            "ServerSideEncryption": "AES256"
        }
        if content_type:
            extra["ContentType"] = content_type
        return extra

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> int:
        check_key(key)
        counter = _CountingReader(stream)
        try:
            self.client.upload_fileobj(counter, self.bucket, key, ExtraArgs=self._extra(content_type),
                                       Config=TRANSFER)
        except ClientError as e:
            raise _backend_error(e, "upload") from e
        return counter.count

    def put_file(self, key: str, path: Path) -> int:
        with open(path, "rb") as f:
            return self.put_stream(key, f)

    def open(self, key: str) -> BinaryIO:
        check_key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"Object {key} not found") from e
            raise _backend_error(e, "read") from e
        return body  # type: ignore[no-any-return]

    def download_to(self, key: str, path: Path) -> Path:
        check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, key, str(path), Config=TRANSFER)
        except ClientError as e:
            raise _backend_error(e, "download") from e
        return path

    def exists(self, key: str) -> bool:
        try:
            check_key(key)
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ValueError:
            return False
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _backend_error(e, "head") from e

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=check_key(key))["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]}
            )
        return len(keys)

    def list(self, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def signed_url(self, key: str, expires_in: int = 3600) -> str:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=expires_in
        ))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{check_key(key)}"

    def key_from_uri(self, uri: str) -> str | None:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            return None  # another bucket is never ours
        try:
            return check_key(uri[len(prefix):])
        except ValueError:
            return None

    def health(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            raise _backend_error(e, "head_bucket") from e


class _CountingReader:
    def __init__(self, stream: BinaryIO) -> None:
        self._s = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        b = self._s.read(n)
        self.count += len(b)
        return b


def _backend_error(e: ClientError, action: str) -> BackendError:
    err = e.response.get("Error", {})
    return BackendError(
        f"Storage {action} failed: {err.get('Message') or err.get('Code')}", code="storage_error",
        details=[{"aws_code": err.get("Code"), "aws_message": err.get("Message")}],
    )
