#!/usr/bin/env python
"""LoRA / QLoRA / full supervised fine-tuning, following SageMaker's training-container contract.

Runs unchanged as a local subprocess and inside the Hugging Face PyTorch training container:

  hyperparameters  $SM_HPS (JSON object) or $SM_INPUT_CONFIG_DIR/hyperparameters.json
                   (default /opt/ml/input/config); string values are JSON-decoded when they parse
  data             every *.jsonl in $SM_CHANNEL_TRAIN (and optional $SM_CHANNEL_VALIDATION), records
                   {"messages": [...]} or {"text": ...} (see prompting.py)
  base model       hyperparameter `base_model` (hub id or local dir), or $SM_CHANNEL_MODEL when set
  output           $SM_MODEL_DIR: adapter (or full model), tokenizer, training_summary.json, code/
                   $SM_OUTPUT_DATA_DIR/metrics.jsonl; checkpoints in $SM_CHECKPOINT_DIR,
                   /opt/ml/checkpoints when it exists, else $SM_OUTPUT_DATA_DIR/checkpoints
  failure          "{code}: {message}" in $SM_OUTPUT_DIR/failure, then a non-zero exit

stdout carries only metric events, one JSON object a line (also appended to metrics.jsonl);
every other log line goes to stderr. Imports nothing from app/.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prompting  # noqa: E402
import sm_contract  # noqa: E402

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
FAMILY_TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "t5": ["q", "v"],
}
CODE_FILES = ("inference.py", "prompting.py", "modeling.py")
INFERENCE_REQUIREMENTS = "peft>=0.17\naccelerate>=1.0\nsafetensors>=0.4\nsentencepiece>=0.2\n"
IGNORE_INDEX = -100
_METRIC_STDOUT = sys.stdout  # stdout is reserved for metric lines; see main()
_ALLOCATOR_TUNED = False  # set by main(): see speedups.tune_allocator


class TrainError(Exception):
    """A failure with a stable code and a message telling the user what to change."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- configuration

# name -> (kind, default, lower bound, upper bound, nullable). Bounds are inclusive unless noted in _check.
_SPEC: dict[str, tuple[str, Any, float | None, float | None, bool]] = {
    "base_model": ("str", None, None, None, True),
    "epochs": ("float", 3, 0, 1000, False),
    "batch_size": ("int", 4, 1, 4096, False),
    "learning_rate": ("float", None, 0, 1, True),
    "warmup_steps": ("int", 0, 0, None, False),
    "warmup_ratio": ("float", 0.0, 0, 1, False),
    "gradient_accumulation_steps": ("int", 1, 1, 4096, False),
    "max_length": ("int", 512, 2, 1_048_576, False),
    "use_lora": ("bool", True, None, None, False),
    "lora_rank": ("int", 16, 1, 4096, False),
    "lora_alpha": ("float", 32, 0, None, False),
    "lora_dropout": ("float", 0.05, 0, 1, False),
    "lora_target_modules": ("modules", None, None, None, True),
    "weight_decay": ("float", 0.0, 0, None, False),
    "max_grad_norm": ("float", 1.0, 0, None, False),
    "lr_scheduler_type": ("choice", "linear", None, None, False),
    "early_stopping_patience": ("int", None, 1, None, True),
    "early_stopping_threshold": ("float", 0.0, 0, None, False),
    "eval_steps": ("int", None, 1, None, True),
    "save_steps": ("int", None, 1, None, True),
    "logging_steps": ("int", 10, 1, None, False),
    "save_total_limit": ("int", 2, 1, None, True),
    "fp16": ("bool", None, None, None, True),
    "bf16": ("bool", None, None, None, True),
    "load_in_4bit": ("bool", False, None, None, False),
    "train_on_inputs": ("bool", False, None, None, False),
    "seed": ("int", 42, 0, 2**32 - 1, False),
    "max_steps": ("int", None, 1, None, True),
    "merge_adapter": ("bool", False, None, None, False),
    "resume_from_checkpoint": ("bool_or_path", True, None, None, True),
}
# Lower bounds that are exclusive (the value must be strictly greater).
_EXCLUSIVE_MIN = {"epochs", "learning_rate", "lora_alpha"}
_EXCLUSIVE_MAX = {"warmup_ratio", "lora_dropout"}


