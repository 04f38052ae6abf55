"""training_scripts/train.py: configuration in-process; real runs on the tiny models as subprocesses.

The subprocess runs are independent, so they start together (a few at a time) when the module's
first run fixture is asked for, and each test waits only for the run it reads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training_scripts" / "train.py"

QA = [
    ("How do I reset my password?", "Go to the login page and click Forgot Password."),
    ("What are your business hours?", "Monday to Friday, 9 AM to 6 PM."),
    ("What is machine learning?", "A subset of artificial intelligence."),
]
EVENT_KEYS = {
    "start": ["event", "total_steps", "num_train_examples", "num_validation_examples", "truncated_examples",
              "epochs", "device"],
    "log": ["event", "step", "epoch", "train_loss", "learning_rate", "tokens_per_second", "grad_norm"],
    "eval": ["event", "step", "epoch", "eval_loss"],
    "epoch": ["event", "step", "epoch"],
    "checkpoint": ["event", "step", "path"],
    "early_stop": ["event", "step", "best_step", "best_eval_loss"],
    "end": ["event", "step", "epoch", "train_loss", "eval_loss", "train_runtime"],
    "resume": ["event", "step"],
    "error": ["event", "code", "message"],
}


def load_train_module() -> Any:
    spec = importlib.util.spec_from_file_location("llmtuner_train_script", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


train = load_train_module()


def chat(q: str, a: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def write_jsonl(directory: Path, records: list[dict[str, Any]], name: str = "data.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return directory


# --------------------------------------------------------------------------- runner


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.model_dir / "training_summary.json").read_text())

    @property
    def failure(self) -> str:
        return (self.root / "output" / "failure").read_text()


def run_script(root: Path, hps: dict[str, Any], train_dir: Path, val_dir: Path | None = None) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env |= {
        # SageMaker passes every value as a JSON-encoded string
        "SM_HPS": json.dumps({k: json.dumps(v) for k, v in hps.items()} | {"sagemaker_program": '"train.py"'}),
        "SM_CHANNEL_TRAIN": str(train_dir), "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"), "SM_CHECKPOINT_DIR": str(root / "checkpoints"),
    }
    if val_dir is not None:
        env["SM_CHANNEL_VALIDATION"] = str(val_dir)
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr, root)


def ok(result: Result) -> Result:
    assert result.rc == 0, f"train.py failed ({result.rc}):\n{result.stderr[-4000:]}\n{result.stdout[-2000:]}"
    return result


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from app.training.tiny_model import build_tiny_model

    base = tmp_path_factory.mktemp("tiny")
    return {"llama": build_tiny_model(base / "llama"), "t5": build_tiny_model(base / "t5", family="t5")}


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    records = [chat(*QA[i % 3]) for i in range(40)]
    long_answer = chat("Say it.", "the quick brown fox jumps over the lazy dog " * 12)
    long_prompt = chat("words " * 200, "ok")  # no response token survives max_length 64
    return {
        "train": write_jsonl(d / "train", [*records, long_answer, long_prompt]),
        "plain_train": write_jsonl(d / "plain_train", records),
        "validation": write_jsonl(d / "validation", [chat(*QA[i % 3]) for i in range(6)]),
        "empty": write_jsonl(d / "empty", []),
    }


@pytest.fixture(scope="session")
def runs(tiny: dict[str, Path], datasets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Start every run at once, two at a time; each test waits for the one it needs."""
    out = tmp_path_factory.mktemp("runs")
    llama, t5 = str(tiny["llama"]), str(tiny["t5"])
    jobs: dict[str, tuple[Any, ...]] = {
        "main": (run_script, out / "main", {
            "base_model": llama, "epochs": 3, "batch_size": 4, "learning_rate": 5e-3, "max_steps": 24,
            "logging_steps": 4, "eval_steps": 8, "max_length": 64, "merge_adapter": True,
            "base_model_name": "llmtuner/tiny-llama"}, datasets["train"], datasets["validation"]),
        # the acceleration layer against the plain recipe: without dropout the same maths, the same losses
        "accel": (run_script, out / "accel", {**SHORT, "base_model": llama}, datasets["plain_train"]),
        "plain": (run_script, out / "plain", {**SHORT, "base_model": llama, "cpu_accel": False},
                  datasets["plain_train"]),
        "early": (run_script, out / "early", {
            "base_model": llama, "batch_size": 8, "learning_rate": 1e-3, "max_steps": 20, "logging_steps": 2,
            "eval_steps": 2, "early_stopping_patience": 1, "early_stopping_threshold": 10.0,
            "save_total_limit": 1}, datasets["plain_train"], datasets["validation"]),
        "resume": (run_resume, out / "resume", llama, datasets["plain_train"]),
        "seq2seq": (run_script, out / "t5", {
            "base_model": t5, "batch_size": 4, "learning_rate": 5e-3, "max_steps": 3, "logging_steps": 1},
            datasets["plain_train"]),
        "full": (run_script, out / "full", {"base_model": llama, "use_lora": False, "max_steps": 2},
                 datasets["plain_train"]),
        "no_model": (run_script, out / "no_model", {"base_model": str(out / "nope")}, datasets["plain_train"]),
        "qlora": (run_script, out / "qlora", {"base_model": llama, "load_in_4bit": True}, datasets["plain_train"]),
        "no_data": (run_script, out / "no_data", {"base_model": llama}, datasets["empty"]),
    }
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future[Any]] = {name: pool.submit(*job) for name, job in jobs.items()}
    yield futures
    pool.shutdown(wait=True)


