"""The catalogue routes answer what their response models declare, and the OpenAPI document
describes them (the dashboard's typed client is generated from it)."""

from __future__ import annotations

from typing import Any

from app.training.schemas import BaseModelList, InstanceTypeList


def test_base_models_and_instance_types_match_their_schemas(client: Any, register: Any) -> None:
    h = register("catalog")
    models = BaseModelList.model_validate(client.get("/api/base-models", headers=h).json())
    tiny = next(m for m in models.data if m.id == "llmtuner/tiny-llama")
    assert tiny.offline and tiny.task == "causal_lm" and "q_proj" in (tiny.default_target_modules or [])
    assert all("source" not in m.model_dump() for m in models.data)  # (a server path, for custom models)
    types = InstanceTypeList.model_validate(client.get("/api/instance-types", headers=h).json())
    local = next(t for t in types.data if t.name == "local")
    assert local.available and types.backend == "local" and types.currency == "USD"

    paths = client.get("/openapi.json").json()["paths"]
    for path, model in (("/api/base-models", "BaseModelList"), ("/api/instance-types", "InstanceTypeList")):
        schema = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}