@dataclass
class TrainConfig:
    base_model: str | None = None
    epochs: float = 3
    batch_size: int = 4
    learning_rate: float | None = None  # None -> 2e-4 with LoRA, 5e-5 for full fine-tuning
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    use_lora: bool = True
    lora_rank: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    early_stopping_patience: int | None = None
    early_stopping_threshold: float = 0.0
    eval_steps: int | None = None
    save_steps: int | None = None
    logging_steps: int = 10
    save_total_limit: int | None = 2
    fp16: bool | None = None
    bf16: bool | None = None
    load_in_4bit: bool = False
    train_on_inputs: bool = False
    seed: int = 42
    max_steps: int | None = None
    merge_adapter: bool = False
    resume_from_checkpoint: bool | str | None = True

    @classmethod
    def from_hyperparameters(cls, hps: dict[str, Any], has_model_channel: bool = False) -> TrainConfig:
        """Coerce and check every field, raising one invalid_hyperparameters error listing all problems."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for name, spec in _SPEC.items():
            if name in hps:
                values[name] = _coerce(name, hps[name], spec, problems)
        unknown = sorted(k for k in hps if k not in _SPEC and not k.startswith("sagemaker_"))
        if unknown:
            log(f"ignoring unknown hyperparameters: {', '.join(unknown)}")
        cfg = cls(**{k: v for k, v in values.items() if v is not _INVALID})
        problems.extend(cfg._cross_field_problems(has_model_channel))
        if problems:
            raise TrainError("invalid_hyperparameters", "; ".join(problems))
        if cfg.learning_rate is None:
            cfg.learning_rate = 2e-4 if cfg.use_lora else 5e-5
        return cfg

    def _cross_field_problems(self, has_model_channel: bool) -> list[str]:
        out = []
        if not self.base_model and not has_model_channel:
            out.append("base_model: required (a hub id or a local model directory)")
        if self.load_in_4bit and not self.use_lora:
            out.append("load_in_4bit: QLoRA needs use_lora true (4-bit weights cannot be fully fine-tuned)")
        if self.fp16 and self.bf16:
            out.append("fp16/bf16: choose at most one of them")
        if self.eval_steps and self.save_steps and self.save_steps % self.eval_steps:
            out.append(
                f"save_steps: must be a multiple of eval_steps ({self.eval_steps}) so the best "
                f"checkpoint can be kept (got {self.save_steps})"
            )
        return out


_INVALID = object()


def _coerce(name: str, value: Any, spec: tuple, problems: list[str]) -> Any:
    kind, _default, lo, hi, nullable = spec
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if nullable:
            return None
        problems.append(f"{name}: must not be null")
        return _INVALID
    try:
        v = _convert(kind, name, value)
    except ValueError as exc:
        problems.append(f"{name}: {exc} (got {value!r})")
        return _INVALID
    if kind in ("int", "float"):
        too_low = lo is not None and (v <= lo if name in _EXCLUSIVE_MIN else v < lo)
        too_high = hi is not None and (v >= hi if name in _EXCLUSIVE_MAX else v > hi)
        if too_low or too_high:
            problems.append(f"{name}: must be {_bounds_text(name, lo, hi)} (got {value!r})")
            return _INVALID
    return v


def _convert(kind: str, name: str, value: Any) -> Any:
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise ValueError("must be an integer")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError("must be a number")
        return float(value)
    if kind in ("bool", "bool_or_path"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        if kind == "bool_or_path" and isinstance(value, str):
            return value
        raise ValueError("must be true or false" + (" or a checkpoint path" if kind == "bool_or_path" else ""))
    if kind == "choice":
        if value not in SCHEDULERS:
            raise ValueError(f"must be one of {', '.join(SCHEDULERS)}")
        return value
    if kind == "modules":
        if isinstance(value, str):
            mods = [m.strip() for m in value.split(",") if m.strip()]
            return "all-linear" if mods == ["all-linear"] else mods or _raise("must name at least one module")
        if isinstance(value, list) and value and all(isinstance(m, str) and m for m in value):
            return value
        raise ValueError('must be a non-empty list of module names or "all-linear"')
    if not isinstance(value, str):  # "str"
        raise ValueError("must be a string")
    return value


def _raise(msg: str) -> Any:
    raise ValueError(msg)


def _bounds_text(name: str, lo: float | None, hi: float | None) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if name in _EXCLUSIVE_MIN else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if name in _EXCLUSIVE_MAX else '<='} {hi:g}")
    return " and ".join(parts)


def read_hyperparameters(env: dict[str, str]) -> dict[str, Any]:
    """SM_HPS or hyperparameters.json; each string value JSON-decoded when it parses."""
    return sm_contract.read_hyperparameters(env, lambda msg: TrainError("invalid_hyperparameters", msg))


# --------------------------------------------------------------------------- paths and events


@dataclass
class Paths:
    train_dir: Path
    validation_dir: Path | None
    model_channel: Path | None
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    failure_file: Path

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Paths:
        out_data = Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
        if env.get("SM_CHECKPOINT_DIR"):
            ckpt = Path(env["SM_CHECKPOINT_DIR"])
        elif Path("/opt/ml/checkpoints").is_dir():
            ckpt = Path("/opt/ml/checkpoints")
        else:
            ckpt = out_data / "checkpoints"
        val = env.get("SM_CHANNEL_VALIDATION")
        return cls(
            train_dir=Path(env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")),
            validation_dir=Path(val) if val else None,
            model_channel=Path(env["SM_CHANNEL_MODEL"]) if env.get("SM_CHANNEL_MODEL") else None,
            model_dir=Path(env.get("SM_MODEL_DIR", "/opt/ml/model")),
            output_data_dir=out_data,
            checkpoint_dir=ckpt,
            failure_file=Path(env.get("SM_OUTPUT_DIR") or out_data.parent) / "failure",
        )


class Events:
    """One JSON object a line on stdout (flushed) and appended to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives for the whole run

    def emit(self, event: str, **fields: Any) -> None:
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}
        line = json.dumps({"event": event, **clean})
        _METRIC_STDOUT.write(line + "\n")
        _METRIC_STDOUT.flush()
        self._file.write(line + "\n")
        self._file.flush()


