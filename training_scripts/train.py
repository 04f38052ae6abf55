#!/usr/bin/env python
"""LoRA / QLoRA / full supervised fine-tuning, following SageMaker's training-container contract.

Runs unchanged as a local subprocess and inside the Hugging Face PyTorch training container:

  hyperparameters  $SM_HPS (JSON object) or $SM_INPUT_CONFIG_DIR/hyperparameters.json; each one is
                   defined in config.py (names, types, ranges, defaults, help)
  data             every *.jsonl in $SM_CHANNEL_TRAIN (and optional $SM_CHANNEL_VALIDATION), records
                   {"messages": [...]} or {"text": ...} (data.py, prompting.py)
  base model       $SM_CHANNEL_MODEL when set, else hyperparameter `base_model` (hub id or local folder);
                   the outputs name it by `base_model_name` (what the user chose), never by a path
  output           $SM_MODEL_DIR: adapter (or full model), tokenizer, training_summary.json, code/
                   (outputs.py); $SM_OUTPUT_DATA_DIR/metrics.jsonl; checkpoints in $SM_CHECKPOINT_DIR
  failure          "{code}: {message}" in $SM_OUTPUT_DIR/failure, then a non-zero exit

stdout carries only metric events, one JSON object a line (metrics.py); every other log line goes
to stderr. The recipe reads top to bottom: config -> data -> model -> fit -> validate -> save.
Imports nothing from app/.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import config  # noqa: E402
import cpu_accel  # noqa: E402
import data  # noqa: E402
import outputs  # noqa: E402
import prompting  # noqa: E402
from metrics import Events, emit_error, log, make_callback, rounded  # noqa: E402
from sm_contract import Paths, TrainError, read_hyperparameters, write_failure  # noqa: E402

FAMILY_TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "t5": ["q", "v"],
}


# --------------------------------------------------------------------------- config


def load_config(env: dict[str, str], paths: Paths) -> Any:
    hps = read_hyperparameters(env, lambda msg: TrainError("invalid_hyperparameters", msg))
    try:
        cfg, unknown = config.parse(hps, has_model_channel=paths.model_channel is not None)
    except config.ConfigError as exc:
        raise TrainError("invalid_hyperparameters", str(exc)) from exc
    if unknown:
        log(f"ignoring unknown hyperparameters: {', '.join(unknown)}")
    return cfg


@dataclass
class Runtime:
    device: str
    bf16: bool
    fp16: bool


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: there bf16 matmuls run several times faster than fp32; elsewhere they are emulated."""
    import torch

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_runtime(cfg: Any) -> Runtime:
    """bf16 autocast where the hardware computes bf16 natively, unless bf16 is false; fp16 on GPUs only."""
    import torch

    if not torch.cuda.is_available():
        if cfg.load_in_4bit:
            raise TrainError("qlora_requires_gpu", "load_in_4bit (QLoRA) needs a CUDA GPU: choose a GPU "
                             "instance type or set load_in_4bit to false")
        native = cpu_has_native_bf16()
        if cfg.fp16:
            log("fp16 ignored on CPU: CPUs have no fast fp16 matmul (bf16 autocast is used where native)")
        if cfg.bf16 and not native:
            log("bf16 ignored: this CPU has no native bfloat16 (AVX512-BF16/AMX); training runs in fp32")
        return Runtime("cpu", native and cfg.bf16 is not False, False)
    bf16_ok = torch.cuda.is_bf16_supported()
    if cfg.bf16 and not bf16_ok:
        raise TrainError("invalid_hyperparameters", "bf16: this GPU does not support bfloat16; use fp16")
    auto = cfg.bf16 is None and cfg.fp16 is None
    return Runtime("cuda", bool(cfg.bf16) or (auto and bf16_ok), bool(cfg.fp16))


# --------------------------------------------------------------------------- model


def resolve_model_source(cfg: Any, paths: Paths, name: str) -> str:
    """Where to load the base model from: the model channel, a local folder or a hub id (`name` for messages)."""
    if paths.model_channel is not None:
        src = paths.model_channel
        if not (src / "config.json").exists():  # the channel may hold the model one folder down
            inner = list(src.glob("*/config.json"))
            src = inner[0].parent if len(inner) == 1 else src
        if not (src / "config.json").exists():
            raise TrainError("base_model_not_found", "no config.json in the model channel")
        return str(src)
    location = str(cfg.base_model)
    if location.startswith("s3://"):
        raise TrainError("base_model_not_found", f"{name}: s3:// base models must reach the script "
                         "through the 'model' input channel (SM_CHANNEL_MODEL)")
    if outputs.looks_local(location):
        if not (Path(location).expanduser() / "config.json").exists():
            raise TrainError("base_model_not_found", f"no model {name!r} (no config.json): check base_model")
        return str(Path(location).expanduser())
    return location


