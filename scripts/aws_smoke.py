"""A real-AWS smoke run of the cloud shape: `make aws-smoke BUCKET=... ROLE=... REGION=...`.

Through the service's own SageMaker backend (no API server, no database): uploads the built-in tiny
model's data, trains it for a few steps as a SageMaker training job, deploys the result to a
real-time endpoint, invokes it, downloads model.tar.gz, then deletes the endpoint, its config and
model and everything it put in the bucket, and prints what the run cost at on-demand prices.

Needs AWS credentials (the usual boto3 chain: environment, ~/.aws, an instance role) allowed to do
what docs/cloud.md's policy allows, an S3 bucket in REGION and the SageMaker execution role ROLE.
Without credentials it refuses to start (exit 2). It takes about 15-25 minutes, most of it
SageMaker starting instances, and costs a few cents on ml.m5.xlarge.

    python scripts/aws_smoke.py --bucket my-bucket --role arn:aws:iam::123456789012:role/MySageMakerRole \
        --region us-east-1 [--training-instance ml.m5.xlarge] [--endpoint-instance ml.m5.xlarge]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import aws, catalog  # noqa: E402
from app.backends.base import EndpointSpec, TrainingSpec  # noqa: E402
from app.backends.sagemaker import SageMakerEndpointBackend, SageMakerTrainingBackend  # noqa: E402
from app.config import AWSSettings, Settings, WorkerSettings  # noqa: E402
from app.storage.s3 import S3ObjectStore  # noqa: E402

BASE = "llmtuner/tiny-llama"
POLL_SECONDS = 15
QA = [("What is the capital of France?", "Paris."), ("What is 2 + 2?", "4."),
      ("Name a primary colour.", "Red."), ("How many legs has a cat?", "Four.")]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def records(n: int) -> bytes:
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA]
    return "".join(json.dumps(r) + "\n" for r in (rows * n)[:n]).encode()


def wait(what: str, poll: Any, done: Any, limit: float) -> Any:
    start = time.monotonic()
    while True:
        status = poll()
        if done(status):
            return status
        if time.monotonic() - start > limit:
            raise SystemExit(f"{what} did not finish within {limit / 60:.0f} minutes")
        time.sleep(POLL_SECONDS)


def train(settings: Settings, store: S3ObjectStore, user: str, instance: str, tmp: Path) -> tuple[dict, Any]:
    from app.training.schemas import Hyperparameters

    entry = catalog.base_model(settings, BASE)
    data = f"users/{user}/datasets/smoke/"
    store.put_stream(data + "train.jsonl", io.BytesIO(records(32)))
    store.put_stream(data + "validation.jsonl", io.BytesIO(records(8)))
    job = f"llm-tune-smoke-{time.strftime('%Y%m%d-%H%M%S')}"
    hps = Hyperparameters(max_steps=5, batch_size=2, max_length=64, logging_steps=1).model_dump()
    spec = TrainingSpec(
        job_name=job, user_id=user, base_model=BASE, base_model_source=catalog.resolve_source(settings, entry),
        hyperparameters={**hps, "task": entry["task"]}, instance_type=instance, train_key=data + "train.jsonl",
        validation_key=data + "validation.jsonl", output_key=f"users/{user}/models/{job}/output/model.tar.gz",
        checkpoint_prefix=f"users/{user}/models/{job}/checkpoints/", max_runtime_seconds=3600)
    backend = SageMakerTrainingBackend(settings, store)
    handle = backend.submit(spec)
    say(f"training job {job} submitted on {instance}")

    def poll() -> Any:
        st = backend.describe(handle)
        handle.update(st.handle_update)
        for t in st.status_transitions:
            say(f"  {t['Status']}: {t['StatusMessage']}")
        for line in st.log_lines:
            say(f"  {line}")
        return st

    try:
        st = wait("the training job", poll, lambda s: s.status in ("Completed", "Failed", "Stopped"), 3600)
    except BaseException:
        backend.stop(handle)
        raise
    if st.status != "Completed":
        raise SystemExit(f"the training job ended {st.status}: {st.failure_reason}")
    return {"job": job, "billable_seconds": st.billable_seconds or 0, "artifact": st.artifact_uri,
            "key": spec.output_key, "base_source": spec.base_model_source}, backend


def serve(settings: Settings, store: S3ObjectStore, user: str, instance: str, model: dict) -> dict:
    backend = SageMakerEndpointBackend(settings, store)
    name = f"llmtuner-smoke-{uuid.uuid4().hex[:8]}"
    spec = EndpointSpec(endpoint_name=name, user_id=user, model_uri=model["artifact"], model_key=model["key"],
                        base_model_source=model["base_source"], instance_type=instance)
    handle = backend.deploy(spec)
    created = time.time()
    say(f"endpoint {name} creating on {instance}")
    result: dict[str, Any] = {"handle": handle, "backend": backend, "created": created}
    st = wait("the endpoint", lambda: backend.describe(handle), lambda s: s.status in ("InService", "Failed"), 1800)
    if st.status != "InService":
        result["error"] = f"the endpoint failed: {st.failure_reason}"
        return result
    say("endpoint InService; invoking")
    out = backend.invoke(handle, {"inputs": "What is 2 + 2?", "parameters": {"max_new_tokens": 8}}, timeout=60)
    say(f"  answer: {json.dumps(out)}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--role", required=True, help="ARN of the SageMaker execution role")
    ap.add_argument("--region", required=True)
    ap.add_argument("--training-instance", default="ml.m5.xlarge")
    ap.add_argument("--endpoint-instance", default="ml.m5.xlarge")
    args = ap.parse_args()
    import boto3

    if boto3.session.Session(region_name=args.region).get_credentials() is None:
        print("aws-smoke: no AWS credentials found (environment, ~/.aws or an instance role); not started",
              file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="llmtuner-smoke-"))
    settings = Settings(env="development", data_dir=tmp / "data", backend="sagemaker", storage="s3",
                        worker=WorkerSettings(enabled=False),
                        aws=AWSSettings(region=args.region, s3_bucket=args.bucket, role_arn=args.role))
    store = S3ObjectStore(aws.client(settings, "s3"), args.bucket)
    prices = catalog.instance_types(settings)
    user = str(uuid.uuid4())  # the run's own prefix: users/{user}/..., deleted at the end
    served: dict[str, Any] = {}
    model: dict[str, Any] = {"billable_seconds": 0}
    ok = False
    try:
        model, _ = train(settings, store, user, args.training_instance, tmp)
        served = serve(settings, store, user, args.endpoint_instance, model)
        if "error" not in served:
            archive = store.download_to(model["key"], tmp / "model.tar.gz")
            with tarfile.open(archive) as tar:
                names = tar.getnames()
            say(f"downloaded model.tar.gz: {len(names)} files, code/inference.py {'code/inference.py' in names}")
            ok = True
        else:
            say(served["error"])
    finally:
        endpoint_seconds = 0.0
        if served.get("handle"):
            served["backend"].delete(served["handle"])
            endpoint_seconds = time.time() - served["created"]
            say(f"deleted endpoint {served['handle']['endpoint_name']}, its config and model")
        removed = store.delete_prefix(f"users/{user}/")
        say(f"deleted {removed} objects under s3://{args.bucket}/users/{user}/")
        training_cost = model["billable_seconds"] / 3600 * float(prices[args.training_instance]["training"])
        endpoint_cost = endpoint_seconds / 3600 * float(prices[args.endpoint_instance]["inference"])
        say(f"cost at on-demand prices: training {model['billable_seconds']} s = ${training_cost:.4f}, endpoint "
            f"{endpoint_seconds:.0f} s = ${endpoint_cost:.4f}, total ${training_cost + endpoint_cost:.4f} "
            "(plus S3 requests and CloudWatch Logs, well under a cent)")
        say("smoke run " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
