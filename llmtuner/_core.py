"""What Client and AsyncClient share: auth, retries, error mapping, and the operations' protocol.

Each operation (`jobs.wait`, `datasets.upload`, ...) is written once, as a generator that yields what
it needs done (a `Request`, a `Sleep`, a `Download`) and gets the answer back. Client runs it with
httpx.Client and time.sleep, AsyncClient with httpx.AsyncClient and asyncio.sleep, so the two behave
the same by construction."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from llmtuner import __version__
from llmtuner.errors import APIConnectionError, APITimeoutError, error_from_response
from llmtuner.types import Token

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
PAGE_SIZE = 100  # the API's largest page
MAX_RETRY_AFTER = 60.0  # a longer Retry-After (e.g. a login lock-out) is raised, not slept through

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
ProgressFn = Callable[[int, int], None]  # (bytes done, bytes in total or 0 when unknown)


@dataclass
class Upload:
    path: Path
    on_progress: ProgressFn | None = None
    form_field: str = "file"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    upload: Upload | None = None
    idempotency_key: str | None = None
    authenticated: bool = True
    # Safe to send again when the first try may have reached the server (reads, deletes, keyed creates).
    replayable: bool | None = None

    def __post_init__(self) -> None:
        if self.replayable is None:
            self.replayable = self.method in ("GET", "HEAD", "PUT", "DELETE") or self.idempotency_key is not None


@dataclass
class Raw:
    """One HTTP exchange, no retries (what a `Request` becomes)."""

    kwargs: dict[str, Any]
    upload: Upload | None = None


@dataclass
class Sleep:
    seconds: float


@dataclass
class Download:
    url: str
    dest: Path
    on_progress: ProgressFn | None = None


Op = Generator[Request | Raw | Sleep | Download, Any, T]


def new_idempotency_key() -> str:
    return f"llmtuner-{uuid.uuid4()}"


def backoff(attempt: int) -> float:
    """Exponential with jitter: ~0.5, 1, 2, 4, 8 s."""
    return float(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2))


def retry_delay(req: Request, attempt: int, max_retries: int, *, response: httpx.Response | None = None,
                error: Exception | None = None) -> float | None:
    """How long to wait before trying `req` again, or None to give up now."""
    if attempt >= max_retries:
        return None
    if error is not None:
        # A refused connection never reached the server: any request may be sent again.
        never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
        return backoff(attempt) if never_sent or req.replayable else None
    assert response is not None
    status = response.status_code
    if status == 429:
        if error_from_response(response).code == "budget_exceeded":
            return None  # waiting does not bring a spent budget back
    elif status != 503 or not req.replayable:
        return None
    after = response.headers.get("Retry-After")
    if after is not None:
        try:
            seconds = float(after)
        except ValueError:
            seconds = backoff(attempt)
        return seconds if seconds <= MAX_RETRY_AFTER else None
    return backoff(attempt)


class _ProgressReader:
    """A file that reports how much of it was read (httpx streams multipart files in chunks)."""

    def __init__(self, f: BinaryIO, total: int, on_progress: ProgressFn) -> None:
        self._f, self._total, self._done, self._on_progress = f, total, 0, on_progress

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n)
        self._done += len(chunk)
        self._on_progress(self._done, self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        if offset == 0 and whence == 0:
            self._done = 0
        return self._f.seek(offset, whence)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def opened_upload(upload: Upload | None) -> Iterator[dict[str, Any] | None]:
    """The `files=` argument for httpx, the file opened afresh for every try."""
    if upload is None:
        yield None
        return
    with open(upload.path, "rb") as f:
        body: Any = f
        if upload.on_progress is not None:
            body = _ProgressReader(f, os.fstat(f.fileno()).st_size, upload.on_progress)
        yield {upload.form_field: (upload.path.name, body, "application/octet-stream")}


def result(resp: httpx.Response) -> Any:
    """The JSON body of a success, None for an empty one; the typed error otherwise."""
    if resp.is_error:
        raise error_from_response(resp)
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


def connection_error(e: Exception, base_url: str) -> APIConnectionError:
    if isinstance(e, httpx.TimeoutException):
        return APITimeoutError(f"Request to {base_url} timed out: {e}")
    return APIConnectionError(f"Could not reach the LLM Tuner API at {base_url}: {e}")


class BaseClient:
    """Settings and the request protocol; the subclasses add the I/O."""

    def __init__(self, base_url: str | None, api_key: str | None, username: str | None, password: str | None,
                 timeout: float, max_retries: int) -> None:
        self.base_url = (base_url or os.environ.get("LLMTUNER_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.username = username or os.environ.get("LLMTUNER_USERNAME")
        self._password = password or os.environ.get("LLMTUNER_PASSWORD")
        if self.username is None or self._password is None:
            self.username, self._password = None, None
        # An API key (`llmt_...`) or a token from POST /api/auth/token: both go as `Bearer`.
        self._token: str | None = api_key or (None if self._password else os.environ.get("LLMTUNER_API_KEY"))
        self.timeout = timeout
        self.max_retries = max_retries
        self.headers = {"User-Agent": f"llmtuner-python/{__version__}"}

    @property
    def _client(self) -> BaseClient:  # the client's own operations (usage, me...) run like a resource's
        return self

    def _login_op(self) -> Op[None]:
        body = yield Request("POST", "/api/auth/token", data={"username": self.username, "password": self._password},
                             authenticated=False)
        self._token = Token.model_validate(body).access_token

    def _send_op(self, req: Request) -> Op[Any]:
        """One request with its retries, logging in first (and again once on 401) with a password."""
        attempt, relogged = 0, False
        while True:
            if req.authenticated and self._token is None and self._password is not None:
                yield from self._login_op()
            try:
                resp = yield Raw(self._request_kwargs(req), req.upload)
            except httpx.TransportError as e:
                delay = retry_delay(req, attempt, self.max_retries, error=e)
                if delay is None:
                    raise connection_error(e, self.base_url) from e
            else:
                if resp.status_code == 401 and req.authenticated and self._password is not None and not relogged:
                    relogged, self._token = True, None  # the token expired: log in again, once
                    continue
                delay = retry_delay(req, attempt, self.max_retries, response=resp)
                if delay is None:
                    return result(resp)
            attempt += 1
            yield Sleep(delay)

    def _request_kwargs(self, req: Request) -> dict[str, Any]:
        headers = dict(self.headers)
        if req.authenticated and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if req.idempotency_key:
            headers["Idempotency-Key"] = req.idempotency_key
        params = {k: v for k, v in (req.params or {}).items() if v is not None} or None
        return {"method": req.method, "url": req.path, "params": params, "json": req.json, "data": req.data,
                "headers": headers}


class Resource:
    def __init__(self, client: Any) -> None:
        self._client = client


def sync_op(fn: Callable[Concatenate[Any, P], Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """A resource's method run to completion by the (blocking) Client."""

    @functools.wraps(fn)
    def run(self: Resource, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._client._run(fn(self, *args, **kwargs))  # type: ignore[no-any-return]

    return run


def async_op(fn: Callable[Concatenate[Any, P], Op[T]]) -> Callable[Concatenate[Any, P], Awaitable[T]]:
    """A resource's method as a coroutine of the AsyncClient."""

    @functools.wraps(fn)
    async def run(self: Resource, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._client._arun(fn(self, *args, **kwargs))  # type: ignore[no-any-return]

    return run


def seg(value: str) -> str:
    """A path segment, escaped (a name typed by a user never reaches another route)."""
    return quote(str(value), safe="")


def ident(obj: Any, attr: str) -> str:
    """An id given as a string or as the object that has it (a Dataset, a TrainingJob...)."""
    return obj if isinstance(obj, str) else str(getattr(obj, attr))


def paged(path: str, params: dict[str, Any], model: type[M], limit: int | None) -> Generator[Request | M, Any, None]:
    """A list route's items, page after page (`?limit=&after=<cursor>`): yields the Request for each page
    (and gets the page back), then that page's items; stops after `limit` items."""
    after, n = None, 0
    while True:
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - n)
        page = yield Request("GET", path, params={**params, "limit": size, "after": after})
        for item in page["data"]:
            yield model.model_validate(item)
            n += 1
            if limit is not None and n >= limit:
                return
        if not page["has_more"]:
            return
        after = page["next_cursor"]


def advance(gen: Generator[T, Any, None], value: Any) -> T | None:
    """The generator's next step after sending `value`, or None when it is done."""
    try:
        return gen.send(value)
    except StopIteration:
        return None