SHORT = {"batch_size": 4, "learning_rate": 5e-3, "max_steps": 6, "logging_steps": 1, "lora_dropout": 0.0,
         "bf16": False, "max_length": 64}


def run_resume(root: Path, llama: str, train_dir: Path) -> tuple[Result, Result]:
    hps = {"base_model": llama, "batch_size": 4, "learning_rate": 1e-3, "max_steps": 4, "save_steps": 2,
           "logging_steps": 1}
    first = run_script(root, hps, train_dir)
    second = run_script(root, hps | {"max_steps": 6}, train_dir) if first.rc == 0 else first
    return first, second


# --------------------------------------------------------------------------- configuration (in-process)


def parse(hps: dict[str, Any], has_model_channel: bool = False) -> Any:
    return train.config.parse(hps, has_model_channel)[0]


def test_hyperparameters_from_sm_hps_are_json_decoded() -> None:
    env = {"SM_HPS": json.dumps({
        "epochs": "2", "learning_rate": "0.001", "use_lora": "false", "lora_target_modules": '["q_proj"]',
        "base_model": "org/model", "eval_steps": "null", "sagemaker_program": '"train.py"', "task": '"causal_lm"'})}
    paths = train.Paths.from_env(env)
    hps = train.read_hyperparameters(env, ValueError)
    assert hps == {"epochs": 2, "learning_rate": 0.001, "use_lora": False, "lora_target_modules": ["q_proj"],
                   "base_model": "org/model", "eval_steps": None, "task": "causal_lm"}
    cfg = train.load_config(env, paths)  # "task" (set by the platform) is ignored
    assert (cfg.epochs, cfg.learning_rate, cfg.use_lora, cfg.lora_target_modules) == (2, 0.001, False, ["q_proj"])


def test_hyperparameters_json_file(tmp_path: Path) -> None:
    (tmp_path / "hyperparameters.json").write_text(json.dumps({"batch_size": "8", "bf16": "true"}))
    hps = train.read_hyperparameters({"SM_INPUT_CONFIG_DIR": str(tmp_path)}, ValueError)
    assert hps == {"batch_size": 8, "bf16": True}


def test_defaults_and_learning_rate_by_mode() -> None:
    lora, full = parse({"base_model": "m"}), parse({"base_model": "m", "use_lora": False})
    assert (lora.learning_rate, full.learning_rate) == (2e-4, 5e-5)
    assert (lora.epochs, lora.batch_size, lora.lora_rank, lora.max_length, lora.seed) == (3, 4, 16, 512, 42)
    assert lora.cpu_accel is True and lora.base_model_name is None
    assert parse({}, has_model_channel=True).base_model is None


