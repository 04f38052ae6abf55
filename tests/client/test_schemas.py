"""The SDK's types mirror the live server's /openapi.json: same fields, same required fields, all the
way down the nested objects, so a change to the API that the client does not follow fails here."""

from __future__ import annotations

import typing
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from llmtuner import types as t
from tests.client.conftest import LiveServer

# Each top-level type, and where the API defines it: (method, path, status) of a response, or
# (method, path, "body.<field>") for part of a request body.
ROUTES: dict[type[t.APIModel], tuple[str, str, str]] = {
    t.User: ("get", "/api/auth/me", "200"),
    t.Token: ("post", "/api/auth/token", "200"),
    t.Dataset: ("get", "/api/datasets/{dataset_id}", "200"),
    t.DatasetPreview: ("get", "/api/datasets/{dataset_id}/preview", "200"),
    t.TrainingConfig: ("post", "/api/training-job", "body.hyperparameters"),
    t.TrainingJob: ("get", "/api/training-job/{job_name}", "200"),
    t.MetricPoint: ("get", "/api/training-job/{job_name}/metrics", "200"),
    t.Event: ("get", "/api/training-job/{job_name}/events", "200"),
    t.JobActions: ("get", "/api/training-job-actions/{job_name}", "200"),
    t.ModelDownload: ("get", "/api/model-download/{job_name}", "200"),
    t.CostEstimate: ("post", "/api/cost-estimate", "200"),
    t.Deployment: ("post", "/api/deploy-model", "202"),
    t.Endpoint: ("get", "/api/endpoint-status/{endpoint_name}", "200"),
    t.GenerationParameters: ("post", "/api/invoke-model", "body.parameters"),
    t.InvokeResponse: ("post", "/api/invoke-model", "200"),
    t.RegisteredModel: ("get", "/api/models/{model_id}", "200"),
    t.Evaluation: ("get", "/api/evaluations/{evaluation_id}", "200"),
    t.Usage: ("get", "/api/usage", "200"),
    t.ApiKeyCreated: ("post", "/api/api-keys", "201"),
}
# Objects the API leaves untyped (`object`) that the SDK types all the same.
UNTYPED_IN_API = {(t.Dataset, "report"), (t.TrainingJob, "progress")}


@pytest.fixture(scope="module")
def spec(live_server: LiveServer) -> dict[str, Any]:
    return dict(httpx.get(f"{live_server.url}/openapi.json").json())


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow $ref, arrays and `X | null` down to the object schema."""
    while True:
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        elif schema.get("type") == "array":
            schema = schema["items"]
        elif "anyOf" in schema:
            schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        elif "allOf" in schema and len(schema["allOf"]) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The APIModel inside `X`, `X | None`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def compare(spec: dict[str, Any], model: type[BaseModel], schema: dict[str, Any], where: str) -> list[str]:
    schema = resolve(spec, schema)
    props = schema.get("properties", {})
    problems = []
    fields = set(model.model_fields)
    if fields != set(props):
        problems.append(f"{where} ({model.__name__}): only in the SDK {sorted(fields - set(props))}, "
                        f"only in the API {sorted(set(props) - fields)}")
    if model is not t.TrainingConfig and not issubclass(model, t.GenerationParameters):  # request parts: all optional
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        if required != set(schema.get("required", [])):
            problems.append(f"{where} ({model.__name__}): required in the SDK {sorted(required)}, "
                            f"in the API {sorted(schema.get('required', []))}")
    for name, f in model.model_fields.items():
        nested = model_in(f.annotation)
        if nested is not None and name in props and (model, name) not in UNTYPED_IN_API:
            problems += compare(spec, nested, props[name], f"{where}.{name}")
    return problems


@pytest.mark.parametrize("model", list(ROUTES), ids=lambda m: m.__name__)
def test_types_match_openapi(spec: dict[str, Any], model: type[t.APIModel]) -> None:
    method, path, where = ROUTES[model]
    assert path in spec["paths"], f"the SDK calls {method.upper()} {path}, which the API no longer serves"
    op = spec["paths"][path][method]
    if where.startswith("body."):
        body = op["requestBody"]["content"]["application/json"]["schema"]
        schema = resolve(spec, body)["properties"][where.removeprefix("body.")]
    else:
        schema = op["responses"][where]["content"]["application/json"]["schema"]
    assert compare(spec, model, schema, f"{method.upper()} {path}") == []


def test_untyped_objects_match_the_server() -> None:
    """The report and progress objects are typed by the SDK only: check them against the server's code."""
    import dataclasses

    from app.datasets.report import Issue, Report

    assert set(t.DatasetReport.model_fields) <= {f.name for f in dataclasses.fields(Report)}
    assert set(t.Issue.model_fields) == {f.name for f in dataclasses.fields(Issue)}
