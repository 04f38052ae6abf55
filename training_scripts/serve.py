"""Inference server with SageMaker's inference-container contract.

    python training_scripts/serve.py [--model-dir DIR|model.tar.gz] [--port N] [--host H]
        [--base-model PATH_OR_ID] [--max-batch-size 8] [--batch-wait-ms 25] [--max-batch-wait-ms 100]
        [--timeout 60] [--device cpu|cuda] [--max-inputs 64] [--threads N] [--log-level info]
        [--max-adapters 8] [--adapter NAME=PATH ...]

Environment (a flag wins over its variable):
  SM_MODEL_DIR                      model directory or archive (default /opt/ml/model)
  SAGEMAKER_BIND_TO_PORT, PORT      port (default 8080); the host defaults to 127.0.0.1
  LLMTUNER_SERVE_HOST               host
  LLMTUNER_BASE_MODEL               base model of a LoRA adapter (see modeling.py)
  LLMTUNER_GENERATION_TIMEOUT       seconds before a request answers 504 (default 60)
  LLMTUNER_MAX_BATCH_SIZE, LLMTUNER_BATCH_WAIT_MS, LLMTUNER_MAX_BATCH_WAIT_MS, LLMTUNER_DEVICE,
  LLMTUNER_TORCH_THREADS, LLMTUNER_MAX_ADAPTERS
  LLMTUNER_SERVE_TOKEN              a secret every request must carry in the X-LLMTuner-Token header
                                    (401 unauthorized without it); unset: no check (SageMaker's
                                    container is reachable only through SageMaker)

Routes:
  GET  /ping, /health   200 {"status": "ok"} once the model is loaded; 503 {"status": "loading"} before
  GET  /info            model facts and counters (batches_run, requests_served, ...)
  POST /invocations     {"inputs": str | [str, ...], "parameters": {...}}
                        -> [{"generated_text": str,
                             "details": {"prompt_tokens", "completion_tokens", "finish_reason"}}, ...]
                        one item per input, in order (a str input gives a one-item list)
                        Also accepted: "messages": [{"role", "content"}, ...] instead of "inputs" (a
                        conversation rendered with the training template), "adapter": NAME (a
                        multi-adapter server's adapter; "__base__" or absent: the base model), and
                        "stream": true -> text/event-stream of `data: {"text": delta}` events, then
                        `data: {"text": rest, "details": {...}}` (or `data: {"error": {...}}`)
  GET  /adapters        a base-model server's adapters: registered, resident (loaded), cap
  PUT  /adapters/NAME   {"source": folder or model.tar.gz} registers an adapter (loaded on first use)
  DELETE /adapters/NAME forgets it and frees its weights
Errors: {"error": {"code", "message", "param", "details"}} with 400 invalid_json,
422 invalid_parameters, 503 model_not_ready, 504 generation_timeout, 500 generation_failed.

Many adapters: a server started on a base model (a full model directory) serves LoRA adapters
attached at run time, each request naming one; adapters load on first use, at most
--max-adapters at a time (least recently used unloaded first), and requests for different
adapters share one batch (adapters.py). A server started on a single adapter merges it and
serves only that.

Start-up: the port opens at once and the model loads in the background (/ping 503 then
200; the line "READY ..." is logged to stderr). If loading fails, one line starting with
"LOAD_ERROR: " is written to stderr and the process exits with status 2.

Concurrency: dynamic micro-batching. Inputs that arrive together are collected and
generated in one batched `generate` call on a single worker thread, off the event loop.
A batch takes up to --max-batch-size inputs: everything that queued while the worker was
busy, then whatever arrives while inputs keep coming less than --batch-wait-ms apart, never
holding the first input more than --max-batch-wait-ms. A lone request waits --batch-wait-ms.
(A burst of 8 requests is parsed one after the other on the event loop, a few ms each on a
busy CPU, so a fixed 10 ms window after the first often splits it; the gap rule copes with
that. The 25 ms default also holds a burst together on a busy 2-core host, where a client
can be descheduled for more than 10 ms between two sends; a lone request pays 25 ms, small
next to the generation itself.)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapters  # noqa: E402
import modeling  # noqa: E402
import streaming  # noqa: E402

log = logging.getLogger("llmtuner.serve")

TOKEN_ENV = "LLMTUNER_SERVE_TOKEN"  # an environment variable, not a flag: argv is visible in `ps`
TOKEN_HEADER = "X-LLMTuner-Token"


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    v = os.environ.get(name)
    return float(v) if v not in (None, "") else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="LLM Tuner inference server (SageMaker container contract)")
    ap.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR") or "/opt/ml/model")
    ap.add_argument("--base-model", default=None, help="base model of a LoRA adapter (path or hub id)")
    ap.add_argument("--host", default=os.environ.get("LLMTUNER_SERVE_HOST") or "127.0.0.1")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--max-batch-size", type=int, default=_env_int("LLMTUNER_MAX_BATCH_SIZE", 8))
    ap.add_argument("--batch-wait-ms", type=float, default=_env_float("LLMTUNER_BATCH_WAIT_MS", 25.0),
                    help="close a batch when no new input arrived for this long (ms)")
    ap.add_argument("--max-batch-wait-ms", type=float, default=_env_float("LLMTUNER_MAX_BATCH_WAIT_MS", 100.0),
                    help="never hold the first input of a batch longer than this (ms)")
    ap.add_argument("--timeout", type=float, default=_env_float("LLMTUNER_GENERATION_TIMEOUT", 60.0),
                    help="seconds a request may take before it answers 504 generation_timeout")
    ap.add_argument("--max-inputs", type=int, default=64, help="most inputs in one request")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=_env_int("LLMTUNER_TORCH_THREADS", 0),
                    help="torch CPU threads (0: torch's default, one per core)")
    ap.add_argument("--log-level", default=os.environ.get("LLMTUNER_LOG_LEVEL") or "info")
    ap.add_argument("--max-adapters", type=int, default=_env_int("LLMTUNER_MAX_ADAPTERS", 8),
                    help="most LoRA adapters resident at once on a base-model server")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                    help="an adapter to register at start (repeatable)")
    args = ap.parse_args(argv)
    if args.port is None:
        for name in ("SAGEMAKER_BIND_TO_PORT", "PORT"):
            if os.environ.get(name):
                args.port = int(os.environ[name])
                break
        else:
            args.port = 8080
    if args.max_batch_size < 1:
        ap.error("--max-batch-size must be >= 1")
    if args.batch_wait_ms < 0 or args.max_batch_wait_ms < 0 or args.timeout <= 0:
        ap.error("--batch-wait-ms and --max-batch-wait-ms must be >= 0 and --timeout > 0")
    if any("=" not in a for a in args.adapter):
        ap.error("--adapter takes NAME=PATH")
    return args


@dataclass
class _Item:
    text: str
    params: modeling.GenerationParams
    future: asyncio.Future[dict[str, Any]]
    loop: asyncio.AbstractEventLoop
    enqueued: float
    deadline: float
    cancelled: bool = False
    adapter: str | None = None
    messages: list[dict[str, Any]] | None = None
    sink: Any = None  # streaming.TextSink of a streamed request


@dataclass
class State:
    args: argparse.Namespace
    loaded: modeling.Loaded | None = None
    templated: modeling.Loaded | None = None  # `loaded` applying the training template (adapters' inputs)
    pool: adapters.AdapterPool | None = None  # a base-model server's adapters
    status: str = "loading"  # loading | ready | failed
    error: str | None = None
    batches_run: int = 0
    inputs_generated: int = 0
    requests_served: int = 0
    requests_failed: int = 0
    largest_batch: int = 0
    stopping: bool = False  # set at shutdown: a running generation stops at its next step
    started: float = field(default_factory=time.time)
    token: str = ""  # the secret requests must carry (TOKEN_ENV); empty: none asked
    pending_adapters: dict[str, str] = field(default_factory=dict)  # registered before the model loaded
    queue: asyncio.Queue[_Item] | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
    )


def _error(status: int, code: str, message: str, param: str | None = None,
           details: list[Any] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "param": param, "details": details}},
    )


class _RequireToken:
    """Answers 401 to any request without the server's secret: the local server listens on the
    host's loopback, where any local process could otherwise skip the API's auth and accounting."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(TOKEN_HEADER.lower().encode(), b"")
            if not hmac.compare_digest(given, self.token):
                response = _error(401, "unauthorized", f"Missing or wrong {TOKEN_HEADER} header")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _run_batch(state: State, items: list[_Item]) -> list[dict[str, Any] | BaseException]:
    """On the worker thread: prepare each input (errors stay per item), then generate together."""
    loaded = state.loaded
    assert loaded is not None
    now = time.monotonic()
    live = [it for it in items if not it.cancelled and it.deadline > now]
    out: dict[int, dict[str, Any] | BaseException] = {}
    prepared: list[modeling.Prepared] = []
    owners: list[int] = []
    live = _ensure_adapters(state, live, out)
    for it in live:
        try:
            use = state.templated if it.adapter not in (None, adapters.BASE) else loaded
            p = modeling.prepare(use or loaded, it.text, it.params, messages=it.messages)
            # adapter names only while a PeftModel answers (with none resident the base model runs alone)
            p.adapter = (it.adapter or adapters.BASE) if state.pool and state.pool.resident else None
            p.sink = it.sink
            prepared.append(p)
            owners.append(id(it))
        except modeling.ParamError as e:
            out[id(it)] = e
    if prepared:
        deadline = max(it.deadline for it in live)

        def cancelled() -> bool:
            return state.stopping or all(it.cancelled for it in live) or time.monotonic() > deadline

        try:
            results = modeling.generate_prepared(loaded, prepared, cancel_check=cancelled)
            done = time.monotonic()
            by_id = {id(it): it for it in live}
            for owner, r in zip(owners, results, strict=True):
                it = by_id[owner]
                # cut short by the deadline or abandoned: never hand back a truncated text as a success
                late = it.cancelled or done > it.deadline
                out[owner] = TimeoutError("generation timed out") if late else r
        except BaseException as e:  # noqa: BLE001 - handed to each waiting request
            log.exception("generation failed")
            for owner in owners:
                out[owner] = e
        state.batches_run += 1
        state.inputs_generated += len(prepared)
        state.largest_batch = max(state.largest_batch, len(prepared))
    return [out.get(id(it), TimeoutError("skipped: request timed out or was cancelled")) for it in items]