def test_invalid_hyperparameters_name_every_field() -> None:
    bad = {"base_model": "m", "learning_rate": -0.1, "lora_rank": 0, "lr_scheduler_type": "sometimes",
           "batch_size": "x", "lora_dropout": 1.5, "use_lora": "maybe", "epochs": 101, "max_steps": 100_001}
    env = {"SM_HPS": json.dumps(bad)}
    with pytest.raises(train.TrainError) as info:
        train.load_config(env, train.Paths.from_env(env))
    err = info.value
    assert err.code == "invalid_hyperparameters"
    for field in ("learning_rate", "lora_rank", "lr_scheduler_type", "batch_size", "lora_dropout", "use_lora",
                  "epochs", "max_steps"):
        assert f"{field}:" in err.message


@pytest.mark.parametrize(("bf16", "fp16"), [(None, None), (True, None), (False, None), (None, True)])
def test_cpu_runtime_uses_bf16_autocast_only_where_native(bf16: bool | None, fp16: bool | None) -> None:
    rt = train.pick_runtime(parse({"bf16": bf16, "fp16": fp16, "base_model": "x"}))
    assert rt.device == "cpu" and rt.fp16 is False
    assert rt.bf16 is (train.cpu_has_native_bf16() and bf16 is not False)


def test_cross_field_problems() -> None:
    with pytest.raises(train.config.ConfigError) as info:
        parse({"eval_steps": 3, "save_steps": 4, "load_in_4bit": True, "use_lora": False, "fp16": True,
               "bf16": True})
    for field in ("base_model", "save_steps", "load_in_4bit", "fp16/bf16"):
        assert field in str(info.value)


def test_schedule_plan() -> None:
    cfg = parse({"base_model": "m", "batch_size": 4, "epochs": 2, "gradient_accumulation_steps": 2,
                 "warmup_ratio": 0.1})
    plan = train.plan_schedule(cfg, n_train=40, has_validation=True)
    assert plan["total_steps"] == 10 and plan["warmup_steps"] == 1
    assert plan["eval_strategy"] == plan["save_strategy"] == "epoch" and plan["load_best_model_at_end"]
    no_val = train.plan_schedule(cfg, n_train=40, has_validation=False)
    assert no_val["eval_strategy"] == "no" and not no_val["load_best_model_at_end"]


