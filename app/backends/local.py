"""The embedded default: train.py and serve.py as local subprocesses, with SageMaker's
container contract pointed at folders under the data dir."""

from __future__ import annotations

import fcntl
import json
import secrets
import shutil
import signal
import socket
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from app.backends import process
from app.backends.base import BackendEndpointStatus, BackendJobStatus, Backends, EndpointSpec, TrainingSpec
from app.config import Settings
from app.errors import BackendError, GatewayTimeout, ServiceUnavailable, ValidationFailed
from app.statuses import EndpointStatus, JobStatus
from app.storage import ObjectStore

HANDLE_FILE = "handle.json"  # in a job's or endpoint's folder: the process started for it


def _start_once(root: Path, name: str, start: Callable[[], dict[str, Any]],
                reuse: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`start()` unless `name`'s folder records a handle that `reuse` accepts, which is given back
    instead; callers asking at the same moment wait for each other (a lock file per name)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = root / name / HANDLE_FILE
        if recorded.is_file():
            handle = dict(json.loads(recorded.read_text()))
            if reuse(handle):
                return handle
        handle = start()
        tmp = recorded.with_suffix(".tmp")
        tmp.write_text(json.dumps(handle))
        tmp.replace(recorded)
        return handle


class LocalTrainingBackend:
    name = "local"

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings, self.store = settings, store
        self.root = settings.data_path / "jobs"

    def submit(self, spec: TrainingSpec) -> dict[str, Any]:
        """Start the job's process once: a second submit of the same job name (a worker that took
        over after another died between starting the process and recording it) gets the first
        process's handle back, also when both ask at the same moment (a lock file per job)."""
        return _start_once(self.root, spec.job_name, lambda: self._start(spec), reuse=lambda _: True)

    def _start(self, spec: TrainingSpec) -> dict[str, Any]:
        job = self.root / spec.job_name
        if job.exists():  # a start that failed half-way (no process was started)
            shutil.rmtree(job)
        dirs = {k: job / v for k, v in {
            "train": "input/data/train", "validation": "input/data/validation", "config": "input/config",
            "model": "model", "output": "output", "output_data": "output/data", "checkpoints": "checkpoints",
        }.items()}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.store.download_to(spec.train_key, dirs["train"] / "train.jsonl")
        if spec.validation_key:
            self.store.download_to(spec.validation_key, dirs["validation"] / "validation.jsonl")
        for name, key in spec.extra_channels.items():
            dest = job / "input/data" / name
            dirs[f"channel_{name}"] = dest
            keys = list(self.store.list(key)) if key.endswith("/") else [key]
            for k in keys:
                self.store.download_to(k, dest / (k[len(key):] if key.endswith("/") else k.rsplit("/", 1)[-1]))
        hps = {**spec.hyperparameters, "base_model": spec.base_model_source}
        (dirs["config"] / "hyperparameters.json").write_text(json.dumps(hps))
        env = {
            "SM_HPS": json.dumps(hps), "SM_CHANNEL_TRAIN": str(dirs["train"]),
            "SM_MODEL_DIR": str(dirs["model"]), "SM_OUTPUT_DIR": str(dirs["output"]),
            "SM_OUTPUT_DATA_DIR": str(dirs["output_data"]), "SM_CHECKPOINT_DIR": str(dirs["checkpoints"]),
            "SM_INPUT_CONFIG_DIR": str(dirs["config"]), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }
        if spec.validation_key:
            env["SM_CHANNEL_VALIDATION"] = str(dirs["validation"])
        for name in spec.extra_channels:
            env[f"SM_CHANNEL_{name.upper()}"] = str(dirs[f"channel_{name}"])
        handle = process.spawn([str(process.SCRIPTS / spec.entry_point)], job, env, "train")
        handle.update(started=time.time(), offset=0, output_key=spec.output_key, max_runtime=spec.max_runtime_seconds)
        return handle

    def describe(self, handle: dict[str, Any]) -> BackendJobStatus:
        lines, offset = process.read_new_lines(handle, int(handle.get("offset", 0)))
        update: dict[str, Any] = {"offset": offset}
        if process.alive(handle):
            if time.time() - handle["started"] > float(handle.get("max_runtime") or "inf"):
                process.terminate(handle)  # past its wall-time limit (settings.limits.max_job_seconds)
                update["timed_out"] = True
            stopping = bool(handle.get("stopping"))
            secondary = "Stopping" if stopping else ("Training" if lines or offset else "Starting")
            return BackendJobStatus(JobStatus.STOPPING if stopping else JobStatus.IN_PROGRESS, secondary, lines,
                                    billable_seconds=int(time.time() - handle["started"]), handle_update=update)
        # The exit time the process's wrapper recorded: a job that ended while the API was down is
        # billed to its end, not to the restart.
        ended = handle.get("ended") or process.exit_time(handle) or time.time()
        update["ended"] = ended
        billable = int(ended - handle["started"]) or 1
        code = process.exit_code(handle)
        if handle.get("stopping"):
            return BackendJobStatus(JobStatus.STOPPED, JobStatus.STOPPED, lines, billable_seconds=billable,
                                    handle_update=update, ended_at=ended)
        if code == 0 and not handle.get("timed_out"):
            uri = handle.get("artifact_uri") or self._pack(handle)
            update["artifact_uri"] = uri
            return BackendJobStatus(JobStatus.COMPLETED, JobStatus.COMPLETED, lines, billable_seconds=billable,
                                    artifact_uri=uri, handle_update=update, ended_at=ended)
        return BackendJobStatus(JobStatus.FAILED, JobStatus.FAILED, lines, billable_seconds=billable,
                                failure_reason=self._failure(handle, code), handle_update=update, ended_at=ended)

    def _failure(self, handle: dict[str, Any], code: int | None) -> str:
        if handle.get("timed_out"):
            return (f"max_runtime_exceeded: the job ran longer than its limit of {handle['max_runtime']} s and was "
                    "stopped; lower epochs or max_steps")
        f = Path(handle["dir"]) / "output" / "failure"
        if f.is_file():
            return f.read_text().strip()[:2000]
        if code is None:
            return ("process_vanished: the training process ended without reporting (the machine or the "
                    "API restarted while it ran); start the job again")
        if code in (-9, 137):
            return "out_of_memory: the training process was killed; reduce batch_size or max_length"
        return f"internal_error: train.py exited with code {code}: {process.tail(handle)[-800:]}"

    def _pack(self, handle: dict[str, Any]) -> str:
        model_dir = Path(handle["dir"]) / "model"
        tar_path = Path(handle["dir"]) / "model.tar.gz"
        with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
            for p in sorted(model_dir.iterdir()):
                tar.add(p, arcname=p.name)
        self.store.put_file(handle["output_key"], tar_path)
        return str(self.store.uri(handle["output_key"]))

    def stop(self, handle: dict[str, Any]) -> None:
        process.terminate(handle)


DELETE_GRACE_SECONDS = 15.0  # SIGTERM, then SIGKILL for a server that has not exited


# Each model server asks for its endpoint's secret on every request (it listens on the host's
# loopback, where any local process could otherwise skip the API's auth and accounting). It goes to
# serve.py in the environment, never argv (which `ps` shows), and stays in the endpoint's handle.
TOKEN_ENV, TOKEN_HEADER = "LLMTUNER_SERVE_TOKEN", "X-LLMTuner-Token"


def _auth(handle: dict[str, Any]) -> dict[str, str]:
    return {TOKEN_HEADER: handle["token"]} if handle.get("token") else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalEndpointBackend:
    name = "local"

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings, self.store = settings, store
        self.root = settings.data_path / "endpoints"

    def deploy(self, spec: EndpointSpec) -> dict[str, Any]:
        """Start the endpoint's server once: a second deploy while that server lives (a worker killed
        between starting it and recording its handle) gets its handle back instead of starting a
        second server; a dead one (a restart after a crash) is replaced."""
        return _start_once(self.root, spec.endpoint_name, lambda: self._start(spec), reuse=process.alive)

    def _start(self, spec: EndpointSpec) -> dict[str, Any]:
        workdir = self.root / spec.endpoint_name
        if workdir.exists():
            shutil.rmtree(workdir)
        if spec.model_key:
            model_dir = str(self.store.download_to(spec.model_key, workdir / "model.tar.gz"))
        else:  # a base-model endpoint: the base itself, adapters attached by name
            model_dir = str(spec.base_model_source)
        port = _free_port()
        args = [str(process.SCRIPTS / "serve.py"), "--model-dir", model_dir, "--host", "127.0.0.1",
                "--port", str(port), "--timeout", str(self.settings.invoke_timeout_seconds)]
        for name, key in spec.adapters.items():
            args += ["--adapter", f"{name}={self._adapter_file(workdir, name, key)}"]
        # Always set: an empty value keeps a LLMTUNER_BASE_MODEL of the API's own environment out of
        # the server, which then reads the base model recorded in the artifact.
        token = secrets.token_urlsafe(32)
        env = {"HF_HUB_OFFLINE": "1", "LLMTUNER_BASE_MODEL": spec.base_model_source or "", TOKEN_ENV: token}
        handle = process.spawn(args, workdir, env, "serve")
        handle.update(port=port, token=token, started=time.time(), spec={
            "endpoint_name": spec.endpoint_name, "model_key": spec.model_key,
            "base_model_source": spec.base_model_source})
        return handle

    def describe(self, handle: dict[str, Any]) -> BackendEndpointStatus:
        if handle.get("deleting"):
            if not process.alive(handle):
                Path(handle["dir"], "model.tar.gz").unlink(missing_ok=True)  # the copy can be large
                return BackendEndpointStatus(EndpointStatus.DELETED)
            if time.time() - float(handle["deleting"]) > DELETE_GRACE_SECONDS:
                process.terminate(handle, signal.SIGKILL)  # it ignored SIGTERM
            return BackendEndpointStatus(EndpointStatus.DELETING)
        if not process.alive(handle):
            return BackendEndpointStatus(EndpointStatus.FAILED, self._failure(handle))
        try:
            r = httpx.get(f"http://127.0.0.1:{handle['port']}/ping", headers=_auth(handle), timeout=2)
            if r.status_code == 200:
                return BackendEndpointStatus(EndpointStatus.IN_SERVICE)
        except httpx.HTTPError:
            pass
        if time.time() - handle["started"] > self.settings.endpoint_start_timeout_seconds:
            _forget(handle)
            process.terminate(handle)
            return BackendEndpointStatus(EndpointStatus.FAILED, "The model server did not become ready in time")
        return BackendEndpointStatus(EndpointStatus.CREATING)

    def invoke(self, handle: dict[str, Any], payload: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        try:
            r = httpx.post(f"http://127.0.0.1:{handle['port']}/invocations", json=payload,
                           headers=_auth(handle), timeout=timeout)
        except httpx.TimeoutException as e:
            raise GatewayTimeout(f"Generation did not finish within {timeout:.0f} s; ask for fewer "
                                 "max_new_tokens", code="generation_timeout") from e
        except httpx.HTTPError as e:
            raise BackendError(f"The endpoint's model server did not answer: {e}", code="endpoint_unreachable") from e
        self._raise_for(r)
        out = r.json()
        return out if isinstance(out, list) else [out]

    @staticmethod
    def _raise_for(r: httpx.Response) -> None:
        """The API's error for a model server's error answer."""
        if r.status_code in (400, 422):
            err = _error_body(r)
            raise ValidationFailed(err.get("message") or r.text[:1000], code=err.get("code") or "invalid_parameters",
                                   param=err.get("param"), details=err.get("details"))
        if r.status_code == 504:
            raise GatewayTimeout("Generation timed out on the endpoint", code="generation_timeout")
        if r.status_code == 503:
            raise ServiceUnavailable("The endpoint's model server is not ready", code="endpoint_not_ready",
                                     details=[_error_body(r).get("message") or r.text[:1000]])
        if r.status_code != 200:
            raise BackendError(f"The model server answered {r.status_code}", code="endpoint_error",
                               details=[r.text[:1000]])

    def _adapter_file(self, workdir: Path, name: str, key: str) -> Path:
        return Path(self.store.download_to(key, workdir / "adapters" / f"{name}.tar.gz"))

    def attach_adapter(self, handle: dict[str, Any], name: str, key: str) -> None:
        """Register an adapter with the running server (it loads on first use); no restart."""
        path = self._adapter_file(Path(handle["dir"]), name, key)
        self._server_call("PUT", handle, f"/adapters/{name}", {"source": str(path)})

    def detach_adapter(self, handle: dict[str, Any], name: str) -> None:
        """The server unloads the adapter and frees its weights; its copy here is removed."""
        self._server_call("DELETE", handle, f"/adapters/{name}", None, missing_ok=True)
        Path(handle["dir"], "adapters", f"{name}.tar.gz").unlink(missing_ok=True)

    def _server_call(self, method: str, handle: dict[str, Any], path: str, body: Any, missing_ok: bool = False) -> None:
        try:
            r = httpx.request(method, f"http://127.0.0.1:{handle['port']}{path}", json=body,
                              headers=_auth(handle), timeout=30)
        except httpx.HTTPError as e:
            raise BackendError(f"The endpoint's model server did not answer: {e}", code="endpoint_unreachable") from e
        if r.status_code >= 400 and not (missing_ok and r.status_code == 404):
            err = _error_body(r)
            raise BackendError(err.get("message") or f"The model server answered {r.status_code}",
                               code="endpoint_error", details=[r.text[:1000]])

    async def invoke_stream(self, handle: dict[str, Any], payload: dict[str, Any],
                            timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The server's events (`{"text": delta}` ..., then the result), each as soon as it arrives."""
        url = f"http://127.0.0.1:{handle['port']}/invocations"
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10)) as client:
            try:
                async with client.stream("POST", url, json={**payload, "stream": True}, headers=_auth(handle)) as r:
                    if r.status_code != 200:
                        await r.aread()
                        self._raise_for(r)
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            yield json.loads(line[6:])
            except httpx.TimeoutException as e:
                raise GatewayTimeout(f"Generation did not finish within {timeout:.0f} s",
                                     code="generation_timeout") from e
            except httpx.HTTPError as e:
                raise BackendError(f"The endpoint's model server did not answer: {e}",
                                   code="endpoint_unreachable") from e

    def delete(self, handle: dict[str, Any]) -> None:
        handle["deleting"] = time.time()  # the caller stores the handle; describe escalates after a grace
        _forget(handle)
        process.terminate(handle)

    def _failure(self, handle: dict[str, Any]) -> str:
        log = process.tail(handle)
        reason = next((ln.split("LOAD_ERROR:", 1)[1].strip() for ln in reversed(log.splitlines())
                       if "LOAD_ERROR:" in ln), None)
        if reason:  # the server's own folder means nothing to the user
            return reason.replace(f"{handle['dir']}/", "")
        code = process.exit_code(handle)
        if code is None:
            return ("The model server process vanished (the machine or the API restarted while it ran, or it "
                    "was killed)")
        if code in (-9, 137):
            return "The model server was killed (out of memory?); try a larger instance type"
        return f"The model server exited with code {code}: {log[-500:]}"


def _forget(handle: dict[str, Any]) -> None:
    """A server being stopped is no longer the endpoint's: the next deploy starts a new one."""
    Path(handle["dir"], HANDLE_FILE).unlink(missing_ok=True)


def _error_body(r: httpx.Response) -> dict[str, Any]:
    try:
        err = r.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return err if isinstance(err, dict) else {}


def build_local_backends(settings: Settings, store: ObjectStore) -> Backends:
    return Backends(training=LocalTrainingBackend(settings, store),
                    endpoints=LocalEndpointBackend(settings, store), name="local")