def load_tokenizer_and_model(source: str, name: str, cfg: Any, rt: Runtime) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        model_config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise TrainError("base_model_not_found", f"could not load base model {name!r} "
                         f"({exc}); check base_model (hub id or local directory), network access or HF_TOKEN") from exc
    task = "seq2seq_lm" if getattr(model_config, "is_encoder_decoder", False) else "causal_lm"
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
    model = (AutoModelForSeq2SeqLM if task == "seq2seq_lm" else AutoModelForCausalLM).from_pretrained(source, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    outputs.name_model(model, name)
    return tokenizer, model, task


def apply_lora(model: Any, cfg: Any, task: str) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if cfg.lora_target_modules is None:
        cfg.lora_target_modules = FAMILY_TARGET_MODULES.get(model.config.model_type, ["all-linear"])
    targets = "all-linear" if cfg.lora_target_modules == ["all-linear"] else cfg.lora_target_modules
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
        bias="none", task_type=TaskType.SEQ_2_SEQ_LM if task == "seq2seq_lm" else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise TrainError("invalid_hyperparameters", f"lora_target_modules: {exc}") from exc


# --------------------------------------------------------------------------- fit


def plan_schedule(cfg: Any, n_train: int, has_validation: bool) -> dict[str, Any]:
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


def build_trainer(trainer_class: type, model: Any, tokenizer: Any, cfg: Any, rt: Runtime, paths: Paths,
                  splits: data.Splits, plan: dict[str, Any], callbacks: list[Any]) -> Any:
    """transformers' Trainer with length-grouped batches and dynamic padding (the big CPU win by itself)."""
    from transformers import EarlyStoppingCallback, TrainingArguments
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
    if splits.validation and cfg.early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(cfg.early_stopping_patience, cfg.early_stopping_threshold)]
    trainer = trainer_class(
        model=model, args=args, train_dataset=splits.train, eval_dataset=splits.validation or None,
        data_collator=data.PadCollator(tokenizer.pad_token_id, splits.seq2seq), processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def find_resume_checkpoint(cfg: Any, paths: Paths) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    value = cfg.resume_from_checkpoint
    if isinstance(value, str):
        if not Path(value).is_dir():
            raise TrainError("invalid_hyperparameters", f"resume_from_checkpoint: no checkpoint at {value}")
        return value
    if value and paths.checkpoint_dir.is_dir():
        return get_last_checkpoint(str(paths.checkpoint_dir))
    return None


@dataclass
class Run:
    cfg: Any
    paths: Paths
    events: Events
    rt: Runtime
    source: str
    name: str  # the base model's name in the outputs (outputs.public_name)
    tokenizer: Any
    model: Any
    task: str
    splits: data.Splits
    datasets: dict[str, Any]


def prepare(env: dict[str, str], paths: Paths, events: Events) -> Run:
    """config -> data -> model."""
    cfg = load_config(env, paths)
    train_records, train_files = data.read_split(paths.train_dir)
    if not train_records:
        raise TrainError("no_training_data", "no records in any *.jsonl file of the training channel: "
                         "upload a non-empty JSONL training file")
    val_records, val_files = data.read_split(paths.validation_dir) if paths.validation_dir else ([], [])
    name = outputs.public_name(cfg.base_model_name, cfg.base_model or "model")
    source = resolve_model_source(cfg, paths, name)
    rt = pick_runtime(cfg)
    import transformers

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    transformers.set_seed(cfg.seed)
    tokenizer, model, task = load_tokenizer_and_model(source, name, cfg, rt)
    splits = data.tokenize_splits(train_records, val_records, tokenizer, cfg, task == "seq2seq_lm", log)
    if cfg.use_lora:
        model = apply_lora(model, cfg, task)
    return Run(cfg, paths, events, rt, source, name, tokenizer, model, task, splits,
               {"train": train_files, "validation": val_files})


def fit(run: Run) -> tuple[Any, Any, Any, dict[str, Any], float]:
    """Trainer.train(), with the CPU acceleration layer when it applies."""
    cfg = run.cfg
    plan = plan_schedule(cfg, len(run.splits.train), bool(run.splits.validation))
    callback = make_callback(run.events, cfg.epochs, run.splits.counts, run.rt.device)
    with cpu_accel.apply(run.model, enabled=cfg.cpu_accel, device=run.rt.device, bf16=run.rt.bf16,
                         use_lora=cfg.use_lora, batch_size=cfg.batch_size) as accel:
        trainer = build_trainer(accel.trainer_class, run.model, run.tokenizer, cfg, run.rt, run.paths,
                                run.splits, plan, [callback])
        resume = find_resume_checkpoint(cfg, run.paths)
        if resume:
            log(f"resuming from {Path(resume).name}")
        started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume)
        run_seconds = time.perf_counter() - started
    if not math.isfinite(output.training_loss):
        raise TrainError("training_diverged", "the training loss is not finite: lower learning_rate")
    return trainer, callback, output, plan | {"cpu_accel": accel.record}, run_seconds


