"""client.datasets: upload (validated on arrival), list, get, preview, delete."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from llmtuner._core import Op, ProgressFn, Request, Resource, Upload, async_op, seg, sync_op
from llmtuner.types import Dataset, DatasetPreview


class _DatasetOps(Resource):
    def _upload(self, path: str | os.PathLike[str], *, name: str | None = None, format: str | None = None,
                prompt_column: str | None = None, response_column: str | None = None,
                base_model: str | None = None, max_length: int | None = None,
                on_progress: ProgressFn | None = None) -> Op[Dataset]:
        """Upload a file (JSONL, JSON, CSV/TSV, txt). The dataset comes back with its validation report
        (`.report`: `is_valid`, counts, `issues` with line numbers); an invalid file is kept and reported,
        not refused. `base_model` adds token statistics for that model's tokenizer."""
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"No such file: {file}")
        form = {"name": name, "format": format, "prompt_column": prompt_column,
                "response_column": response_column, "base_model": base_model, "max_length": max_length}
        body = yield Request("POST", "/api/datasets", data={k: str(v) for k, v in form.items() if v is not None},
                             upload=Upload(file, on_progress))
        return Dataset.model_validate(body)

    def _get(self, dataset_id: str, *, base_model: str | None = None) -> Op[Dataset]:
        """One dataset and its report (token statistics for `base_model` when given)."""
        body = yield Request("GET", f"/api/datasets/{seg(dataset_id)}", params={"base_model": base_model})
        return Dataset.model_validate(body)

    def _preview(self, dataset_id: str, limit: int = 5) -> Op[DatasetPreview]:
        """The first records as converted to the training format."""
        body = yield Request("GET", f"/api/datasets/{seg(dataset_id)}/preview", params={"limit": limit})
        return DatasetPreview.model_validate(body)

    def _delete(self, dataset_id: str) -> Op[None]:
        """Delete a dataset and its files (ConflictError while a running job uses it)."""
        yield Request("DELETE", f"/api/datasets/{seg(dataset_id)}")


class Datasets(_DatasetOps):
    upload = sync_op(_DatasetOps._upload)
    get = sync_op(_DatasetOps._get)
    preview = sync_op(_DatasetOps._preview)
    delete = sync_op(_DatasetOps._delete)

    def list(self, *, limit: int | None = None) -> Iterator[Dataset]:
        """The caller's datasets, newest first, fetched page by page as you iterate."""
        return self._client._paginate("/api/datasets", {}, Dataset, limit)  # type: ignore[no-any-return]


class AsyncDatasets(_DatasetOps):
    upload = async_op(_DatasetOps._upload)
    get = async_op(_DatasetOps._get)
    preview = async_op(_DatasetOps._preview)
    delete = async_op(_DatasetOps._delete)

    def list(self, *, limit: int | None = None) -> AsyncIterator[Dataset]:
        return self._client._paginate("/api/datasets", {}, Dataset, limit)  # type: ignore[no-any-return]