def _ensure_adapters(state: State, live: list[_Item], out: dict[int, Any]) -> list[_Item]:
    """Load the adapters the batch names; items naming a missing one fail alone."""
    if state.pool is None:
        return live
    names = {it.adapter for it in live if it.adapter}
    missing = {n for n in names if n != adapters.BASE and not state.pool.registered(n)}
    for it in live:
        if it.adapter in missing:
            out[id(it)] = modeling.ParamError([("adapter", f"no adapter {it.adapter!r} is attached")])
    live = [it for it in live if it.adapter not in missing]
    state.pool.ensure({it.adapter for it in live if it.adapter})
    return live


async def _batcher(state: State) -> None:
    assert state.queue is not None
    q = state.queue
    loop = asyncio.get_running_loop()
    max_batch = state.args.max_batch_size
    gap = state.args.batch_wait_ms / 1000.0
    cap = max(state.args.max_batch_wait_ms, state.args.batch_wait_ms) / 1000.0
    while True:
        first = await q.get()
        batch = [first]
        # Inputs that queued while the worker was busy are taken at once; then keep collecting while
        # inputs arrive less than `gap` apart, for at most `cap` after the first one arrived.
        hard_deadline = first.enqueued + cap
        last_arrival = first.enqueued
        while len(batch) < max_batch:
            try:
                it = q.get_nowait()
            except asyncio.QueueEmpty:
                now = time.monotonic()
                remaining = min(last_arrival + gap, hard_deadline) - now
                if remaining <= 0:
                    break
                try:
                    it = await asyncio.wait_for(q.get(), remaining)
                except TimeoutError:
                    break
            batch.append(it)
            last_arrival = max(last_arrival, it.enqueued)
        batch = [it for it in batch if not it.cancelled]
        if not batch:
            continue
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch of %d inputs, arrivals spread %.1f ms, oldest waited %.1f ms", len(batch),
                      1000 * (batch[-1].enqueued - batch[0].enqueued), 1000 * (time.monotonic() - batch[0].enqueued))
        try:
            results = await loop.run_in_executor(state.executor, _run_batch, state, batch)
        except BaseException as e:  # noqa: BLE001
            results = [e] * len(batch)
        for it, r in zip(batch, results, strict=True):
            if it.future.done():
                continue
            if isinstance(r, BaseException):
                it.future.set_exception(r)
            else:
                it.future.set_result(r)