# --------------------------------------------------------------------------- data


def read_split(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All records of every *.jsonl in `directory`, and each file's name, sha256 and record count."""
    records: list[dict[str, Any]] = []
    files = []
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        data = path.read_bytes()
        before = len(records)
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                records.append(_parse_record(line, path.name, lineno))
        files.append({"file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
                      "records": len(records) - before})
    return records, files


def _parse_record(line: str, fname: str, lineno: int) -> dict[str, Any]:
    where = f"{fname} line {lineno}"
    try:
        rec = json.loads(line)
    except ValueError as exc:
        raise TrainError("invalid_training_data", f"{where} is not valid JSON ({exc}); fix or remove it") from exc
    ok = isinstance(rec, dict) and (
        isinstance(rec.get("text"), str)
        or (isinstance(rec.get("messages"), list) and rec["messages"]
            and all(isinstance(m, dict) and "role" in m for m in rec["messages"]))
    )
    if not ok:
        raise TrainError("invalid_training_data",
                         f'{where}: expected {{"messages": [{{"role", "content"}}, ...]}} or {{"text": ...}}')
    return rec


@dataclass
class Tokenized:
    examples: list[dict[str, list[int]]]
    truncated: int = 0
    skipped_no_response_tokens: int = 0


def tokenize_causal(records: list[dict[str, Any]], tokenizer: Any, cfg: TrainConfig) -> Tokenized:
    out = Tokenized([])
    for rec in records:
        ids, labels, truncated = prompting.tokenize_record(rec, tokenizer, cfg.max_length, cfg.train_on_inputs)
        out.truncated += truncated
        if all(label == IGNORE_INDEX for label in labels):
            out.skipped_no_response_tokens += 1
            continue
        out.examples.append({"input_ids": ids, "labels": labels})
    return out


def tokenize_seq2seq(records: list[dict[str, Any]], tokenizer: Any, cfg: TrainConfig) -> Tokenized:
    """Encoder input: everything before the last response piece; labels: that response piece."""
    out = Tokenized([])
    for rec in records:
        pieces = prompting.segments(rec, tokenizer)
        last = max((i for i, (_, is_resp) in enumerate(pieces) if is_resp), default=None)
        if last is None:
            out.skipped_no_response_tokens += 1
            continue
        source = "".join(text for text, _ in pieces[:last])
        enc = tokenizer(source, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        lab = tokenizer(pieces[last][0], add_special_tokens=False)["input_ids"]
        out.truncated += len(enc) > cfg.max_length or len(lab) > cfg.max_length
        if not lab:
            out.skipped_no_response_tokens += 1
            continue
        out.examples.append({"input_ids": enc[: cfg.max_length], "labels": lab[: cfg.max_length]})
    return out


class PadCollator:
    """Dynamic padding to the longest example of the batch (labels padded with -100)."""

    def __init__(self, pad_id: int, seq2seq: bool) -> None:
        self.pad_id, self.seq2seq = pad_id, seq2seq

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        m = max(len(f["labels"]) for f in features) if self.seq2seq else n
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        labels = torch.full((len(features), m), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            mask[i, :k] = 1
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- model


@dataclass
class Runtime:
    device: str
    bf16: bool
    fp16: bool


def pick_runtime(cfg: TrainConfig) -> Runtime:
    import torch

    if not torch.cuda.is_available():
        if cfg.load_in_4bit:
            raise TrainError("qlora_requires_gpu", "load_in_4bit (QLoRA) needs a CUDA GPU: choose a GPU "
                             "instance type or set load_in_4bit to false")
        import speedups

        native = speedups.cpu_has_native_bf16()
        if cfg.fp16:
            log("fp16 ignored on CPU: CPUs have no fast fp16 matmul (bf16 autocast is used where native)")
        if cfg.bf16 and not native:
            log("bf16 ignored: this CPU has no native bfloat16 (AVX512-BF16/AMX); training runs in fp32")
        # bf16 autocast where the CPU multiplies bf16 natively (~2.4x faster here), unless bf16 is false
        return Runtime("cpu", native and cfg.bf16 is not False, False)
    bf16_ok = torch.cuda.is_bf16_supported()
    if cfg.bf16 and not bf16_ok:
        raise TrainError("invalid_hyperparameters", "bf16: this GPU does not support bfloat16; use fp16")
    auto = cfg.bf16 is None and cfg.fp16 is None
    return Runtime("cuda", bool(cfg.bf16) or (auto and bf16_ok), bool(cfg.fp16))


def resolve_model_source(cfg: TrainConfig, paths: Paths) -> str:
    if paths.model_channel is not None:
        src = paths.model_channel
        if not (src / "config.json").exists():  # the channel may hold the model one folder down
            inner = [p for p in src.glob("*/config.json")]
            src = inner[0].parent if len(inner) == 1 else src
        if not (src / "config.json").exists():
            raise TrainError("base_model_not_found", f"no config.json in the model channel {paths.model_channel}")
        return str(src)
    name = str(cfg.base_model)
    if name.startswith("s3://"):
        raise TrainError("base_model_not_found", f"{name}: s3:// base models must reach the script "
                         "through the 'model' input channel (SM_CHANNEL_MODEL)")
    looks_local = name.startswith(("/", ".", "~")) or Path(name).exists()
    if looks_local and not (Path(name).expanduser() / "config.json").exists():
        raise TrainError("base_model_not_found", f"no model at {name} (no config.json): check base_model")
    return str(Path(name).expanduser()) if looks_local else name


def load_tokenizer_and_model(source: str, cfg: TrainConfig, rt: Runtime) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TrainError("base_model_not_found", f"could not load base model {source!r} ({exc}); check "
                         "base_model (hub id or local directory), network access or HF_TOKEN") from exc
    task = "seq2seq_lm" if getattr(config, "is_encoder_decoder", False) else "causal_lm"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
    elif rt.bf16 and cfg.use_lora and rt.device == "cuda":
        kwargs["dtype"] = torch.bfloat16  # frozen base in bf16; peft keeps adapters in fp32
    if rt.device == "cpu" and hub_kernels_by_default():
        # transformers 5 turns the `kernels` library's hub kernels on by default and re-kernelizes the
        # model at every train()/eval() switch, which puts the library's own forward back on every
        # layer it knows (RMSNorm): speedups.py's fused RMSNorm was silently undone when the trainer
        # started. Its hub kernels are GPU ones (CUDA, ROCm, XPU) anyway.
        kwargs["use_kernels"] = False
    cls = AutoModelForSeq2SeqLM if task == "seq2seq_lm" else AutoModelForCausalLM
    model = cls.from_pretrained(source, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model, task


def hub_kernels_by_default() -> bool:
    """Whether this transformers kernelizes models when they switch between train() and eval() (5.x, with
    hub kernels on unless `use_kernels=False`); older releases take no such switch."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "kernels_mode")


def default_target_modules(model_type: str) -> list[str] | str:
    return FAMILY_TARGET_MODULES.get(model_type, "all-linear")


def apply_lora(model: Any, cfg: TrainConfig, task: str) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if cfg.lora_target_modules is None:
        cfg.lora_target_modules = default_target_modules(model.config.model_type)
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules, bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if task == "seq2seq_lm" else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainError("invalid_hyperparameters", f"lora_target_modules: {exc}") from exc


# --------------------------------------------------------------------------- trainer wiring


def make_callback(events: Events, cfg: TrainConfig, counts: dict[str, int], rt: Runtime) -> Any:
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Turns Trainer events into the script's JSON metric lines; fails fast on a nan loss."""

        def __init__(self) -> None:
            self.train_seconds, self.tokens_at_log, self.seconds_at_log = 0.0, 0, 0.0
            self.step_started = 0.0
            self.last_eval_step = -1
            self.resumed_from: int | None = None
            self.tokens_at_start = 0
            self.first_step: tuple[float, int] | None = None  # (seconds, tokens) of this session's first step

        def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.tokens_at_log = self.tokens_at_start = state.num_input_tokens_seen
            events.emit("start", total_steps=state.max_steps, **counts, epochs=cfg.epochs, device=rt.device)
            if state.global_step > 0:
                self.resumed_from = state.global_step
                events.emit("resume", step=state.global_step)

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.train_seconds += time.perf_counter() - self.step_started
            if self.first_step is None:
                self.first_step = (self.train_seconds, state.num_input_tokens_seen - self.tokens_at_start)
            if state.global_step >= state.max_steps and args.eval_strategy == "steps":
                control.should_evaluate = True  # always evaluate (and checkpoint) at the last step
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logs = logs or {}
            if "loss" in logs:
                self._train_log(state, logs)
            elif "eval_loss" in logs:
                self.last_eval_step = state.global_step
                events.emit("eval", step=state.global_step, epoch=_r(state.epoch), eval_loss=_r(logs["eval_loss"]))

        def _train_log(self, state: Any, logs: dict[str, float]) -> None:
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise TrainError("training_diverged", f"the training loss became {loss} at step "
                                 f"{state.global_step}: lower learning_rate or set max_grad_norm (e.g. 1.0)")
            tokens = state.num_input_tokens_seen - self.tokens_at_log
            secs = self.train_seconds - self.seconds_at_log
            self.tokens_at_log, self.seconds_at_log = state.num_input_tokens_seen, self.train_seconds
            line: dict[str, Any] = {"step": state.global_step, "epoch": _r(state.epoch), "train_loss": _r(loss),
                                    "learning_rate": logs.get("learning_rate"),
                                    "tokens_per_second": round(tokens / secs, 1) if secs > 0 else 0.0}
            if logs.get("grad_norm") is not None:
                line["grad_norm"] = _r(float(logs["grad_norm"]))
            events.emit("log", **line)

        def on_epoch_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-6:
                events.emit("epoch", step=state.global_step, epoch=int(round(state.epoch)))

        def on_save(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            events.emit("checkpoint", step=state.global_step, path=f"checkpoint-{state.global_step}")

    return MetricsCallback()


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def plan_schedule(cfg: TrainConfig, n_train: int, has_validation: bool) -> dict[str, Any]:
    """Steps, warmup and eval/save strategy as TrainingArguments fields."""
    per_epoch = max(1, math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.gradient_accumulation_steps))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total)
    eval_steps = cfg.eval_steps or (cfg.save_steps if has_validation else None)
    plan: dict[str, Any] = {"max_steps": cfg.max_steps or -1, "warmup_steps": warmup, "total_steps": total}
    if has_validation:
        strategy = "steps" if eval_steps else "epoch"
        plan.update(eval_strategy=strategy, eval_steps=eval_steps, save_strategy=strategy,
                    save_steps=cfg.save_steps or eval_steps, load_best_model_at_end=True,
                    metric_for_best_model="eval_loss", greater_is_better=False)
    else:
        plan.update(eval_strategy="no", save_strategy="steps" if cfg.save_steps else "epoch",
                    save_steps=cfg.save_steps, load_best_model_at_end=False)
    return plan


def build_trainer(model: Any, tokenizer: Any, cfg: TrainConfig, rt: Runtime, paths: Paths, data: dict,
                  plan: dict[str, Any], callbacks: list[Any], speedups: dict[str, Any] | None = None) -> Any:
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    plan = {k: v for k, v in plan.items() if k != "total_steps" and v is not None}
    args = TrainingArguments(
        output_dir=str(paths.checkpoint_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        logging_strategy="steps", logging_steps=cfg.logging_steps, logging_nan_inf_filter=False,
        save_total_limit=cfg.save_total_limit, bf16=rt.bf16, fp16=rt.fp16, use_cpu=rt.device == "cpu",
        seed=cfg.seed, train_sampling_strategy="group_by_length", include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False, report_to="none", disable_tqdm=True, log_level="warning",
        dataloader_num_workers=0, activation_checkpointing=cfg.load_in_4bit, **plan,
    )
    if data["validation"] and cfg.early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold)]
    speedups = speedups or {}
    trainer = (labelled_loss_trainer(model, speedups.get("batch_shards", 1))
               if speedups.get("labelled_positions_loss") else Trainer)(
        model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"] or None,
        data_collator=PadCollator(tokenizer.pad_token_id, data["seq2seq"]), processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def labelled_loss_trainer(model: Any, shards: int) -> type:
    """A Trainer whose causal-LM loss runs the output head only where there are labels, and whose
    training step runs the batch as `shards` shards on as many threads when shards > 1 (speedups.py)."""
    import speedups
    from transformers import Trainer

    parts = speedups.causal_parts(model)
    params = [p for p in model.parameters() if p.requires_grad]
    sharded = speedups.ShardedBackward(parts, params, shards) if parts and shards > 1 else None

    class LabelledLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            if self.accelerator.unwrap_model(model) is not model:  # DataParallel/DDP: their forward syncs
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with speedups.autocast(self.args.device.type, self.args.bf16):  # the decoder is called directly
                loss = speedups.labelled_loss(parts, inputs, num_items_in_batch)
            return (loss, {"loss": loss}) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
            if sharded is None:
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            inputs = self._prepare_inputs(inputs)
            if num_items_in_batch is None:  # a per-batch mean, then averaged over accumulation steps
                labelled = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
                return sharded(inputs, labelled * self.current_gradient_accumulation_steps, self.args.bf16)
            return sharded(inputs, num_items_in_batch, self.args.bf16)

    return LabelledLossTrainer


def find_resume_checkpoint(cfg: TrainConfig, paths: Paths) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    value = cfg.resume_from_checkpoint
    if isinstance(value, str):
        if not Path(value).is_dir():
            raise TrainError("invalid_hyperparameters", f"resume_from_checkpoint: no checkpoint at {value}")
        return value
    if value and paths.checkpoint_dir.is_dir():
        return get_last_checkpoint(str(paths.checkpoint_dir))
    return None


# --------------------------------------------------------------------------- outputs


def save_outputs(trainer: Any, tokenizer: Any, cfg: TrainConfig, source: str, task: str, paths: Paths) -> None:
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(paths.model_dir))
    tokenizer.save_pretrained(str(paths.model_dir))
    (paths.model_dir / "training_args.bin").unlink(missing_ok=True)
    if cfg.use_lora and cfg.merge_adapter:
        save_merged(source, task, paths.model_dir, tokenizer)
    if cfg.use_lora:
        bundle_base_model(source, paths.model_dir / "base_model")
    copy_inference_code(paths.model_dir / "code")


BUNDLE_BASE_MAX_BYTES = 256 * 2**20


def bundle_base_model(source: str, dest: Path) -> None:
    """A small base model loaded from a directory (not a hub id) travels in the output as
    base_model/, so the tarball loads and deploys anywhere: the adapter alone names a path that
    exists only where it was trained. Hub ids stay out: users load those from the hub."""
    src = Path(source)
    if not src.is_dir():
        return
    files = [p for p in src.rglob("*") if p.is_file()]
    if sum(p.stat().st_size for p in files) > BUNDLE_BASE_MAX_BYTES:
        log(f"base model at {source} is over {BUNDLE_BASE_MAX_BYTES >> 20} MiB: not bundled in the output")
        return
    shutil.copytree(src, dest, dirs_exist_ok=True)


def save_merged(source: str, task: str, model_dir: Path, tokenizer: Any) -> None:
    """Reload the base model in full precision and fold the adapter into it (works after QLoRA too)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if task == "seq2seq_lm" else AutoModelForCausalLM
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    merged = PeftModel.from_pretrained(cls.from_pretrained(source, dtype=dtype), str(model_dir)).merge_and_unload()
    merged.save_pretrained(str(model_dir / "merged"))
    tokenizer.save_pretrained(str(model_dir / "merged"))


def copy_inference_code(code_dir: Path) -> None:
    here = Path(__file__).resolve().parent
    code_dir.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        if (here / name).is_file():
            shutil.copy2(here / name, code_dir / name)
    (code_dir / "requirements.txt").write_text(INFERENCE_REQUIREMENTS)


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": sys.version.split()[0]}


def _checkpoint_step(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).name.rsplit("-", 1)[-1])
    except ValueError:
        return None


# --------------------------------------------------------------------------- run


@dataclass
class Run:
    """Everything prepare() builds and fit()/validate() use."""

    cfg: TrainConfig
    paths: Paths
    events: Events
    rt: Runtime
    source: str
    tokenizer: Any
    model: Any
    task: str
    data: dict[str, Any]
    counts: dict[str, int]
    datasets: dict[str, Any]
    trainer: Any = None
    callback: Any = None
    plan: dict[str, Any] | None = None
    speedups: dict[str, Any] = field(default_factory=dict)


def prepare(env: dict[str, str], events_holder: list[Events]) -> Run:
    paths = Paths.from_env(env)
    events = Events(paths.output_data_dir / "metrics.jsonl")
    events_holder.append(events)
    cfg = TrainConfig.from_hyperparameters(read_hyperparameters(env), paths.model_channel is not None)
    train_records, train_files = read_split(paths.train_dir)
    if not train_records:
        raise TrainError("no_training_data", f"no records in any *.jsonl file of {paths.train_dir}: "
                         "upload a non-empty JSONL training file")
    val_records, val_files = read_split(paths.validation_dir) if paths.validation_dir else ([], [])
    source = resolve_model_source(cfg, paths)
    rt = pick_runtime(cfg)
    quiet_libraries()
    import transformers

    transformers.set_seed(cfg.seed)
    tokenizer, model, task = load_tokenizer_and_model(source, cfg, rt)
    data, counts = tokenize_splits(train_records, val_records, tokenizer, cfg, task)
    if cfg.use_lora:
        model = apply_lora(model, cfg, task)
    run = Run(cfg, paths, events, rt, source, tokenizer, model, task, data, counts,
              {"train": train_files, "validation": val_files})
    run.speedups = choose_speedups(run)
    return run


def choose_speedups(run: Run) -> dict[str, Any]:
    """The speed-ups of speedups.py that apply to this run (recorded in training_summary.json)."""
    import speedups
    import torch

    labelled = speedups.causal_parts(run.model) is not None
    chosen: dict[str, Any] = {"allocator_tuned": _ALLOCATOR_TUNED, "labelled_positions_loss": labelled}
    if run.cfg.use_lora and run.rt.device == "cpu":
        chosen["fast_lora_dropout_layers"] = speedups.use_fast_lora_dropout(run.model)
        chosen["fused_lora_layers"] = speedups.fuse_lora_linears(run.model)
    if run.rt.device == "cpu":
        import mkl_dispatch

        chosen["mkl_intel_kernels_on_amd"] = mkl_dispatch.active()
        if missed := mkl_dispatch.missed_message():
            log(missed)
        chosen["fused_rms_norms"] = speedups.fuse_rms_norms(run.model)
        if not run.rt.bf16:  # the compiled kernels (LoRA dropout, SwiGLU) are fp32: no build for a bf16 run
            import cpu_kernels

            chosen["compiled_cpu_kernels"] = cpu_kernels.library() is not None
            if not chosen["compiled_cpu_kernels"]:
                log(f"the compiled CPU kernels are not available, torch's ops run instead: {cpu_kernels.why_not()}")
            chosen["compiled_swiglu_mlps"] = speedups.fuse_swiglu(run.model)
        chosen["fused_rotary"] = speedups.fuse_rotary(run.model)
        chosen["block_causal_attention"] = speedups.fuse_attention(run.model)  # fp32 and bf16 autocast
        if not run.rt.bf16 and speedups.onednn_linear_preferred():  # bf16 matmuls are oneDNN's already
            chosen["onednn_linears"] = speedups.use_onednn_linears(run.model)
    if run.cfg.use_lora and run.rt.device == "cpu":
        workers = min(torch.get_num_threads(), run.cfg.batch_size)
        if labelled and workers > 1 and speedups.ShardedBackward.usable(run.model):
            chosen["batch_shards"] = workers  # shard threads; a long batch is cut in more shards than that
            chosen["shard_max_tokens"] = speedups.shard_max_tokens(run.rt.bf16)
    return chosen


def tokenize_splits(train_records: list, val_records: list, tokenizer: Any, cfg: TrainConfig,
                    task: str) -> tuple[dict[str, Any], dict[str, int]]:
    tok = tokenize_seq2seq if task == "seq2seq_lm" else tokenize_causal
    train, val = tok(train_records, tokenizer, cfg), tok(val_records, tokenizer, cfg)
    if not train.examples:
        raise TrainError("no_training_data", f"no training example has response tokens left after truncation "
                         f"to max_length={cfg.max_length}: increase max_length or shorten the prompts")
    if not val_records:
        log("no validation data: no evaluation, no early stopping, eval_steps ignored; the last model is saved")
    elif cfg.save_steps and not cfg.eval_steps:
        log(f"save_steps={cfg.save_steps} without eval_steps: evaluating at every checkpoint to keep the best")
    counts = {"num_train_examples": len(train.examples), "num_validation_examples": len(val.examples),
              "truncated_examples": train.truncated + val.truncated}
    if train.truncated + val.truncated:
        log(f"{counts['truncated_examples']} examples longer than max_length={cfg.max_length} were truncated")
    data = {"train": train.examples, "validation": val.examples, "seq2seq": task == "seq2seq_lm",
            "skipped_no_response_tokens": train.skipped_no_response_tokens + val.skipped_no_response_tokens}
    return data, counts


def fit(run: Run) -> Any:
    cfg = run.cfg
    run.plan = plan_schedule(cfg, len(run.data["train"]), bool(run.data["validation"]))
    run.callback = make_callback(run.events, cfg, run.counts, run.rt)
    run.trainer = build_trainer(run.model, run.tokenizer, cfg, run.rt, run.paths, run.data, run.plan,
                                [run.callback], run.speedups)
    resume = find_resume_checkpoint(cfg, run.paths)
    if resume:
        log(f"resuming from {resume}")
    # The model, tokenizer and data are ~450k Python objects that live as long as the run: frozen out
    # of the collector, the full collections the training steps' garbage triggers stop walking them
    # (~140 ms each on the bench's model, holding the GIL every shard thread needs).
    gc.collect()
    gc.freeze()
    run.speedups["gc_frozen_objects"] = gc.get_freeze_count()
    started = time.perf_counter()
    try:
        output = run.trainer.train(resume_from_checkpoint=resume)
    finally:
        gc.unfreeze()
    run_seconds = time.perf_counter() - started
    if not math.isfinite(output.training_loss):
        raise TrainError("training_diverged", "the training loss is not finite: lower learning_rate")
    return output, run_seconds


def validate(run: Run) -> float | None:
    """Final validation loss of the model being saved (the best checkpoint when there is validation data)."""
    if not run.data["validation"]:
        return None
    state = run.trainer.state
    if state.best_metric is not None and run.plan and run.plan.get("load_best_model_at_end"):
        return float(state.best_metric)
    return float(run.trainer.evaluate()["eval_loss"])


def finish(run: Run, output: Any, run_seconds: float, eval_loss: float | None) -> None:
    state, cfg = run.trainer.state, run.cfg
    best_step = _checkpoint_step(state.best_model_checkpoint)
    stopper = next((c for c in run.trainer.callback_handler.callbacks if hasattr(c, "early_stopping_patience")), None)
    stopped_early = bool(stopper and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience)
    if stopped_early:
        run.events.emit("early_stop", step=state.global_step, best_step=best_step, best_eval_loss=_r(eval_loss))
    save_outputs(run.trainer, run.tokenizer, cfg, run.source, run.task, run.paths)
    train_loss = _r(output.training_loss)
    run.events.emit("end", step=state.global_step, epoch=_r(state.epoch), train_loss=train_loss,
                    eval_loss=_r(eval_loss), train_runtime=round(run_seconds, 3))
    summary = {
        "hyperparameters": asdict(cfg) | {"warmup_steps_effective": run.plan["warmup_steps"]},
        "library_versions": library_versions(), "datasets": run.datasets, "seed": cfg.seed,
        "metrics": {"train_loss": train_loss, "eval_loss": _r(eval_loss), "best_eval_loss": _r(state.best_metric),
                    "train_runtime": round(run_seconds, 3), "num_input_tokens_seen": state.num_input_tokens_seen},
        "counts": run.counts | {"skipped_no_response_tokens": run.data["skipped_no_response_tokens"]},
        "device": run.rt.device, "bf16": run.rt.bf16, "fp16": run.rt.fp16,
        "prompt_template": "chat_template" if getattr(run.tokenizer, "chat_template", None)
        else prompting.TEMPLATE_NAME,
        "base_model": cfg.base_model or run.source, "base_model_source": run.source, "task": run.task,
        "use_lora": cfg.use_lora, "total_steps": state.max_steps, "final_step": state.global_step,
        "best_checkpoint_step": best_step, "stopped_early": stopped_early,
        "resumed_from_step": run.callback.resumed_from, "throughput": throughput(run.callback, state),
        "speedups": run.speedups,
    }
    (run.paths.model_dir / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))


def throughput(callback: Any, state: Any) -> dict[str, float | None]:
    """Non-padding tokens per second of optimizer-step time in this session (eval and saving excluded)."""
    return step_throughput(state.num_input_tokens_seen - callback.tokens_at_start, callback.train_seconds,
                           callback.first_step)


def step_throughput(tokens: int, seconds: float, first_step: tuple[float, int] | None) -> dict[str, float | None]:
    """`tokens` over `seconds` of optimizer steps, and the same after the first step (`first_step`: its
    seconds and tokens): that one also pays for the process's first touch of its activation memory
    (the longest batch comes first), which later steps reuse. bench/train_throughput.py reports its
    other runs with this too."""
    out: dict[str, float | None] = {"non_padding_tokens": tokens, "train_step_seconds": round(seconds, 3),
                                    "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0}
    if first_step is not None:
        first_secs, first_tokens = first_step
        rest = seconds - first_secs
        out |= {"first_step_seconds": round(first_secs, 3), "first_step_tokens": first_tokens,
                "tokens_per_second_after_first_step": round((tokens - first_tokens) / rest, 1)
                if rest > 0 and tokens > first_tokens else None}
    return out


def classify(exc: BaseException) -> TrainError:
    if isinstance(exc, TrainError):
        return exc
    text = str(exc)
    oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text))
    if oom:
        return TrainError("out_of_memory", "ran out of memory: reduce batch_size or max_length, or enable "
                          "gradient_accumulation_steps (or use load_in_4bit / a larger instance type)")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return TrainError("internal_error", f"{type(exc).__name__}: {first}"[:500])


def fail(err: TrainError, paths_env: dict[str, str], events: Events | None) -> None:
    message = " ".join(err.message.split())
    if events is not None:
        events.emit("error", code=err.code, message=message)
    else:
        _METRIC_STDOUT.write(json.dumps({"event": "error", "code": err.code, "message": message}) + "\n")
        _METRIC_STDOUT.flush()
    try:
        failure = Paths.from_env(paths_env).failure_file
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(f"{err.code}: {message}"[:1000] + "\n")
    except OSError as exc:
        log(f"could not write the failure file: {exc}")


def quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()


def main() -> int:
    global _METRIC_STDOUT, _ALLOCATOR_TUNED
    _METRIC_STDOUT = sys.stdout
    sys.stdout = sys.stderr  # anything else that prints goes to stderr: stdout stays parseable
    env = dict(os.environ)
    events: list[Events] = []
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch's CPU allocator then asks the kernel for transparent huge pages (madvise) for its blocks
    # of 2 MiB and more: far fewer page faults when the first step first touches its activations.
    # fp32 bench, 3 alternating rounds against the tree without it: 1.10/1.01/1.10x on a Zen 4 EPYC
    # (first step 4.8 vs 5.5 s), 1.06x at the median on a Zen 3 (8.5 vs 11.2 s). Where THP is
    # "never" it changes nothing. torch reads it once, at its first allocation: set before import.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    import mkl_dispatch

    mkl_dispatch.load()  # before anything imports torch
    import speedups

    _ALLOCATOR_TUNED = speedups.tune_allocator()
    try:
        run = prepare(env, events)
        output, run_seconds = fit(run)
        eval_loss = validate(run)
        finish(run, output, run_seconds, eval_loss)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes a coded, user-readable reason
        err = classify(exc)
        if err.code == "internal_error" or err.code == "out_of_memory":
            traceback.print_exc(file=sys.stderr)
        log(f"failed: {err.code}: {err.message}")
        fail(err, env, events[0] if events else None)
        return 1


if __name__ == "__main__":
    sys.exit(main())