# --------------------------------------------------------------------------- validate


def validate(run: Run, trainer: Any, plan: dict[str, Any]) -> float | None:
    """Final validation loss of the model being saved (the best checkpoint when there is validation data)."""
    if not run.splits.validation:
        return None
    if trainer.state.best_metric is not None and plan.get("load_best_model_at_end"):
        return float(trainer.state.best_metric)
    return float(trainer.evaluate()["eval_loss"])


# --------------------------------------------------------------------------- save


def save(run: Run, trainer: Any, callback: Any, output: Any, plan: dict[str, Any], run_seconds: float,
         eval_loss: float | None) -> None:
    state, cfg = trainer.state, run.cfg
    best_step = _checkpoint_step(state.best_model_checkpoint)
    stopper = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "early_stopping_patience")), None)
    stopped_early = bool(stopper and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience)
    if stopped_early:
        run.events.emit("early_stop", step=state.global_step, best_step=best_step, best_eval_loss=rounded(eval_loss))
    outputs.save_outputs(trainer, run.tokenizer, cfg, run.source, run.task, run.paths.model_dir)
    train_loss = rounded(output.training_loss)
    run.events.emit("end", step=state.global_step, epoch=rounded(state.epoch), train_loss=train_loss,
                    eval_loss=rounded(eval_loss), train_runtime=round(run_seconds, 3))
    hyperparameters = config.as_dict(cfg) | {"base_model": run.name, "warmup_steps_effective": plan["warmup_steps"]}
    template = "chat_template" if getattr(run.tokenizer, "chat_template", None) else prompting.TEMPLATE_NAME
    outputs.write_summary(run.paths.model_dir, {
        "hyperparameters": hyperparameters, "library_versions": outputs.library_versions(),
        "datasets": run.datasets, "seed": cfg.seed,
        "metrics": {"train_loss": train_loss, "eval_loss": rounded(eval_loss),
                    "best_eval_loss": rounded(state.best_metric), "train_runtime": round(run_seconds, 3),
                    "num_input_tokens_seen": state.num_input_tokens_seen},
        "counts": run.splits.counts | {"skipped_no_response_tokens": run.splits.skipped_no_response_tokens},
        "device": run.rt.device, "bf16": run.rt.bf16, "fp16": run.rt.fp16,
        "prompt_template": template,
        "base_model": run.name, "base_model_source": run.name, "task": run.task,
        "use_lora": cfg.use_lora, "total_steps": state.max_steps, "final_step": state.global_step,
        "best_checkpoint_step": best_step, "stopped_early": stopped_early,
        "resumed_from_step": callback.resumed_from, "throughput": callback.throughput(state),
        "cpu_accel": plan["cpu_accel"],
    })


def _checkpoint_step(path: str | None) -> int | None:
    try:
        return int(Path(path).name.rsplit("-", 1)[-1]) if path else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- failures and main


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


def main() -> int:
    metric_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything else that prints goes to stderr: stdout stays parseable
    env = dict(os.environ)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    events: Events | None = None
    try:
        paths = Paths.from_env(env)
        events = Events(paths.output_data_dir / "metrics.jsonl", metric_stdout)
        run = prepare(env, paths, events)
        trainer, callback, output, plan, run_seconds = fit(run)
        eval_loss = validate(run, trainer, plan)
        save(run, trainer, callback, output, plan, run_seconds, eval_loss)
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes a coded, user-readable reason
        err = classify(exc)
        if err.code in ("internal_error", "out_of_memory"):
            traceback.print_exc(file=sys.stderr)
        message = " ".join(err.message.split())
        log(f"failed: {err.code}: {message}")
        emit_error(events, metric_stdout, err.code, message)
        try:
            write_failure(env, err.code, message)
        except OSError as write_exc:
            log(f"could not write the failure file: {write_exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
