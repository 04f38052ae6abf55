"""Many adapters on one SageMaker endpoint (app/backends/sagemaker_adapters.py), with botocore's
Stubber: moto implements no inference components, nor endpoint configs without a model."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
from botocore.response import StreamingBody
from botocore.stub import Stubber

from app.backends.base import EndpointSpec
from app.backends.sagemaker_adapters import SageMakerAdapterEndpoints, component_name

ROLE = "arn:aws:iam::123456789012:role/llmtuner-sagemaker"
IMAGE = "lmi-image"
ARN_EP = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/shared-endpoint"
ARN_IC = "arn:aws:sagemaker:us-east-1:123456789012:inference-component/shared-endpoint-base"


class Store:
    def uri(self, key: str) -> str:
        return f"s3://bucket/{key}"


def spec() -> EndpointSpec:
    return EndpointSpec(endpoint_name="shared-endpoint", user_id="u1", model_uri="base-model:Qwen/Qwen2.5-0.5B",
                        model_key="", base_model_source="Qwen/Qwen2.5-0.5B", instance_type="ml.g5.xlarge",
                        adapters={"support": "users/u1/models/j1/output/model.tar.gz"})


def client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def test_the_endpoint_holds_instances_only() -> None:
    """(Stubbed too: moto's create_endpoint_config needs a ModelName in every variant, which an
    endpoint of inference components has none of.)"""
    sm = client("sagemaker")
    backend = SageMakerAdapterEndpoints(sm, None, Store(), ROLE, "us-east-1", IMAGE)
    with Stubber(sm) as s:
        config_arn = ARN_EP.replace("endpoint/", "endpoint-config/")
        s.add_response("create_endpoint_config", {"EndpointConfigArn": config_arn}, {
            "EndpointConfigName": "shared-endpoint", "ExecutionRoleArn": ROLE, "ProductionVariants": [{
                "VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1,
                "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}]})
        s.add_response("create_endpoint", {"EndpointArn": ARN_EP},
                       {"EndpointName": "shared-endpoint", "EndpointConfigName": "shared-endpoint"})
        handle = backend.deploy(spec())
        s.add_response("describe_endpoint", {"EndpointName": "shared-endpoint", "EndpointArn": ARN_EP,
                                             "EndpointStatus": "Creating", "CreationTime": 0, "LastModifiedTime": 0},
                       {"EndpointName": "shared-endpoint"})
        assert backend.describe(handle).status == "Creating"  # no component before the endpoint is InService
        s.assert_no_pending_responses()
    assert handle["pending_adapters"] == {"support": "s3://bucket/users/u1/models/j1/output/model.tar.gz"}


def body(obj: Any) -> StreamingBody:
    raw = json.dumps(obj).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def test_components_attach_detach_invoke_and_delete() -> None:
    sm, rt = client("sagemaker"), client("sagemaker-runtime")
    backend = SageMakerAdapterEndpoints(sm, rt, Store(), ROLE, "us-east-1", IMAGE)
    handle = {"endpoint_name": "shared-endpoint", "base_source": "Qwen/Qwen2.5-0.5B", "components": {},
              "pending_adapters": {"support": "s3://bucket/a.tar.gz"}}
    base_ic = component_name("shared-endpoint", None)
    in_service = {"EndpointName": "shared-endpoint", "EndpointArn": ARN_EP, "EndpointStatus": "InService",
                  "CreationTime": 0, "LastModifiedTime": 0}
    ic_arn = {"InferenceComponentArn": ARN_IC}
    with Stubber(sm) as s, Stubber(rt) as r:
        s.add_response("describe_endpoint", in_service, {"EndpointName": "shared-endpoint"})
        s.add_response("create_inference_component", ic_arn, {
            "InferenceComponentName": base_ic, "EndpointName": "shared-endpoint", "VariantName": "AllTraffic",
            "RuntimeConfig": {"CopyCount": 1}, "Specification": {
                "Container": {"Image": IMAGE, "Environment": {
                    "OPTION_ROLLING_BATCH": "vllm", "OPTION_ENABLE_LORA": "true", "OPTION_MAX_LORAS": "8",
                    "OPTION_MAX_CPU_LORAS": "64", "HF_MODEL_ID": "Qwen/Qwen2.5-0.5B"}},
                "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": 1,
                                                "MinMemoryRequiredInMb": 8192}}})
        st = backend.describe(handle)
        assert st.status == "Creating" and st.handle_update["components"] == {"__base__": base_ic}
        handle.update(st.handle_update)

        s.add_response("describe_endpoint", in_service, {"EndpointName": "shared-endpoint"})
        s.add_response("describe_inference_component", {
            "InferenceComponentName": base_ic, "InferenceComponentArn": ARN_IC, "EndpointName": "shared-endpoint",
            "EndpointArn": ARN_EP, "CreationTime": 0, "LastModifiedTime": 0, "InferenceComponentStatus": "InService"},
            {"InferenceComponentName": base_ic})
        adapter_request = {"InferenceComponentName": "shared-endpoint-support", "EndpointName": "shared-endpoint",
                           "Specification": {"BaseInferenceComponentName": base_ic,
                                             "Container": {"ArtifactUrl": "s3://bucket/a.tar.gz"}}}
        s.add_response("create_inference_component", ic_arn, adapter_request)
        st = backend.describe(handle)
        assert st.status == "InService" and st.handle_update["pending_adapters"] == {}

        s.add_response("create_inference_component", ic_arn, {
            "InferenceComponentName": "shared-endpoint-legal", "EndpointName": "shared-endpoint",
            "Specification": {"BaseInferenceComponentName": base_ic,
                              "Container": {"ArtifactUrl": "s3://bucket/users/u1/legal.tar.gz"}}})
        backend.attach_adapter(handle, "legal", "users/u1/legal.tar.gz")
        s.add_response("delete_inference_component", {}, {"InferenceComponentName": "shared-endpoint-legal"})
        backend.detach_adapter(handle, "legal")

        answer = {"generated_text": "hello", "details": {"finish_reason": "length", "generated_tokens": 4,
                                                         "prefill": [1, 2, 3]}}
        r.add_response("invoke_endpoint", {"Body": body(answer), "ContentType": "application/json"},
            {"EndpointName": "shared-endpoint", "InferenceComponentName": "shared-endpoint-support",
             "ContentType": "application/json", "Accept": "application/json", "Body": json.dumps(
                 {"inputs": "hi", "parameters": {"max_new_tokens": 4, "details": True}})})
        out = backend.invoke(handle, {"inputs": "hi", "parameters": {"max_new_tokens": 4, "return_full_text": False},
                                      "adapter": "support"}, 30)
        assert out == [{"generated_text": "hello", "details": {"prompt_tokens": 3, "completion_tokens": 4,
                                                               "finish_reason": "length"}}]
        r.add_response("invoke_endpoint", {"Body": body({"choices": [{"message": {"content": "ok"},
                                                                      "finish_reason": "stop"}],
                                                         "usage": {"prompt_tokens": 5, "completion_tokens": 1}})},
                       {"EndpointName": "shared-endpoint", "InferenceComponentName": base_ic,
                        "ContentType": "application/json", "Accept": "application/json", "Body": json.dumps(
                            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})})
        out = backend.invoke(handle, {"messages": [{"role": "user", "content": "hi"}],
                                      "parameters": {"max_new_tokens": 2}, "adapter": "__base__"}, 30)
        assert out[0]["generated_text"] == "ok" and out[0]["details"]["finish_reason"] == "stop"

        s.add_response("list_inference_components", {"InferenceComponents": [
            {"InferenceComponentName": n, "InferenceComponentArn": ARN_IC, "EndpointName": "shared-endpoint",
             "EndpointArn": ARN_EP, "VariantName": "AllTraffic", "CreationTime": 0, "LastModifiedTime": 0}
            for n in (base_ic, "shared-endpoint-support")]},
            {"EndpointNameEquals": "shared-endpoint", "MaxResults": 100})
        s.add_response("delete_inference_component", {}, {"InferenceComponentName": "shared-endpoint-support"})
        s.add_response("delete_inference_component", {}, {"InferenceComponentName": base_ic})
        s.add_response("delete_endpoint", {}, {"EndpointName": "shared-endpoint"})
        s.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "shared-endpoint"})
        backend.delete(handle)
        s.assert_no_pending_responses()
        r.assert_no_pending_responses()