def _load(state: State, on_fail: Any) -> None:
    try:
        _quiet_transformers()
        if state.args.threads > 0:
            import torch

            torch.set_num_threads(state.args.threads)
        log.info("loading model from %s", state.args.model_dir)
        loaded = modeling.load_model(state.args.model_dir, base_model=state.args.base_model,
                                     device=state.args.device)
        # One tiny warm-up so the first request does not pay for lazy initialisation.
        modeling.generate_batch(loaded, ["warm up"], [modeling.GenerationParams(max_new_tokens=2)])
        if loaded.kind == "full" and not loaded.is_seq2seq:  # a base model: adapters may be attached
            pool = adapters.AdapterPool(loaded, state.args.max_adapters)
            for name, source in state.pending_adapters.items():
                pool.register(name, source)
            state.pool = pool
            state.templated = dataclasses.replace(loaded, apply_template=True)
        state.loaded = loaded
        state.status = "ready"
        log.info("READY model=%s kind=%s base=%s device=%s load_seconds=%.1f", loaded.model_dir,
                 loaded.kind, loaded.base_model, loaded.device, loaded.load_seconds)
    except BaseException as e:  # noqa: BLE001
        reason = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, modeling.ModelLoadError):
            reason = f"{type(e).__name__}: {reason}"
        state.status = "failed"
        state.error = reason
        sys.stderr.write(f"LOAD_ERROR: {reason[:2000]}\n")
        sys.stderr.flush()
        on_fail()


