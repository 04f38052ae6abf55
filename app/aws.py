"""boto3 clients built from settings: adaptive retries, one optional endpoint URL for every service."""

from __future__ import annotations

from typing import Any

from app.config import Settings


def client(settings: Settings, service: str) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        region_name=settings.aws.region,
        retries={"mode": "adaptive", "max_attempts": 8},
        connect_timeout=10, read_timeout=70,
        signature_version="s3v4" if service == "s3" else None,
    )
    return boto3.session.Session().client(service, endpoint_url=settings.aws.endpoint_url, config=cfg)
