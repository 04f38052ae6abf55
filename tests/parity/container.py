"""What a SageMaker container does with a request, without Docker.

Training (and evaluation) jobs: the request's channels are copied out of (moto's) S3 into an
`/opt/ml`-shaped tree under a temporary folder exactly as File mode lays them out, the request's
hyperparameters go to `input/config/hyperparameters.json` (every value the JSON-encoded string
SageMaker stores), and the real training toolkit (`sagemaker-training`, what the Hugging Face
training DLC runs as its `train` command) starts the entry point: it downloads and unpacks
`sourcedir.tar.gz` from S3 itself, runs `pip install -r requirements.txt`, and starts the script
with its SM_* variables and the hyperparameters as command-line arguments.

Endpoints: `model.tar.gz` is unpacked into `model/` as SageMaker does, and a driver runs the
PyTorch inference toolkit (`sagemaker-pytorch-inference`, the DLC's TorchServe handler service):
`pip install -r code/requirements.txt`, then the handler service's `initialize` (model_fn) and
`handle` per request, with the container environment the backend's CreateModel request sets.

Two things differ from the containers, both on purpose: `pip` runs with `--no-index --dry-run`
(PIP_NO_INDEX, PIP_DRY_RUN), so a requirement the test suite's own environment does not already
satisfy fails the run instead of being installed (bitsandbytes, a GPU-only package, is offered as
an empty wheel); and `/opt/ml` and `/tmp` are folders under the test's temporary directory
(SAGEMAKER_BASE_DIR, which both toolkits read); and the training toolkit does not wait for the
host name `algo-1` to resolve (SM_STUDIO_LOCAL_MODE), which only SageMaker's network does.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("serve_driver.py")
GPU_ONLY = {"bitsandbytes": "0.45.5"}


def fake_wheels(folder: Path) -> Path:
    """Empty wheels of the GPU-only requirements, for pip's --find-links."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in GPU_ONLY.items():
        info = f"{name}-{version}.dist-info"
        with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
            whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
            whl.writestr(f"{info}/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            whl.writestr(f"{info}/RECORD", "")
    return folder


def base_env(tmp: Path, endpoint_url: str) -> dict[str, str]:
    """The process environment every container run starts from: AWS pointed at moto, pip offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SM_", "SAGEMAKER_", "LLMTUNER_"))}
    env.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint_url,
        "PIP_NO_INDEX": "1", "PIP_DRY_RUN": "1", "PIP_FIND_LINKS": str(fake_wheels(tmp / "wheels")),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    })
    return env


def remap(container_env: dict[str, str], opt_ml: Path, scratch: Path) -> dict[str, str]:
    """The request's Environment with its /opt/ml and /tmp paths moved under the test's folders."""
    out = {}
    for k, v in container_env.items():
        if v.startswith("/opt/ml"):
            v = str(opt_ml) + v[len("/opt/ml"):]
        elif v.startswith("/tmp"):
            v = str(scratch) + v[len("/tmp"):]
        out[k] = v
    return out


def s3_client(endpoint_url: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def copy_channel(s3: Any, uri: str, dest: Path) -> list[str]:
    """File mode's copy of an S3Prefix channel: every object under the prefix, named by its key
    after the prefix's last "/" (a prefix that is one object's key gives that file's name)."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    cut = len(prefix.rsplit("/", 1)[0]) + 1 if "/" in prefix else 0
    names = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][cut:]
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(dest / rel))
            names.append(rel)
    return names


def run_training_job(request: dict[str, Any], tmp: Path,
                     endpoint_url: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a CreateTrainingJob request as the training container would; (process, /opt/ml)."""
    opt_ml = tmp / "opt" / "ml"
    config = opt_ml / "input" / "config"
    config.mkdir(parents=True)
    s3 = s3_client(endpoint_url)
    input_config = {}
    for channel in request["InputDataConfig"]:
        name = channel["ChannelName"]
        assert not (opt_ml / "input" / "data" / name).exists(), f"channel {name} given twice"
        copy_channel(s3, channel["DataSource"]["S3DataSource"]["S3Uri"], opt_ml / "input" / "data" / name)
        input_config[name] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                              "RecordWrapperType": "None"}
    hps = request["HyperParameters"]
    assert all(isinstance(v, str) for v in hps.values())
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps(input_config))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    for sub in ("model", "output/data", "code"):
        (opt_ml / sub).mkdir(parents=True, exist_ok=True)
    env = base_env(tmp, endpoint_url) | remap(request.get("Environment") or {}, opt_ml, tmp / "scratch")
    # SM_STUDIO_LOCAL_MODE only skips the wait for the host name "algo-1" to resolve, which it
    # does on SageMaker's network alone.
    env |= {"SAGEMAKER_BASE_DIR": str(opt_ml), "SM_STUDIO_LOCAL_MODE": "true"}
    return _run([sys.executable, "-m", "sagemaker_training.cli.train"], env, tmp), opt_ml


def _run(cmd: list[str], env: dict[str, str], cwd: Path, stdin: str = "",
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run with output in files under `cwd` (kept for a look after a failure); a run past
    `timeout` is killed and answers -9 with what it had written."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=fo, stderr=fe, text=True)
        try:
            proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


def model_tarball(model_dir: Path) -> bytes:
    """model.tar.gz as SageMaker packs /opt/ml/model at the end of a job (paths relative to it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(model_dir.rglob("*")):
            tar.add(p, arcname=p.relative_to(model_dir).as_posix(), recursive=False)
    return buf.getvalue()


def run_endpoint(model_request: dict[str, Any], tmp: Path, endpoint_url: str, requests: list[dict[str, Any]],
                 keep: Any = None) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Unpack the CreateModel request's ModelDataUrl into model/ and serve `requests` ({"body",
    "content_type"}) through the inference toolkit; (process, [{"status", "body"}, ...]).
    `keep(path) -> bool` leaves files of the tarball out (e.g. a bundled base)."""
    container = model_request["PrimaryContainer"]
    opt_ml = tmp / "opt" / "ml"
    model_dir = opt_ml / "model"
    model_dir.mkdir(parents=True)
    bucket, _, key = container["ModelDataUrl"][len("s3://"):].partition("/")
    body = s3_client(endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if keep is None or keep(m.name)]
        tar.extractall(model_dir, members=members, filter="data")
    scratch = tmp / "scratch"
    scratch.mkdir()
    env = base_env(tmp, endpoint_url) | remap(container["Environment"], opt_ml, scratch)
    # TorchServe puts the code folder on the worker's PYTHONPATH (sagemaker-pytorch-inference).
    env |= {"SAGEMAKER_BASE_DIR": str(opt_ml), "PYTHONPATH": str(model_dir / "code")}
    proc = _run([sys.executable, str(DRIVER), str(model_dir)], env, tmp, stdin=json.dumps(requests))
    answers = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else []
    return proc, answers
