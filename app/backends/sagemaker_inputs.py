"""What a SageMaker job or endpoint needs besides the request itself: a base model that is not on
the Hugging Face hub, and the Hugging Face token for gated models.

A base model in a local folder goes up to S3 once, under a content-addressed prefix in the user's
area (`users/{user}/models/_base_models/{sha256}/`), and the same prefix serves every training job,
evaluation and endpoint that uses it; a base already in S3 is used where it is. The token setting
holds either the token itself or the ARN of an AWS Secrets Manager secret that holds it; it reaches
the containers as HF_TOKEN and is never logged nor returned by the API.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from app import aws
from app.config import Settings
from app.errors import BackendError, ValidationFailed

# (folder, its files' names, sizes and mtimes) -> content digest: hashing a 7B model's 14 GB once
# per process is enough.
_DIGESTS: dict[tuple[str, str], str] = {}
_TOKENS: dict[str, tuple[float, str]] = {}
_LOCK = threading.Lock()
TOKEN_CACHE_SECONDS = 300


def is_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().is_dir()


def is_hub_id(source: str | None) -> bool:
    return bool(source) and not str(source).startswith("s3://") and not is_local_path(str(source))


def _files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def folder_digest(folder: Path) -> str:
    """sha256 over the folder's relative file names and contents (cached by names, sizes, mtimes)."""
    files = _files(folder)
    stamp = json.dumps([(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    key = (str(folder.resolve()), hashlib.sha256(stamp.encode()).hexdigest())
    with _LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    for p in files:
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                fh.update(block)
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + fh.digest())
    with _LOCK:
        _DIGESTS[key] = h.hexdigest()
    return h.hexdigest()


def upload_base_folder(store: Any, user_id: str, folder: Path, param: str = "base_model") -> str:
    """The store key prefix (ending in "/") of `folder`'s copy in S3, uploaded when missing.

    A marker object beside the prefix (not inside it, so no channel downloads it) is written last:
    a copy without it was interrupted and is uploaded again.
    """
    if not (folder / "config.json").is_file():
        raise ValidationFailed(f"Base model folder {folder.name!r} has no config.json",
                               code="base_model_not_found", param=param)
    digest = folder_digest(folder)
    # Beside the scripts' sourcedir (models/_source/): outside any one job, so deleting a job keeps it.
    prefix = f"users/{user_id}/models/_base_models/{digest[:32]}/"
    marker = prefix.rstrip("/") + ".complete"
    if store.exists(marker):
        return prefix
    for p in _files(folder):
        try:
            store.put_file(prefix + p.relative_to(folder).as_posix(), p)
        except ValueError as e:
            raise ValidationFailed(f"Base model file {p.name!r} has a name that cannot be stored: {e}",
                                   code="base_model_not_found", param=param) from e
    store.put_stream(marker, io.BytesIO(digest.encode()))
    return prefix


def _is_secret_arn(value: str) -> bool:
    return value.startswith("arn:") and ":secretsmanager:" in value


def hf_token(settings: Settings) -> str | None:
    """The Hugging Face token for the containers, or None when none is set.

    A Secrets Manager ARN is read with the service's own credentials (secretsmanager:GetSecretValue)
    and cached for a few minutes; the secret holds the token as plain text or as JSON with an
    "HF_TOKEN" (or "token") key.
    """
    raw = settings.aws.hf_token
    value = raw.get_secret_value().strip() if raw is not None else ""
    if not value:
        return None
    if not _is_secret_arn(value):
        return value
    with _LOCK:
        cached = _TOKENS.get(value)
    if cached and time.monotonic() - cached[0] < TOKEN_CACHE_SECONDS:
        return cached[1]
    try:
        secret = aws.client(settings, "secretsmanager").get_secret_value(SecretId=value).get("SecretString") or ""
    except (ClientError, BotoCoreError) as e:
        code = e.response.get("Error", {}).get("Code") if isinstance(e, ClientError) else type(e).__name__
        raise BackendError(f"The Hugging Face token secret (LLMTUNER_AWS__HF_TOKEN) could not be read: {code}",
                           code="hf_token_unavailable") from None
    token = secret.strip()
    if token.startswith("{"):
        try:
            data = json.loads(token)
        except ValueError:
            data = {}
        token = str(data.get("HF_TOKEN") or data.get("token") or "") if isinstance(data, dict) else ""
    if not token:
        raise BackendError("The Hugging Face token secret (LLMTUNER_AWS__HF_TOKEN) is empty or has no "
                           "HF_TOKEN key", code="hf_token_unavailable")
    with _LOCK:
        _TOKENS[value] = (time.monotonic(), token)
    return token
