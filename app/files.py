"""Signed download links of the local object store (no token: the signature is the credential)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from app.errors import NotFound

router = APIRouter(tags=["files"])


@router.get("/api/files/{key:path}", response_class=FileResponse, responses={
    200: {"description": "The file's bytes",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    401: {"description": "The link's signature is invalid, or the link has expired"}})
async def download(request: Request, key: str, expires: int = Query(...),
                   signature: str = Query(..., max_length=128)) -> FileResponse:
    """Fetch an object through a signed, expiring link."""
    store = request.app.state.store
    if not hasattr(store, "verify"):
        raise NotFound("No such route")
    try:
        path = store.verify(key, expires, signature)
    except ValueError as e:
        raise NotFound("No such file") from e
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")
