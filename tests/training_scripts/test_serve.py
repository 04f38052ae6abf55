"""training_scripts/modeling.py and serve.py on a tiny trained-like LoRA adapter.

The adapter is built here (not by train.py): the built-in tiny Llama, a LoRA on q/v with
random lora_B weights (so it changes outputs), saved with its tokenizer and a
training_summary.json exactly as train.py writes them.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "training_scripts"
sys.path.insert(0, str(SCRIPTS))

import adapters  # noqa: E402
import modeling  # noqa: E402
from tests.deployments.conftest import save_adapter  # noqa: E402

PROMPTS = [
    "Hello",
    "How do I reset my password?",
    "What are your business hours? Please answer in one short sentence, thanks.",
    "x",
    "Machine learning is a subset of artificial intelligence that lets computers learn",
    "Once upon a time",
]


def make_trained_adapter(root: Path) -> tuple[Path, Path]:
    """(base dir, adapter model dir) under `root`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.training.tiny_model import build_tiny_model

    base = build_tiny_model(root / "base")
    model_dir = root / "model"
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    peft_model.save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(model_dir))
    (model_dir / "training_summary.json").write_text(json.dumps(
        {"base_model": str(base), "task": "causal_lm", "prompt_template": "llmtuner-plain-v1"}
    ))
    return base, model_dir


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """The tiny model gains nothing from intra-op threads, and on a busy shared CPU extra
    threads spin and make every step several times slower. Restored after this module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_trained_adapter(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="session")
def loaded(trained: tuple[Path, Path]) -> modeling.Loaded:
    return modeling.load_model(trained[1])


def greedy(n: int = 12, **kw: Any) -> modeling.GenerationParams:
    return modeling.GenerationParams.from_dict({"max_new_tokens": n, "return_full_text": False, **kw})


# ------------------------------------------------------------------ loading


def test_load_adapter_dir(loaded: modeling.Loaded, trained: tuple[Path, Path]) -> None:
    assert loaded.kind == "lora"
    assert loaded.base_model == str(trained[0])
    assert loaded.apply_template and not loaded.is_seq2seq
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    assert not loaded.model.training
    assert not hasattr(loaded.model, "peft_config")  # merged for speed


def test_adapter_changes_outputs(loaded: modeling.Loaded, trained: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(trained[0])).eval()
    ids = torch.tensor([loaded.tokenizer("Hello world")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, loaded.model(ids).logits, atol=1e-3)


def test_load_from_tarball(loaded: modeling.Loaded, trained: tuple[Path, Path], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMTUNER_MODEL_CACHE", str(tmp_path / "cache"))
    tar = tmp_path / "model.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:  # SageMaker's layout: files at the archive's root
        for f in trained[1].iterdir():
            tf.add(f, arcname=f.name)
    from_tar = modeling.load_model(tar)
    assert from_tar.kind == "lora"
    assert Path(from_tar.model_dir).is_relative_to(tmp_path / "cache")
    p = greedy(10)
    assert modeling.generate_batch(from_tar, PROMPTS[:2], [p, p]) == modeling.generate_batch(
        loaded, PROMPTS[:2], [p, p])


def test_tar_with_parent_path_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMTUNER_MODEL_CACHE", str(tmp_path / "cache"))
    tar = tmp_path / "evil.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for name in ("config.json", "../evil"):
            data = b"{}"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(modeling.ModelLoadError, match="unsafe path"):
        modeling.load_model(tar)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()

    abs_tar = tmp_path / "abs.tar"
    with tarfile.open(abs_tar, "w") as tf:
        info = tarfile.TarInfo("/tmp/llmtuner-evil-abs")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(modeling.ModelLoadError, match="unsafe path"):
        modeling.load_model(abs_tar)


def test_missing_model_dir_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(modeling.ModelLoadError, match="does not exist"):
        modeling.load_model(tmp_path / "nope")


def test_merged_and_seq2seq_dirs(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from app.training.tiny_model import build_tiny_model

    d = tmp_path / "with-merged"
    shutil.copytree(trained[1], d)
    shutil.copytree(trained[0], d / "merged")
    m = modeling.load_model(d)
    assert m.kind == "merged" and m.apply_template

    t5 = modeling.load_model(build_tiny_model(tmp_path / "t5", family="t5"))
    assert t5.kind == "full" and t5.is_seq2seq and not t5.apply_template and t5.task == "seq2seq_lm"
    p = greedy(6)
    assert modeling.generate_batch(t5, PROMPTS[:3], [p] * 3) == [
        modeling.generate_batch(t5, [t], [p])[0] for t in PROMPTS[:3]]


def test_base_model_resolution(trained: tuple[Path, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    base = str(trained[0])
    monkeypatch.delenv("LLMTUNER_BASE_MODEL", raising=False)
    pick = modeling._pick_base
    summary = {"base_model": "llmtuner/tiny-llama", "base_model_source": base}
    assert pick(tmp_path, None, summary, {"base_model_name_or_path": "llmtuner/tiny-llama"}) == base
    assert pick(tmp_path, None, {}, {"base_model_name_or_path": "org/hub-id"}) == "org/hub-id"
    assert pick(tmp_path, "/explicit", summary, {}) == "/explicit"
    monkeypatch.setenv("LLMTUNER_BASE_MODEL", "/from-env")
    assert pick(tmp_path, None, summary, {}) == "/from-env"


# ------------------------------------------------------------------ parameters


def test_parameter_validation_names_every_param() -> None:
    with pytest.raises(modeling.ParamError) as ei:
        modeling.GenerationParams.from_dict({
            "max_new_tokens": 0, "temperature": 9, "top_p": 0, "top_k": -1, "do_sample": "yes",
            "repetition_penalty": 0, "stop": ["ok", "x" * 65], "seed": -3, "frobnicate": 1,
        })
    params = {p for p, _ in ei.value.errors}
    assert params == {
        "parameters.max_new_tokens", "parameters.temperature", "parameters.top_p", "parameters.top_k",
        "parameters.do_sample", "parameters.repetition_penalty", "parameters.stop[1]", "parameters.seed",
        "parameters.frobnicate",
    }
    with pytest.raises(modeling.ParamError) as ei:
        modeling.GenerationParams.from_dict({"max_new_tokens": True, "stop": ["a"] * 9})
    assert {p for p, _ in ei.value.errors} == {"parameters.max_new_tokens", "parameters.stop"}
    with pytest.raises(modeling.ParamError) as ei:
        modeling.parse_request({"inputs": ["ok", 3], "parameters": {"top_p": 1.5}})
    assert {p for p, _ in ei.value.errors} == {"inputs[1]", "parameters.top_p"}


def test_sampling_rule() -> None:
    g = modeling.GenerationParams.from_dict
    assert not g({}).do_sample
    assert g({"temperature": 0.7}).do_sample
    assert g({"top_p": 0.9}).do_sample
    assert not g({"temperature": 0}).do_sample
    assert not g({"temperature": 0, "do_sample": True}).do_sample
    assert not g({"temperature": 0.7, "do_sample": False}).do_sample
    assert g({"do_sample": True}).do_sample
    assert g({"stop": "END"}).stop == ("END",)
    # greedy requests that differ only in ignored sampling knobs share a batch
    assert g({"temperature": 0.5, "do_sample": False}).group_key() == g({}).group_key()


# ------------------------------------------------------------------ generation


def test_greedy_batched_equals_one_by_one(loaded: modeling.Loaded) -> None:
    p = greedy(16)
    batched = modeling.generate_batch(loaded, PROMPTS, [p] * len(PROMPTS))
    single = [modeling.generate_batch(loaded, [t], [p])[0] for t in PROMPTS]
    assert batched == single
    assert len({r["generated_text"] for r in single}) > 1
    lengths = {r["prompt_tokens"] for r in single}
    assert len(lengths) > 2  # really different lengths: left padding was exercised


def test_per_request_limits_and_full_text(loaded: modeling.Loaded) -> None:
    short, long_ = greedy(3), greedy(9)
    full = modeling.GenerationParams.from_dict({"max_new_tokens": 9})
    a, b, c = modeling.generate_batch(loaded, [PROMPTS[1], PROMPTS[2], PROMPTS[2]], [short, long_, full])
    assert a["completion_tokens"] == 3 and a["finish_reason"] == "length"
    assert b["completion_tokens"] == 9
    assert c["generated_text"] == PROMPTS[2] + b["generated_text"]
    alone = modeling.generate_batch(loaded, [PROMPTS[1]], [greedy(9)])[0]["generated_text"]
    assert alone.startswith(a["generated_text"])


def test_raw_skips_template(loaded: modeling.Loaded) -> None:
    templ = modeling.prepare(loaded, "Hi", greedy())
    raw = modeling.prepare(loaded, "Hi", greedy(raw=True))
    assert templ.prompt == "### User:\nHi\n\n### Assistant:\n" and raw.prompt == "Hi"
    assert len(raw.ids) < len(templ.ids)


def test_stop_sequences(loaded: modeling.Loaded) -> None:
    base = modeling.generate_batch(loaded, [PROMPTS[1]], [greedy(24)])[0]
    text = base["generated_text"]
    # a stop string taken from the middle of the greedy completion
    cut = next(i for i in range(3, len(text) - 2) if text[i:i + 2].isascii() and text[i:i + 2].isalnum())
    stop = text[cut:cut + 2]
    first = text.find(stop)
    out = modeling.generate_batch(loaded, [PROMPTS[1], PROMPTS[1]], [greedy(24, stop=[stop]), greedy(24)])
    assert out[0]["generated_text"] == text[:first]
    assert out[0]["finish_reason"] == "stop"
    assert out[0]["completion_tokens"] < 24
    assert out[1] == base  # the other row of the batch ran on


def test_seed_reproducibility(loaded: modeling.Loaded) -> None:
    def sample(seed: int) -> list[str]:
        p = modeling.GenerationParams.from_dict(
            {"max_new_tokens": 16, "temperature": 1.5, "seed": seed, "return_full_text": False})
        return [r["generated_text"] for r in modeling.generate_batch(loaded, PROMPTS[:3], [p] * 3)]

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c
    # a seeded request gives the same text alone as inside a batch
    p = modeling.GenerationParams.from_dict(
        {"max_new_tokens": 16, "temperature": 1.5, "seed": 7, "return_full_text": False})
    assert modeling.generate_batch(loaded, [PROMPTS[1]], [p])[0]["generated_text"] == a[1]


def test_input_too_long(loaded: modeling.Loaded) -> None:
    with pytest.raises(modeling.ParamError) as ei:
        modeling.generate_batch(loaded, ["word " * 2000], [greedy()])
    assert ei.value.param == "inputs"


# ------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_dir: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SM_MODEL_DIR", None)
    proc = subprocess.Popen(
        # one torch thread: on a shared, busy CPU more threads spin and slow start-up several times over
        [sys.executable, str(SCRIPTS / "serve.py"), "--model-dir", str(model_dir), "--port", str(port),
         "--threads", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, cwd=str(ROOT),
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, deadline_s: float = 180) -> list[int]:
    seen: list[int] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            code = httpx.get(f"{url}/ping", timeout=2).status_code
            if not seen or seen[-1] != code:
                seen.append(code)
            if code == 200:
                return seen
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not ready in {deadline_s}s: {log.read_text()}")


@pytest.fixture(scope="module")
def server(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    # a long batch window makes the concurrency test deterministic
    proc, url = start_server(trained[1], log, "--batch-wait-ms", "300", "--max-batch-size", "8")
    try:
        seen = wait_ready(proc, url, log)
        yield url, seen
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ping_and_info(server: Any, trained: tuple[Path, Path]) -> None:
    url, seen = server
    assert seen[-1] == 200 and set(seen) <= {503, 200}
    assert httpx.get(f"{url}/health").status_code == 200
    info = httpx.get(f"{url}/info").json()
    assert info["status"] == "ready" and info["kind"] == "lora"
    assert info["base_model"] == str(trained[0]) and info["task"] == "causal_lm"
    assert info["prompt_template"] == "llmtuner-plain-v1"


def test_invocations(server: Any, loaded: modeling.Loaded) -> None:
    url, _ = server
    r = httpx.post(f"{url}/invocations", json={"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 8}},
                   timeout=30)
    assert r.status_code == 200, r.text
    [item] = r.json()
    expected = modeling.generate_batch(loaded, [PROMPTS[0]], [greedy(8, return_full_text=True)])[0]
    assert item["generated_text"] == expected["generated_text"]
    assert item["generated_text"].startswith(PROMPTS[0])
    assert item["details"] == {"prompt_tokens": expected["prompt_tokens"], "completion_tokens": 8,
                               "finish_reason": "length"}
    r = httpx.post(f"{url}/invocations", json={"inputs": PROMPTS[:3],
                                               "parameters": {"max_new_tokens": 5, "return_full_text": False}},
                   timeout=30)
    assert r.status_code == 200 and len(r.json()) == 3
    assert all(set(x) == {"generated_text", "details"} for x in r.json())


def test_invocations_errors(server: Any) -> None:
    url, _ = server
    r = httpx.post(f"{url}/invocations", json={"inputs": "hi", "parameters": {"top_p": 1.5, "max_new_tokens": 0}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_parameters" and err["param"] == "parameters.max_new_tokens"
    assert {d["param"] for d in err["details"]} == {"parameters.top_p", "parameters.max_new_tokens"}
    assert err["message"]
    r = httpx.post(f"{url}/invocations", json={"parameters": {}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "inputs"
    r = httpx.post(f"{url}/invocations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{url}/invocations", json={"inputs": "word " * 2000})
    assert r.status_code == 422 and r.json()["error"]["param"] == "inputs"


def test_concurrent_requests_are_batched_and_match_sequential(server: Any) -> None:
    url, _ = server
    params = {"max_new_tokens": 12, "return_full_text": False}
    prompts = (PROMPTS * 2)[:8]
    with httpx.Client(timeout=60) as c:
        sequential = [c.post(f"{url}/invocations", json={"inputs": p, "parameters": params}).json()
                      for p in prompts]
        before = c.get(f"{url}/info").json()
    results: list[Any] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def call(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            results[i] = c.post(f"{url}/invocations", json={"inputs": prompts[i], "parameters": params}).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = httpx.get(f"{url}/info").json()
    assert results == sequential
    served = after["requests_served"] - before["requests_served"]
    batches = after["batches_run"] - before["batches_run"]
    assert served == len(prompts)
    assert batches < served, (batches, served)
    assert after["largest_batch"] > 1


def test_missing_model_dir_exits_with_load_error(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc, url = start_server(tmp_path / "does-not-exist", log)
    try:
        rc = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("LOAD_ERROR:")]
    assert len(lines) == 1 and "does-not-exist" in lines[0], log.read_text()


def test_not_ready_answers_503(trained: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    import serve

    state = serve.State(args=serve.parse_args(["--model-dir", str(trained[1])]))
    client = TestClient(serve.create_app(state))  # no lifespan: the model never starts loading
    assert client.get("/ping").status_code == 503
    assert client.get("/health").json()["status"] == "loading"
    r = client.post("/invocations", json={"inputs": "hi"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"


def test_a_server_with_a_token_answers_401_without_it(trained: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    import serve

    state = serve.State(args=serve.parse_args(["--model-dir", str(trained[1])]), token="s3cret")
    client = TestClient(serve.create_app(state))  # no lifespan: the model never starts loading
    for headers in ({}, {serve.TOKEN_HEADER: "wrong"}):
        for method, path in (("GET", "/ping"), ("GET", "/info"), ("POST", "/invocations"), ("GET", "/adapters"),
                             ("PUT", "/adapters/a"), ("DELETE", "/adapters/a")):
            r = client.request(method, path, headers=headers, json={"inputs": "hi"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (method, path, r.text)
    ok = {serve.TOKEN_HEADER: "s3cret"}
    assert client.get("/ping", headers=ok).status_code == 503  # past the check: the model is still loading
    assert client.get("/info", headers=ok).status_code == 200


def test_generation_timeout_answers_504_and_frees_the_worker(trained: tuple[Path, Path]) -> None:
    from fastapi.testclient import TestClient

    import serve

    state = serve.State(args=serve.parse_args(["--model-dir", str(trained[1]), "--timeout", "1"]))
    with TestClient(serve.create_app(state)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ping").status_code != 200:
            assert state.status != "failed" and time.monotonic() < deadline, state.error
            time.sleep(0.05)
        t0 = time.monotonic()
        r = client.post("/invocations", json={"inputs": "hi", "parameters": {"max_new_tokens": 4096,
                                                                            "ignore_eos": True}})
        assert r.status_code == 504 and r.json()["error"]["code"] == "generation_timeout", r.text[:300]
        assert time.monotonic() - t0 < 5
        r = client.post("/invocations", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 200, r.text  # the long generation was cancelled, not left running
        info = client.get("/info").json()
        assert info["requests_failed"] == 1 and info["requests_served"] == 1


# ------------------------------------------------------------------ streaming, chat messages, many adapters


def stream_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{url}/invocations", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]


def test_stream_gives_the_same_text_token_by_token(server: Any, loaded: modeling.Loaded) -> None:
    url, _ = server

    def both_ways(params: dict[str, Any]) -> tuple[str, int]:
        body = {"inputs": PROMPTS[1], "parameters": {"max_new_tokens": 10, "return_full_text": False, **params}}
        [whole] = httpx.post(f"{url}/invocations", json=body, timeout=60).json()
        events = stream_events(url, body)
        assert "".join(e["text"] for e in events) == whole["generated_text"]
        assert events[-1]["details"] == whole["details"]
        return str(whole["generated_text"]), len(events)

    first, n = both_ways({})
    assert n > 2  # text arrives in pieces, then the result
    # a stop sequence met mid-answer (its start is held back while the text might still turn into it)
    stop = next(first[k:k + 3] for k in range(2, len(first) - 3) if first.index(first[k:k + 3]) >= 2)
    assert both_ways({"stop": [stop]})[0] == first[: first.index(stop)]
    r = httpx.post(f"{url}/invocations", json={"inputs": ["a", "b"], "stream": True}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "stream"


def test_messages_are_rendered_with_the_training_template(server: Any, loaded: modeling.Loaded) -> None:
    url, _ = server
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[1]},
                {"role": "assistant", "content": "Go to settings."}, {"role": "user", "content": "And then?"}]
    r = httpx.post(f"{url}/invocations", json={"messages": messages, "parameters": {"max_new_tokens": 6}}, timeout=60)
    assert r.status_code == 200, r.text
    prepared = modeling.prepare(loaded, "", greedy(6), messages=messages)
    assert prepared.prompt.endswith("### User:\nAnd then?\n\n### Assistant:\n") and "Be brief.\n\n" in prepared.prompt
    assert r.json()[0]["details"]["prompt_tokens"] == len(prepared.ids)
    bad = httpx.post(f"{url}/invocations", json={"messages": [{"role": "robot", "content": "x"}]}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "messages[0]"
    one = httpx.post(f"{url}/invocations", json={"inputs": "x", "adapter": "other"}, timeout=30)
    assert one.status_code == 422 and one.json()["error"]["param"] == "adapter"
    put = httpx.put(f"{url}/adapters/x", json={"source": str(SCRIPTS)}, timeout=30)
    assert put.status_code == 409 and put.json()["error"]["code"] == "single_model"


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    return save_adapter(base, out, seed, scale=0.5)


@pytest.fixture(scope="module")
def multi_server(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A base-model server with one adapter resident at a time; "a" given at start, "b" attached later."""
    root = tmp_path_factory.mktemp("multi")
    a, b = make_adapter(trained[0], root / "a", 1), make_adapter(trained[0], root / "b", 2)
    log = root / "serve.log"
    proc, url = start_server(trained[0], log, "--batch-wait-ms", "300", "--max-adapters", "1", "--adapter", f"a={a}")
    try:
        wait_ready(proc, url, log)
        yield url, b
    finally:
        proc.terminate()
        proc.wait(10)


