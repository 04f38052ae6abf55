"""Serve requests through SageMaker's PyTorch inference toolkit as its TorchServe worker does.

Run by tests/parity/container.py with the container's environment: argv[1] is the model folder
(/opt/ml/model), stdin a JSON list of {"body", "content_type"}; the last stdout line is a JSON list
of {"status", "body"} (TorchServe's answer status and body for each request).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from sagemaker_inference import environment
from sagemaker_pytorch_serving_container.handler_service import HandlerService


class Request:
    def __init__(self, content_type: str) -> None:
        self.headers = {"Content-Type": content_type, "Accept": "application/json"}

    def get_request_properties(self) -> dict[str, str]:
        return self.headers


class Context:
    """The parts of TorchServe's `ts.context.Context` the toolkit uses."""

    def __init__(self, model_dir: str, content_type: str = "application/json") -> None:
        self.system_properties = {"model_dir": model_dir, "gpu_id": None}
        self.request_processor = [Request(content_type)]
        self.status: tuple[int, str] = (200, "OK")

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass


def main() -> None:
    model_dir, requests = sys.argv[1], json.loads(sys.stdin.read())
    # What sagemaker-pytorch-inference's start_torchserve does before the server starts
    # (sagemaker_inference.model_server._install_requirements: that module imports pkg_resources,
    # which the images' setuptools has and this environment's newer one does not).
    requirements = os.path.join(environment.code_dir, "requirements.txt")
    if os.path.exists(requirements):
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-r", requirements], stdout=sys.stderr)
    service = HandlerService()
    service.initialize(Context(model_dir))  # model_fn: a failure here fails the worker
    answers: list[dict[str, Any]] = []
    for req in requests:
        ctx = Context(model_dir, req.get("content_type", "application/json"))
        out = service.handle([{"body": req["body"].encode()}], ctx)
        body = out[0] if isinstance(out[0], str) else out[0].decode()
        answers.append({"status": ctx.status[0], "body": body})
    print()
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