def _quiet_transformers() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


def create_app(state: State, on_load_fail: Any = None) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        state.queue = asyncio.Queue()
        task = asyncio.create_task(_batcher(state))
        loader = threading.Thread(target=_load, args=(state, on_load_fail or (lambda: None)),
                                  name="model-loader", daemon=True)
        loader.start()
        try:
            yield
        finally:
            state.stopping = True
            task.cancel()
            state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="LLM Tuner inference server", lifespan=lifespan, docs_url=None, redoc_url=None)
    if state.token:
        app.add_middleware(_RequireToken, token=state.token)

    def ping() -> Any:
        if state.status == "ready":
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": state.status, "error": state.error}, status_code=503)

    app.get("/ping")(ping)
    app.get("/health")(ping)

    @app.get("/info")
    def info() -> Any:
        facts = state.loaded.info() if state.loaded else {"model_dir": state.args.model_dir}
        return {
            **facts,
            "status": state.status,
            "error": state.error,
            "max_batch_size": state.args.max_batch_size,
            "batch_wait_ms": state.args.batch_wait_ms,
            "max_batch_wait_ms": state.args.max_batch_wait_ms,
            "timeout_s": state.args.timeout,
            "batches_run": state.batches_run,
            "inputs_generated": state.inputs_generated,
            "largest_batch": state.largest_batch,
            "requests_served": state.requests_served,
            "requests_failed": state.requests_failed,
            "uptime_s": round(time.time() - state.started, 1),
        }

    @app.post("/invocations")
    async def invocations(request: Request) -> Any:
        if state.status != "ready" or state.queue is None:
            return _error(503, "model_not_ready", f"the model is {state.status}"
                          + (f": {state.error}" if state.error else ""))
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as e:
            return _error(400, "invalid_json", f"request body is not valid JSON: {e}")
        try:
            ext = _extensions(state, body)
            texts, params, was_list = modeling.parse_request(body, max_inputs=state.args.max_inputs)
            if ext["stream"] and (was_list and len(texts) != 1):
                raise modeling.ParamError([("stream", "streams one input at a time")])
        except modeling.ParamError as e:
            return _error(422, "invalid_parameters", str(e), e.param, e.details())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [
            _Item(t, params, loop.create_future(), loop, now, now + state.args.timeout, adapter=ext["adapter"],
                  messages=ext["messages"]) for t in texts
        ]
        if ext["stream"]:
            return _stream(state, items[0])
        for it in items:
            state.queue.put_nowait(it)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(it.future for it in items), return_exceptions=True), state.args.timeout)
        except TimeoutError:
            results = [TimeoutError()]
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failures:
            for it in items:
                it.cancelled = True
            state.requests_failed += 1
            param_errors = [(i, r) for i, r in failures if isinstance(r, modeling.ParamError)]
            if param_errors:
                errs = [(f"inputs[{i}]" if was_list and p == "inputs" else p, m)
                        for i, e in param_errors for p, m in e.errors]
                pe = modeling.ParamError(errs)
                return _error(422, "invalid_parameters", str(pe), pe.param, pe.details())
            if any(isinstance(r, TimeoutError) for _, r in failures):
                return _error(504, "generation_timeout",
                              f"generation took longer than {state.args.timeout:g} s")
            e = failures[0][1]
            return _error(500, "generation_failed", f"{type(e).__name__}: {e}")
        state.requests_served += 1
        return [modeling.format_result(r) for r in results]

    @app.get("/adapters")
    def list_adapters() -> Any:
        return state.pool.info() if state.pool else {"registered": sorted(state.pending_adapters)}

    @app.put("/adapters/{name}")
    async def put_adapter(name: str, request: Request) -> Any:
        try:
            source = (await request.json()).get("source")
        except (ValueError, AttributeError):
            source = None
        if not isinstance(source, str) or not Path(source).exists():
            return _error(422, "invalid_parameters", "source must be an adapter folder or archive on this "
                          "machine", "source")
        if state.status == "ready" and state.pool is None:
            return _error(409, "single_model", "this server serves one model; start it on a base model to "
                          "attach adapters")
        (state.pool.register if state.pool else state.pending_adapters.__setitem__)(name, source)
        return {"name": name, "registered": True}

    @app.delete("/adapters/{name}")
    async def delete_adapter(name: str) -> Any:
        known = state.pending_adapters.pop(name, None) is not None
        if state.pool is not None:  # unloading touches the model: on the generate thread
            known = await asyncio.get_running_loop().run_in_executor(state.executor, state.pool.remove, name)
        if not known:
            return _error(404, "unknown_adapter", f"no adapter {name!r} is attached", "name")
        return {"name": name, "registered": False}

    return app