def test_many_adapters_share_one_batch_and_load_on_demand(multi_server: Any) -> None:
    url, b = multi_server
    assert httpx.put(f"{url}/adapters/b", json={"source": str(b)}, timeout=30).status_code == 200
    assert httpx.get(f"{url}/adapters").json()["resident"] == []  # registered, loaded on first use

    def ask(adapter: str) -> Any:
        body = {"inputs": PROMPTS[1], "adapter": adapter, "parameters": {"max_new_tokens": 8, "raw": True}}
        return httpx.post(f"{url}/invocations", json=body, timeout=60).json()

    names = ["a", "b", "__base__"]
    one_by_one = {n: ask(n) for n in names}
    assert len({json.dumps(v) for v in one_by_one.values()}) == 3  # each adapter answers its own way
    info = httpx.get(f"{url}/adapters").json()
    assert info["evictions"] >= 1 and len(info["resident"]) == 1  # the cap of one: least recently used unloaded

    before = httpx.get(f"{url}/info").json()["largest_batch"]
    together: dict[str, Any] = {}
    barrier = threading.Barrier(len(names))

    def call(n: str) -> None:
        barrier.wait()
        together[n] = ask(n)

    threads = [threading.Thread(target=call, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == one_by_one  # a mixed-adapter batch answers as each would alone
    assert httpx.get(f"{url}/info").json()["largest_batch"] >= max(before, 3)

    loaded = httpx.get(f"{url}/adapters").json()
    assert loaded["resident_adapter_parameters"] > 0
    assert httpx.delete(f"{url}/adapters/a", timeout=30).status_code == 200
    assert httpx.delete(f"{url}/adapters/b", timeout=30).status_code == 200
    after = httpx.get(f"{url}/adapters").json()
    assert after["registered"] == [] and after["resident_adapter_parameters"] == 0  # weights freed
    r = httpx.post(f"{url}/invocations", json={"inputs": "x", "adapter": "a"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "adapter"
    assert httpx.delete(f"{url}/adapters/a", timeout=30).status_code == 404
    assert ask("__base__") == one_by_one["__base__"]  # the base alone, after every adapter left


def test_batched_lora_forward_equals_peft_loop(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The two-matmul mixed-adapter forward gives what peft's per-adapter loop gives."""
    import torch
    from peft.tuners.lora import layer

    loaded = modeling.load_model(trained[0])
    pool = adapters.AdapterPool(loaded, 4)
    for name, seed in (("a", 1), ("b", 2)):
        pool.register(name, str(make_adapter(trained[0], tmp_path / name, seed)))
    pool.ensure({"a", "b"})
    enc = loaded.tokenizer(PROMPTS[:4], return_tensors="pt", padding=True)
    names = ["a", "b", "__base__", "b"]
    outs = []
    try:
        for forward in (adapters.batched_lora_forward, adapters._PEFT_MIXED):
            layer.Linear._mixed_batch_forward = forward
            with torch.inference_mode():
                outs.append(loaded.model(**enc, adapter_names=names).logits)
    finally:
        layer.Linear._mixed_batch_forward = adapters.batched_lora_forward
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[0][0], outs[0][1])  # rows of different adapters differ
