"""boto3 clients built from settings: adaptive retries, one optional endpoint URL for every service."""

from __future__ import annotations

import threading
from typing import Any

from app.config import Settings

_session: Any = None
_lock = threading.Lock()


def client(settings: Settings, service: str, **config: Any) -> Any:
    """A client on one shared boto3 Session (building a Session per client costs 0.5-1 s)."""
    import boto3
    from botocore.config import Config

    global _session
    cfg = Config(
        region_name=settings.aws.region,
        retries={"mode": "adaptive", "max_attempts": 8},
        connect_timeout=10, read_timeout=70,
        signature_version="s3v4" if service == "s3" else None,
    ).merge(Config(**config))
    with _lock:  # Session.client() is not thread-safe
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(service, endpoint_url=settings.aws.endpoint_url, config=cfg)