MESSAGE_ROLES = ("system", "user", "assistant", "tool")


def _extensions(state: State, body: Any) -> dict[str, Any]:
    """Take "messages", "adapter" and "stream" out of a request body (see the module doc)."""
    if not isinstance(body, dict):
        return {"messages": None, "adapter": None, "stream": False}
    errors: list[tuple[str, str]] = []
    messages, adapter, stream = body.pop("messages", None), body.pop("adapter", None), body.pop("stream", False)
    if messages is not None:
        if "inputs" in body:
            errors.append(("messages", "give inputs or messages, not both"))
        elif not isinstance(messages, list) or not messages:
            errors.append(("messages", "must be a non-empty list of {role, content}"))
        else:
            for i, m in enumerate(messages):
                good = isinstance(m, dict) and m.get("role") in MESSAGE_ROLES and isinstance(m.get("content"), str)
                if not good:
                    errors.append((f"messages[{i}]", f"must be {{role: {'|'.join(MESSAGE_ROLES)}, content: str}}"))
            body["inputs"] = ""
    if adapter is not None and not isinstance(adapter, str):
        errors.append(("adapter", "must be a string"))
    elif adapter not in (None, adapters.BASE) and state.pool is None:
        errors.append(("adapter", "this server serves a single model; leave adapter out"))
    if not isinstance(stream, bool):
        errors.append(("stream", "must be true or false"))
    if errors:
        raise modeling.ParamError(errors)
    return {"messages": messages, "adapter": adapter, "stream": stream}


