"""Datasets: upload (streamed to the store), validate + convert in one pass, token statistics."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import catalog
from app.auth.models import User
from app.config import Settings
from app.datasets import tokens, validation
from app.datasets.formats import DatasetFileError
from app.datasets.models import Dataset
from app.db import new_id
from app.errors import AppError, Conflict, NotFound, PayloadTooLarge
from app.pagination import paginate
from app.statuses import JOB_ACTIVE
from app.storage import ObjectStore, dataset_key, user_prefix
from app.training.models import TrainingJob

RAW, CANONICAL = "raw", "train.jsonl"
# Token statistics kept in a dataset's report, one per (base model, max_length), the oldest dropped
# first: asking for many max_length values neither grows the stored report nor re-tokenizes a recent one.
MAX_CACHED_TOKEN_STATS = 8


class _Hashing:
    """Reads through, counting and hashing; refuses to go past the size limit."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f, self.limit, self.size, self.sha = f, limit, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.size += len(b)
        if self.size > self.limit:
            raise PayloadTooLarge(f"The upload is larger than the limit of {self.limit} bytes", param="file")
        self.sha.update(b)
        return b


def ready_dataset(session: Session, user_id: str, dataset_id: str) -> Dataset:
    """The caller's dataset, valid and converted: 404 when not theirs, 409 naming it when invalid."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or ds.user_id != user_id:
        raise NotFound(f"No dataset {dataset_id!r}", param="dataset_id", code="dataset_not_found")
    if ds.status != "ready" or not ds.canonical_key:
        raise Conflict(f"Dataset {dataset_id!r} ({ds.name}) is invalid: fix the issues in its validation "
                       "report and upload it again", param="dataset_id", code="dataset_invalid",
                       details=(ds.report.get("issues") or [])[:10])
    return ds


class DatasetService:
    def __init__(self, session: Session, settings: Settings, store: ObjectStore, user: User) -> None:
        self.session, self.settings, self.store, self.user = session, settings, store, user

    def owned(self, dataset_id: str) -> Dataset:
        ds = self.session.get(Dataset, dataset_id)
        if ds is None or ds.user_id != self.user.id:
            raise NotFound(f"No dataset {dataset_id!r}", param="dataset_id", code="dataset_not_found")
        return ds

    def create(self, upload: BinaryIO, filename: str, name: str | None, fmt: str | None,
               prompt_column: str | None, response_column: str | None, base_model: str | None,
               max_length: int | None) -> Dataset:
        model = catalog.base_model(self.settings, base_model) if base_model else None
        ds_id = new_id()
        raw_key = dataset_key(self.user.id, ds_id, RAW)
        reader = _Hashing(upload, self.settings.max_upload_bytes)
        self.store.put_stream(raw_key, cast(BinaryIO, reader))  # kept whatever the validation says (it only reads)
        ds = Dataset(id=ds_id, user_id=self.user.id, name=(name or filename)[:255], filename=filename[:255],
                     status="invalid", size_bytes=reader.size, sha256=reader.sha.hexdigest(), raw_key=raw_key,
                     options={"format": fmt, "prompt_column": prompt_column, "response_column": response_column})
        failure: DatasetFileError | None = None
        tmp = Path(tempfile.mkdtemp(prefix="dataset-"))
        try:
            upload.seek(0)
            try:
                with open(tmp / CANONICAL, "wb") as out:
                    # The upload is a file on disk by now (Starlette spools anything over 1 MiB to
                    # a temporary file): large JSONL is read from it by worker processes.
                    report = validation.validate_and_convert(
                        upload, out, filename=filename, format=fmt, prompt_column=prompt_column,
                        response_column=response_column, workers=self.settings.dataset_worker_count,
                        parallel_min_bytes=self.settings.dataset_parallel_min_bytes).to_dict()
            except DatasetFileError as e:
                failure = e
                report = {"is_valid": False, "format": None, "total_examples": 0, "valid_examples": 0,
                          "issues": [{"line": None, "field": "file", "code": e.code, "message": str(e),
                                      "severity": "error"}]}
            if report.get("valid_examples"):
                ds.canonical_key = dataset_key(self.user.id, ds_id, CANONICAL)
                self.store.put_file(ds.canonical_key, tmp / CANONICAL)
                if model is not None:
                    with open(tmp / CANONICAL, "rb") as f:
                        report["token_stats"] = stats = self._token_stats(f, model, max_length)
                    if "error" not in stats:  # the GET for the same model and max_length reads it back
                        report["token_stats_by_model"] = {_stats_key(model, max_length): stats}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ds.report, ds.format = report, report.get("format")
        ds.num_examples = int(report.get("valid_examples") or 0)
        ds.status = "ready" if report.get("is_valid") else "invalid"
        self.session.add(ds)
        self.session.commit()
        if failure is not None:
            raise AppError(str(failure), code=failure.code, status_code=failure.status_code,
                           param="format" if failure.code == "unknown_format" else "file",
                           details=[{"dataset_id": ds.id, "status": ds.status,
                                     "note": "the upload was kept; delete it or upload a fixed file"}])
        return ds

    def _token_stats(self, f: BinaryIO, model: dict[str, Any], max_length: int | None) -> dict[str, Any]:
        limit = int(max_length or model["max_length"])
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(catalog.resolve_source(self.settings, model))
        except Exception as e:  # noqa: BLE001 - no tokenizer (offline hub) is reported, not fatal
            return {"base_model": model["id"], "error": f"tokenizer unavailable: {type(e).__name__}: {e}"[:500]}
        stats = tokens.token_stats(f, tok, limit)
        return {"base_model": model["id"], "max_length": limit, **stats}

    def token_stats_for(self, ds: Dataset, base_model: str, max_length: int | None) -> Dataset:
        """The dataset with `token_stats` for this model and max_length in its report (for this answer:
        the stored `token_stats` stay the upload's); computed once, then read from the report's cache."""
        model = catalog.base_model(self.settings, base_model)
        cache = dict(ds.report.get("token_stats_by_model") or {})
        key = _stats_key(model, max_length)
        stats = cache.get(key)
        if stats is None and ds.canonical_key:
            with self.store.open(ds.canonical_key) as f:
                stats = self._token_stats(f, model, max_length)
            if "error" not in stats:  # a tokenizer that failed to load (offline hub) is tried again next time
                cache[key] = stats
                for old in list(cache)[:-MAX_CACHED_TOKEN_STATS]:  # insertion order: oldest first
                    del cache[old]
                ds.report = {**ds.report, "token_stats_by_model": cache}
                self.session.commit()
        if stats is not None:
            ds.report = {**ds.report, "token_stats": stats}  # the answer only: never committed
        return ds

    def list_datasets(self, limit: int, after: str | None) -> tuple[list[Dataset], bool, str | None]:
        return paginate(self.session, select(Dataset).where(Dataset.user_id == self.user.id), Dataset, limit, after)

    def preview(self, ds: Dataset, limit: int) -> list[dict[str, Any]]:
        if not ds.canonical_key:
            return []
        with self.store.open(ds.canonical_key) as f:
            return validation.preview(f, limit)

    def delete(self, dataset_id: str) -> None:
        ds = self.owned(dataset_id)
        running = self.session.scalar(select(TrainingJob.job_name).where(
            TrainingJob.dataset_id == ds.id, TrainingJob.status.in_(JOB_ACTIVE)))
        if running:
            raise Conflict(f"Dataset {dataset_id!r} is used by the running job {running!r}; stop it first",
                           code="dataset_in_use", param="dataset_id")
        # The row first: a failure after it leaves unreferenced files, never a row naming removed ones.
        prefix = f"{user_prefix(self.user.id)}datasets/{ds.id}/"
        self.session.delete(ds)
        self.session.commit()
        self.store.delete_prefix(prefix)


def _stats_key(model: dict[str, Any], max_length: int | None) -> str:
    return f"{model['id']}@{max_length or model['max_length']}"