def test_output_names_the_base_model_never_by_path() -> None:
    public_name = train.outputs.public_name
    assert public_name("llmtuner/tiny-llama", "/srv/data/models/tiny-llama") == "llmtuner/tiny-llama"
    assert public_name("s3://bucket/llama/", "/opt/ml/input/data/model") == "s3://bucket/llama/"
    assert public_name(None, "Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert public_name(None, "/srv/data/models/tiny-llama") == "tiny-llama"


@pytest.fixture(scope="module")
def tokenizer(tiny: dict[str, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["llama"])


def test_completion_only_masking(tokenizer: Any) -> None:
    record = chat("What are your business hours?", "Monday to Friday.")
    cfg = parse({"base_model": "m"})
    (example,) = train.data.tokenize_causal([record], tokenizer, cfg).examples
    response = tokenizer("Monday to Friday." + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    n_prompt = len(example["input_ids"]) - len(response)
    assert n_prompt > 0 and example["labels"][:n_prompt] == [-100] * n_prompt
    assert example["labels"][n_prompt:] == response == example["input_ids"][n_prompt:]
    assert example["labels"][-1] == tokenizer.eos_token_id

    cfg.train_on_inputs = True
    (everything,) = train.data.tokenize_causal([record], tokenizer, cfg).examples
    assert everything["labels"] == everything["input_ids"]


def test_truncation_is_counted_not_dropped(tokenizer: Any) -> None:
    short = chat("Hi", "ok")
    limit = len(train.prompting.tokenize_record(short, tokenizer, 10_000)[0]) + 2
    cfg = parse({"base_model": "m"})
    cfg.max_length = limit
    records = [chat("Hi", "word " * 40), short, chat("word " * 40, "ok")]
    out = train.data.tokenize_causal(records, tokenizer, cfg)
    assert out.truncated == 2 and out.skipped_no_response_tokens == 1 and len(out.examples) == 2
    assert len(out.examples[0]["input_ids"]) == limit


def test_dynamic_padding_collator() -> None:
    batch = train.data.PadCollator(pad_id=0, seq2seq=False)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


# --------------------------------------------------------------------------- real runs


def assert_event_shapes(result: Result) -> None:
    file_lines = (result.root / "output" / "data" / "metrics.jsonl").read_text().splitlines()
    assert file_lines == [line for line in result.stdout.splitlines() if line.strip()]
    for event in result.events:
        keys = list(event)
        expected = EVENT_KEYS[event["event"]]
        assert keys == expected[: len(keys)] and len(keys) >= len(expected) - (event["event"] == "log"), keys
    for line in file_lines:
        if '"event": "log"' in line:
            assert re.search(r'"train_loss": ([0-9.eE+-]+)', line)
            assert re.search(r'"learning_rate": ([0-9.eE+-]+)', line)


def test_run_loss_falls_and_outputs_are_complete(runs: dict[str, Future[Any]]) -> None:
    r = ok(runs["main"].result())
    assert_event_shapes(r)
    start = r.of("start")[0]
    assert (start["num_train_examples"], start["num_validation_examples"]) == (41, 6)
    assert start["truncated_examples"] == 2 and start["total_steps"] == 24 and start["device"] == "cpu"
    logs = r.of("log")
    assert [e["step"] for e in logs] == [4, 8, 12, 16, 20, 24]
    assert logs[-1]["train_loss"] < logs[0]["train_loss"]
    assert all(e["tokens_per_second"] > 0 for e in logs)
    assert [e["step"] for e in r.of("eval")] == [8, 16, 24]
    assert r.of("end")[0]["step"] == 24 and r.of("end")[0]["eval_loss"] is not None
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "code/prompting.py",
                 "code/requirements.txt", "merged/config.json", "merged/model.safetensors"):
        assert (r.model_dir / name).exists(), name
    s = r.summary
    assert s["task"] == "causal_lm" and s["seed"] == 42 and s["prompt_template"] == "llmtuner-plain-v1"
    assert s["counts"] == {"num_train_examples": 41, "num_validation_examples": 6, "truncated_examples": 2,
                           "skipped_no_response_tokens": 1}
    assert set(s["library_versions"]) >= {"torch", "transformers", "peft"}
    assert len(s["datasets"]["train"][0]["sha256"]) == 64 and s["fp16"] is False
    assert s["bf16"] is train.cpu_has_native_bf16()  # bf16 autocast on CPUs that multiply bf16 natively
    assert s["hyperparameters"]["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert s["total_steps"] == 24 and s["best_checkpoint_step"] in (8, 16, 24) and s["stopped_early"] is False
    assert s["metrics"]["train_loss"] is not None
    t = s["throughput"]  # the first step apart too: it also pays for the first touch of the activation memory
    assert 0 < t["first_step_tokens"] < t["non_padding_tokens"]
    assert 0 < t["first_step_seconds"] < t["train_step_seconds"]
    rest = (t["non_padding_tokens"] - t["first_step_tokens"]) / (t["train_step_seconds"] - t["first_step_seconds"])
    assert t["tokens_per_second_after_first_step"] == pytest.approx(rest, rel=0.01)
    assert t["tokens_per_second"] == pytest.approx(t["non_padding_tokens"] / t["train_step_seconds"], rel=0.01)
    import torch

    assert s["cpu_accel"] == {"enabled": True, "labelled_positions_loss": True,
                              "batch_shards": min(torch.get_num_threads(), 4)}  # a shard per core, batch 4


def test_outputs_name_the_base_model_never_by_path(runs: dict[str, Future[Any]], tiny: dict[str, Path]) -> None:
    """The artifact travels to users: the base model is named as the user gave it (base_model_name), or by
    its folder's name when only a path was given, never by the training machine's path."""
    r = ok(runs["main"].result())
    s = r.summary
    assert s["base_model"] == s["base_model_source"] == s["hyperparameters"]["base_model"] == "llmtuner/tiny-llama"
    adapter = json.loads((r.model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "llmtuner/tiny-llama"
    assert "base_model: llmtuner/tiny-llama" in (r.model_dir / "README.md").read_text()
    full = ok(runs["full"].result())
    assert full.summary["base_model"] == full.summary["hyperparameters"]["base_model"] == tiny["llama"].name
    for result in (r, full):
        for path in result.model_dir.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".txt", ".jsonl"):
                assert str(tiny["llama"].parent) not in path.read_text(), path


def test_acceleration_layer_keeps_the_plain_recipe_results(runs: dict[str, Future[Any]]) -> None:
    accel, plain = ok(runs["accel"].result()), ok(runs["plain"].result())
    assert accel.summary["cpu_accel"]["enabled"] is True
    assert plain.summary["cpu_accel"] == {"enabled": False, "reason": "cpu_accel is false"}
    losses = [[e["train_loss"] for e in r.of("log")] for r in (accel, plain)]
    assert len(losses[0]) == SHORT["max_steps"] and losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_adapter_loads_and_generates(runs: dict[str, Future[Any]], tiny: dict[str, Path]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = ok(runs["main"].result())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["llama"]), str(r.model_dir))
    tok = AutoTokenizer.from_pretrained(r.model_dir)
    ids = tok("### User:\nWhat are your business hours?\n\n### Assistant:\n", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_resume_from_checkpoint(runs: dict[str, Future[Any]]) -> None:
    first, second = runs["resume"].result()
    ok(first), ok(second)
    assert [e["step"] for e in first.of("checkpoint")] == [2, 4]
    assert second.of("resume") == [{"event": "resume", "step": 4}]
    assert [e["step"] for e in second.of("log")] == [5, 6]
    assert second.of("end")[0]["step"] == 6 and second.summary["resumed_from_step"] == 4
    assert (second.checkpoints / "checkpoint-6" / "optimizer.pt").exists()


def test_early_stopping_keeps_best_checkpoint(runs: dict[str, Future[Any]]) -> None:
    from safetensors.torch import load_file

    r = ok(runs["early"].result())
    assert_event_shapes(r)
    evals = r.of("eval")
    assert [e["step"] for e in evals] == [2, 4]  # no improvement can beat a threshold of 10: stop at once
    best_eval = min(evals, key=lambda e: e["eval_loss"])  # the best is the lowest loss, threshold or not
    (stop,) = r.of("early_stop")
    assert (stop["step"], stop["best_step"]) == (4, best_eval["step"])
    assert stop["best_eval_loss"] == best_eval["eval_loss"] == r.of("end")[0]["eval_loss"]
    assert r.summary["stopped_early"] is True and r.summary["best_checkpoint_step"] == best_eval["step"]
    saved = load_file(str(r.model_dir / "adapter_model.safetensors"))
    best = load_file(str(r.checkpoints / f"checkpoint-{best_eval['step']}" / "adapter_model.safetensors"))
    assert saved.keys() == best.keys() and all((saved[k] == best[k]).all() for k in saved)


def test_seq2seq_run_and_adapter(runs: dict[str, Future[Any]], tiny: dict[str, Path]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    r = ok(runs["seq2seq"].result())
    assert r.summary["task"] == "seq2seq_lm" and r.summary["hyperparameters"]["lora_target_modules"] == ["q", "v"]
    assert [e["step"] for e in r.of("log")] == [1, 2, 3]
    assert r.summary["cpu_accel"]["enabled"] is False  # seq2seq keeps the model's own loss and step
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny["t5"]), str(r.model_dir))
    tok = AutoTokenizer.from_pretrained(r.model_dir)
    with torch.no_grad():
        out = model.generate(**tok("### User:\nHi\n\n### Assistant:\n", return_tensors="pt"), max_new_tokens=4)
    assert out.shape[1] > 1


def test_full_fine_tuning_saves_the_whole_model(runs: dict[str, Future[Any]]) -> None:
    r = ok(runs["full"].result())
    assert (r.model_dir / "model.safetensors").exists() and not (r.model_dir / "adapter_config.json").exists()
    assert r.summary["use_lora"] is False and r.summary["hyperparameters"]["learning_rate"] == 5e-5


@pytest.mark.parametrize(("run", "code"), [("no_model", "base_model_not_found"), ("qlora", "qlora_requires_gpu"),
                                           ("no_data", "no_training_data")])
def test_failures_write_a_reason(runs: dict[str, Future[Any]], run: str, code: str) -> None:
    r = runs[run].result()
    assert r.rc != 0
    assert r.failure.startswith(f"{code}: ") and len(r.failure.strip().splitlines()) == 1
    (error,) = r.of("error")
    assert error["code"] == code and error["message"]