def _stream(state: State, item: _Item) -> Any:
    """Answer one input as server-sent events, each text delta as soon as its token is generated."""
    from fastapi.responses import StreamingResponse

    assert state.loaded is not None and state.queue is not None
    deltas: asyncio.Queue[str] = asyncio.Queue()
    p = item.params
    eos = set() if p.ignore_eos else modeling._eos_ids(state.loaded)
    item.sink = streaming.TextSink(state.loaded.tokenizer, eos, p.max_new_tokens, p.stop,
                                   lambda d: item.loop.call_soon_threadsafe(deltas.put_nowait, d))
    state.queue.put_nowait(item)

    def event(data: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(data)}\n\n".encode()

    async def events() -> Any:
        try:
            while True:
                getter = asyncio.ensure_future(deltas.get())
                done, _ = await asyncio.wait({getter, item.future}, timeout=max(0.0, item.deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield event({"text": getter.result()})
                    continue
                getter.cancel()
                while not deltas.empty():
                    yield event({"text": deltas.get_nowait()})
                if not done:
                    raise TimeoutError
                r = item.future.result()
                state.requests_served += 1
                yield event({"text": item.sink.rest(r["generated_text"]), **modeling.format_result(r)})
                return
        except BaseException as e:  # noqa: BLE001 - the stream has begun: the error is its last event
            item.cancelled = True
            if isinstance(e, asyncio.CancelledError | GeneratorExit):  # the client went away
                raise
            state.requests_failed += 1
            if isinstance(e, modeling.ParamError):
                err = {"code": "invalid_parameters", "message": str(e), "param": e.param}
            elif isinstance(e, TimeoutError):
                err = {"code": "generation_timeout", "message": f"generation took longer than {state.args.timeout:g} s"}
            else:
                err = {"code": "generation_failed", "message": f"{type(e).__name__}: {e}"}
            yield event({"error": err})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    state = State(args=args, pending_adapters=dict(a.split("=", 1) for a in args.adapter),
                  token=os.environ.pop(TOKEN_ENV, ""))
    holder: dict[str, Any] = {}

    def fail() -> None:
        srv = holder.get("server")
        if srv is not None:
            srv.should_exit = True
        else:  # pragma: no cover - the server always exists by then
            os._exit(2)

    app = create_app(state, on_load_fail=fail)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5, lifespan="on",
                            # keep clients' connections (and a load balancer's) open between calls
                            timeout_keep_alive=75)
    server = uvicorn.Server(config)
    holder["server"] = server
    log.info("listening on http://%s:%d (model loading in the background)", args.host, args.port)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind
        if state.status != "failed":
            sys.stderr.write(f"LOAD_ERROR: server could not start on {args.host}:{args.port}\n")
        return int(e.code or 1)
    if state.status == "failed":
        return 2
    if not server.started:
        sys.stderr.write(f"LOAD_ERROR: server could not start on {args.host}:{args.port}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
