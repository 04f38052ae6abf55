"""The OpenAPI document declares the API's real error shape and the error statuses routes return."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_error


def test_errors_are_documented_as_they_are_sent(client: Any, register: Any) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and schemas["Error"]["required"] == ["error"]
    assert "HTTPValidationError" not in str(spec)
    create = spec["paths"]["/api/training-job"]["post"]["responses"]
    assert {"201", "400", "401", "404", "409", "413", "422", "429", "500"} <= set(create)
    assert create["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "401" not in spec["paths"]["/api/health"]["get"]["responses"]
    assert "503" in spec["paths"]["/api/health"]["get"]["responses"]
    assert "401" in spec["paths"]["/api/auth/token"]["post"]["responses"]
    # A 422 as sent has the documented keys.
    err = assert_error(client.post("/api/training-job", headers=register(), json={}), 422)
    assert set(err) == set(schemas["Error"]["properties"]["error"]["required"])


def test_every_operation_declares_its_errors(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert {"400", "404", "422", "500"} <= set(op["responses"]), (method, path)
