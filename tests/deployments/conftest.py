"""Deployment fixtures: a "trained" model.tar.gz built without train.py, Completed job rows, a fake
endpoint backend for the API's logic, and cleanup of every model server a test started."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.backends.base import BackendEndpointStatus, Backends, EndpointSpec
from app.deployments.models import Endpoint
from app.training.models import TrainingJob
from app.worker import WorkerContext
from tests.jobs import insert_job, kill_process_group


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.training.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("deploy-base"))


def save_adapter(base: Path, out: Path, seed: int, scale: float = 0.3) -> Path:
    """A LoRA adapter of `base` on q/v, saved as train.py saves one (with the tokenizer and
    training_summary.json), its lora_B drawn with `seed` so that it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    (out / "training_summary.json").write_text(json.dumps(
        {"base_model": str(base), "task": "causal_lm", "prompt_template": "llmtuner-plain-v1"}))
    return out


def build_adapter_tar(tiny_base: Path, root: Path, seed: int = 7) -> Path:
    """model.tar.gz as train.py writes it: `save_adapter`'s folder, archived."""
    model_dir = save_adapter(tiny_base, root / "model", seed)
    tar_path = root / "model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for p in sorted(model_dir.iterdir()):
            tar.add(p, arcname=p.name)
    return tar_path


@pytest.fixture(scope="session")
def trained_tar(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_adapter_tar(tiny_base, tmp_path_factory.mktemp("deploy-model"))


@pytest.fixture
def base_in_data_dir(settings: Any, tiny_base: Path) -> Path:
    """The catalogue's builtin tiny model resolves to the session's copy (no rebuild per test)."""
    link = settings.data_path / "base_models" / "tiny-llama"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(tiny_base, target_is_directory=True)
    return link


@pytest.fixture
def completed_job(session_factory: Any, store: Any, trained_tar: Path) -> Callable[..., TrainingJob]:
    """Put a model.tar.gz in the store and insert the job row train.py + the worker would leave."""
    counter = iter(range(1000))

    def _make(uid: str, job_name: str | None = None, status: str = "Completed",
              tar_bytes: bytes | None = None) -> TrainingJob:
        job_name = job_name or f"llm-tune-test-tiny-{next(counter):03d}"
        return insert_job(session_factory, store, uid, job_name, trained_tar if tar_bytes is None else tar_bytes,
                          status)

    return _make


@pytest.fixture(autouse=True)
def stop_model_servers(session_factory: Any) -> Iterator[None]:
    """Every serve.py a test started is killed before its rows are rolled back."""
    yield
    with session_factory() as s:
        for ep in s.scalars(select(Endpoint)):
            handle = ep.backend_handle or {}
            kill_process_group(handle)


class FakeEndpointBackend:
    """Model servers as dict entries; tests set their status and what invoke answers."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.servers: dict[int, dict[str, Any]] = {}
        self.initial_status = "Creating"
        self.deploy_error: Exception | None = None
        self.invoke_error: Exception | None = None
        self.invoke_delay = 0.0
        self.invocations: list[dict[str, Any]] = []
        self.specs: list[EndpointSpec] = []

    def deploy(self, spec: EndpointSpec) -> dict[str, Any]:
        if self.deploy_error is not None:
            raise self.deploy_error
        sid = len(self.servers) + 1
        self.specs.append(spec)
        # "name": the user's name of the endpoint (cut to 54 characters); the backend's adds a piece of its id
        self.servers[sid] = {"status": self.initial_status, "reason": None,
                             "name": spec.endpoint_name.rsplit("-", 1)[0], "deleted": False,
                             "adapters": dict(spec.adapters)}
        return {"server": sid}

    def describe(self, handle: dict[str, Any]) -> BackendEndpointStatus:
        s = self.servers.get(handle["server"])
        if s is None:
            return BackendEndpointStatus("Failed", "server gone")
        if s["deleted"]:
            return BackendEndpointStatus("Deleted")
        return BackendEndpointStatus(s["status"], s["reason"], handle_update=s.get("handle_update"))

    def invoke(self, handle: dict[str, Any], payload: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        self.invocations.append({"handle": handle, "payload": payload, "timeout": timeout})
        if self.invoke_delay:
            time.sleep(self.invoke_delay)
        if self.invoke_error is not None:
            raise self.invoke_error
        completion = " and then the answer"
        full = payload.get("parameters", {}).get("return_full_text", True)
        return [{"generated_text": (payload["inputs"] if full else "") + completion,
                 "details": {"prompt_tokens": 5, "completion_tokens": 4, "finish_reason": "length"}}]

    def delete(self, handle: dict[str, Any]) -> None:
        self.servers[handle["server"]]["deleted"] = True

    def attach_adapter(self, handle: dict[str, Any], name: str, key: str) -> None:
        self.servers[handle["server"]].setdefault("adapters", {})[name] = key

    def detach_adapter(self, handle: dict[str, Any], name: str) -> None:
        self.servers[handle["server"]].setdefault("adapters", {}).pop(name, None)

    # test helpers
    def set(self, endpoint_name: str, status: str, reason: str | None = None) -> None:
        for s in self.servers.values():
            if s["name"] == endpoint_name[:54].rstrip("-") and not s["deleted"]:
                s["status"], s["reason"] = status, reason

    def live(self) -> list[dict[str, Any]]:
        return [s for s in self.servers.values() if not s["deleted"]]


@pytest.fixture
def fake_backend() -> FakeEndpointBackend:
    return FakeEndpointBackend()


@pytest.fixture
def fake_backends(fake_backend: FakeEndpointBackend) -> Backends:
    return Backends(training=None, endpoints=fake_backend, name="fake")  # type: ignore[arg-type]


@pytest.fixture
def reconcile_once(session_factory: Any, store: Any, settings: Any, client: Any, app: Any) -> Callable[..., None]:
    """One pass of the endpoint reconciler alone (not the other domains')."""
    from app.deployments.reconcile import reconcile
    from app.leases import new_owner

    owner = new_owner()  # one worker identity across passes: it keeps the leases it took

    def _run(first_pass: bool = False) -> None:
        reconcile(WorkerContext(session_factory, store, app.state.backends, settings, first_pass=first_pass,
                                owner=owner))

    return _run


def endpoint_row(session_factory: Any, name: str) -> Endpoint:
    with session_factory() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.endpoint_name == name))
        assert ep is not None
        return ep

