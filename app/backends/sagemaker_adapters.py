"""The cloud shape of many adapters on one endpoint: SageMaker inference components.

One SageMaker endpoint per base model, created from an endpoint config without a model (instances
only, with an execution role), holds:

  * a base inference component: the LMI container (DJL Serving with vLLM) loading the base model
    with LoRA enabled (`OPTION_ENABLE_LORA`, at most `OPTION_MAX_LORAS` adapters per batch), and
  * one adapter inference component per adapter (`Specification.BaseInferenceComponentName` = the
    base's, `Container.ArtifactUrl` = the adapter's model.tar.gz). It uses the base's compute; it is
    created and deleted while the endpoint runs (attach/detach without a restart).

A request names the component: `invoke_endpoint(EndpointName, InferenceComponentName=...)` (the
base's for the base model). The base component can only be created once the endpoint is InService,
so `describe` creates it then, and the adapters once the base is InService.

What was not run on real AWS (moto has no inference components; they are tested with botocore's
Stubber): the LMI image's LoRA loading from a model.tar.gz, its answer shape, and streaming
through invoke_endpoint_with_response_stream. See docs/openai.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from app.backends.base import BackendEndpointStatus, EndpointSpec

VARIANT = "AllTraffic"
LMI_IMAGE = "763104351884.dkr.ecr.{region}.amazonaws.com/djl-inference:0.31.0-lmi13.0.0-cu124"
MAX_LORAS_PER_BATCH = 8


def component_name(endpoint: str, adapter: str | None) -> str:
    """A valid inference component name (63 characters at most) for the base or an adapter."""
    raw = f"{endpoint}-base" if adapter is None else f"{endpoint}-{adapter}"
    return re.sub(r"[^a-zA-Z0-9-]", "-", raw)[:63].strip("-")


def endpoint_config_request(spec: EndpointSpec, role_arn: str) -> dict[str, Any]:
    """Instances only: the models come as inference components."""
    return {"EndpointConfigName": spec.endpoint_name, "ExecutionRoleArn": role_arn,
            "ProductionVariants": [{"VariantName": VARIANT, "InstanceType": spec.instance_type,
                                    "InitialInstanceCount": spec.instance_count,
                                    "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}]}


def base_component_request(endpoint: str, base_source: str, image: str, memory_mb: int = 8192,
                           hf_token: str | None = None) -> dict[str, Any]:
    """LMI reads `HF_MODEL_ID` as a hub id or an s3:// prefix of the weights; `HF_TOKEN` reaches a
    gated hub model."""
    env = {"OPTION_ROLLING_BATCH": "vllm", "OPTION_ENABLE_LORA": "true",
           "OPTION_MAX_LORAS": str(MAX_LORAS_PER_BATCH), "OPTION_MAX_CPU_LORAS": "64", "HF_MODEL_ID": base_source}
    if hf_token:
        env["HF_TOKEN"] = hf_token
    return {"InferenceComponentName": component_name(endpoint, None), "EndpointName": endpoint,
            "VariantName": VARIANT, "RuntimeConfig": {"CopyCount": 1},
            "Specification": {"Container": {"Image": image, "Environment": env}, "ComputeResourceRequirements": {
                "NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": memory_mb}}}


def adapter_component_request(endpoint: str, adapter: str, artifact_url: str) -> dict[str, Any]:
    return {"InferenceComponentName": component_name(endpoint, adapter), "EndpointName": endpoint,
            "Specification": {"BaseInferenceComponentName": component_name(endpoint, None),
                              "Container": {"ArtifactUrl": artifact_url}}}


def invoke_request(endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    """InvokeEndpoint's arguments: the component of the payload's adapter ("__base__" or none: the base's)."""
    adapter = payload.get("adapter")
    return {"EndpointName": endpoint, "InferenceComponentName": component_name(
                endpoint, None if adapter in (None, "__base__") else adapter),
            "ContentType": "application/json", "Accept": "application/json", "Body": json.dumps(invoke_body(payload))}


def invoke_body(payload: dict[str, Any]) -> dict[str, Any]:
    """Our model server's request as LMI takes it: a chat as OpenAI messages, else text generation."""
    p = dict(payload.get("parameters") or {})
    params = {k: p[k] for k in ("max_new_tokens", "temperature", "top_p", "seed") if k in p}
    if "stop" in p:
        params["stop"] = p["stop"] if isinstance(p["stop"], list) else [p["stop"]]
    if "messages" in payload:
        chat = {"messages": payload["messages"], "max_tokens": params.pop("max_new_tokens", 256), **params}
        return chat
    return {"inputs": payload.get("inputs", ""), "parameters": {**params, "details": True}}


def parse_answer(body: dict[str, Any]) -> dict[str, Any]:
    """An LMI answer (text generation or chat completion) in our model server's shape."""
    if "choices" in body:
        choice, usage = body["choices"][0], body.get("usage") or {}
        return {"generated_text": choice["message"]["content"], "details": {
            "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0),
            "finish_reason": "length" if choice.get("finish_reason") == "length" else "stop"}}
    details = body.get("details") or {}
    return {"generated_text": body.get("generated_text", ""), "details": {
        "prompt_tokens": len(details.get("prefill") or []), "completion_tokens": details.get("generated_tokens", 0),
        "finish_reason": "length" if details.get("finish_reason") == "length" else "stop"}}


class SageMakerAdapterEndpoints:
    """deploy / describe / attach_adapter / detach_adapter / invoke / delete for base-model endpoints."""

    name = "sagemaker"

    def __init__(self, sm: Any, runtime: Any, store: Any, role_arn: str, region: str, image: str | None = None,
                 hf_token: Callable[[], str | None] | None = None):
        self.sm, self.runtime, self.store, self.role_arn = sm, runtime, store, role_arn
        self.image = image or LMI_IMAGE.format(region=region)
        self.hf_token = hf_token or (lambda: None)

    def deploy(self, spec: EndpointSpec) -> dict[str, Any]:
        self.sm.create_endpoint_config(**endpoint_config_request(spec, self.role_arn))
        self.sm.create_endpoint(EndpointName=spec.endpoint_name, EndpointConfigName=spec.endpoint_name)
        return {"endpoint_name": spec.endpoint_name, "base_source": spec.base_model_source or "",
                "pending_adapters": {n: self.store.uri(k) for n, k in spec.adapters.items()}, "components": {}}

    def describe(self, handle: dict[str, Any]) -> BackendEndpointStatus:
        name = handle["endpoint_name"]
        ep = self.sm.describe_endpoint(EndpointName=name)
        if ep["EndpointStatus"] != "InService":
            return BackendEndpointStatus(ep["EndpointStatus"], ep.get("FailureReason"))
        components = dict(handle.get("components") or {})
        base = component_name(name, None)
        if base not in components.values():
            self.sm.create_inference_component(**base_component_request(name, handle["base_source"], self.image,
                                                                        hf_token=self.hf_token()))
            components["__base__"] = base
            return BackendEndpointStatus("Creating", handle_update={"components": components})
        ic = self.sm.describe_inference_component(InferenceComponentName=base)
        if ic["InferenceComponentStatus"] != "InService":
            status = "Failed" if ic["InferenceComponentStatus"] == "Failed" else "Creating"
            return BackendEndpointStatus(status, ic.get("FailureReason"), handle_update={"components": components})
        for adapter, url in (handle.get("pending_adapters") or {}).items():
            self.sm.create_inference_component(**adapter_component_request(name, adapter, url))
            components[adapter] = component_name(name, adapter)
        return BackendEndpointStatus("InService", handle_update={"components": components, "pending_adapters": {}})

    def attach_adapter(self, handle: dict[str, Any], name: str, key: str) -> None:
        """A new adapter component on the running endpoint (SageMaker refuses it until the base is up)."""
        self.sm.create_inference_component(**adapter_component_request(handle["endpoint_name"], name,
                                                                       self.store.uri(key)))

    def detach_adapter(self, handle: dict[str, Any], name: str) -> None:
        self.sm.delete_inference_component(InferenceComponentName=component_name(handle["endpoint_name"], name))

    def invoke(self, handle: dict[str, Any], payload: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        r = self.runtime.invoke_endpoint(**invoke_request(handle["endpoint_name"], payload))
        out = json.loads(r["Body"].read())
        return [parse_answer(out[0] if isinstance(out, list) else out)]

    def delete(self, handle: dict[str, Any]) -> None:
        """Adapter components first (they live in the base's), then the base, the endpoint, its config."""
        name = handle["endpoint_name"]
        listed = self.sm.list_inference_components(EndpointNameEquals=name, MaxResults=100)["InferenceComponents"]
        names = [c["InferenceComponentName"] for c in listed]
        base = component_name(name, None)
        for ic in [n for n in names if n != base] + [n for n in names if n == base]:
            self.sm.delete_inference_component(InferenceComponentName=ic)
        self.sm.delete_endpoint(EndpointName=name)
        self.sm.delete_endpoint_config(EndpointConfigName=name)
