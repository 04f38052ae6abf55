"""The hyperparameter contract: every hyperparameter train.py takes, with its type, range, default and help.

This is the one definition. train.py parses its hyperparameters with `parse`; the API builds its
pydantic schema from `PARAMS` and checks values with the same `coerce` and `cross_field_problems`
(app/training/schemas.py), so the API accepts exactly what train.py accepts. Pure standard library:
it is imported by the API, which may not have torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
LORA_LEARNING_RATE, FULL_LEARNING_RATE = 2e-4, 5e-5
MAX_TARGET_MODULES = 64


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | bool | str | choice | modules (a list of module names) | bool_or_path
    default: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()
    api: bool = True  # False: set by the platform (its backends), not by users through the API


PARAMS: tuple[Param, ...] = (
    Param("epochs", "int", 3, "passes over the training split", ge=1, le=100),
    Param("batch_size", "int", 4, "examples per device step", ge=1, le=512),
    Param("learning_rate", "float", None, f"peak learning rate; null: {LORA_LEARNING_RATE:g} with LoRA, "
          f"{FULL_LEARNING_RATE:g} for full fine-tuning", gt=0, le=1, nullable=True),
    Param("warmup_steps", "int", 0, "linear warm-up steps (wins over warmup_ratio when set)", ge=0, le=1_000_000),
    Param("warmup_ratio", "float", 0.0, "warm-up as a share of the total steps", ge=0, le=0.5),
    Param("gradient_accumulation_steps", "int", 1, "device steps per optimizer step", ge=1, le=1024),
    Param("max_length", "int", 512, "tokens; longer examples are truncated", ge=16, le=32768),
    Param("use_lora", "bool", True, "train a LoRA adapter (false: full fine-tuning)"),
    Param("lora_rank", "int", 16, "LoRA rank r", ge=1, le=256),
    Param("lora_alpha", "float", 32, "LoRA scaling alpha", gt=0, le=1024),
    Param("lora_dropout", "float", 0.05, "dropout on the LoRA input", ge=0, lt=1),
    Param("lora_target_modules", "modules", None, 'module names to adapt; null: the family\'s attention '
          'projections (["all-linear"]: every linear layer)', nullable=True),
    Param("weight_decay", "float", 0.0, "AdamW weight decay", ge=0, le=1),
    Param("max_grad_norm", "float", 1.0, "gradient clipping norm (0: no clipping)", ge=0, le=1000),
    Param("lr_scheduler_type", "choice", "linear", "learning-rate schedule", choices=SCHEDULERS),
    Param("early_stopping_patience", "int", None, "evaluations without improvement before stopping",
          ge=1, le=1000, nullable=True),
    Param("early_stopping_threshold", "float", 0.0, "smallest eval_loss improvement that counts", ge=0),
    Param("eval_steps", "int", None, "evaluate every this many steps (null: every epoch)", ge=1, nullable=True),
    Param("save_steps", "int", None, "checkpoint every this many steps (null: every epoch)", ge=1, nullable=True),
    Param("logging_steps", "int", 10, "a metric line every this many steps", ge=1),
    Param("save_total_limit", "int", 2, "checkpoints kept", ge=1, le=100),
    Param("fp16", "bool", None, "fp16 mixed precision (GPU only; null: off)", nullable=True),
    Param("bf16", "bool", None, "bf16 mixed precision; null: where the GPU or CPU computes bf16 natively",
          nullable=True),
    Param("load_in_4bit", "bool", False, "QLoRA: the frozen base in 4-bit NF4 (needs a GPU and use_lora)"),
    Param("train_on_inputs", "bool", False, "loss on the prompt too (false: on the responses only)"),
    Param("seed", "int", 42, "seed of initialisation, dropout and data order", ge=0, le=2**31 - 1),
    Param("max_steps", "int", None, "stop after this many optimizer steps (wins over epochs)",
          ge=1, le=100_000, nullable=True),
    Param("merge_adapter", "bool", False, "also save the base model with the adapter merged in (merged/)"),
    Param("cpu_accel", "bool", True, "on a CPU, the acceleration layer of training_scripts/cpu_accel/ "
          "(same maths; false: the plain recipe)"),
    Param("base_model", "str", None, "where the base model is: hub id, local folder or channel path",
          nullable=True, api=False),
    Param("base_model_name", "str", None, "the base model's name as the user gave it (catalogue id, hub id or "
          "s3:// URI): the only name the outputs record", nullable=True, api=False),
    Param("resume_from_checkpoint", "bool_or_path", True, "true: resume from the last checkpoint in the "
          "checkpoint directory; a path: from that checkpoint", nullable=True, api=False),
)
BY_NAME = {p.name: p for p in PARAMS}
TrainConfig = make_dataclass("TrainConfig", [(p.name, Any, field(default=p.default)) for p in PARAMS])


class ConfigError(ValueError):
    """Every problem found, each starting with the field's name."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def coerce(param: Param, value: Any) -> Any:
    """`value` as the parameter's type; ValueError saying what is expected when it is not one."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if param.nullable:
            return None
        raise ValueError("must not be null")
    out = _convert(param, value)
    if param.kind in ("int", "float") and not _in_bounds(param, out):
        raise ValueError(f"must be {bounds_text(param)} (got {value!r})")
    return out


def _convert(p: Param, value: Any) -> Any:
    if p.kind in ("int", "float"):
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if p.kind == "int" and not (number and float(value).is_integer()):
            raise ValueError(f"must be an integer (got {value!r})")
        if not number:
            raise ValueError(f"must be a number (got {value!r})")
        return int(value) if p.kind == "int" else float(value)
    if p.kind in ("bool", "bool_or_path"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        if p.kind == "bool_or_path" and isinstance(value, str):
            return value
        raise ValueError("must be true or false" + (" or a checkpoint path" if p.kind == "bool_or_path" else ""))
    if p.kind == "choice":
        if value not in p.choices:
            raise ValueError(f"must be one of {', '.join(p.choices)} (got {value!r})")
        return value
    if p.kind == "modules":
        ok = isinstance(value, list) and 0 < len(value) <= MAX_TARGET_MODULES
        if not ok or not all(isinstance(m, str) and m for m in value):
            raise ValueError(f"must be a list of 1 to {MAX_TARGET_MODULES} module names (got {value!r})")
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string (got {value!r})")
    return value


def _in_bounds(p: Param, v: float) -> bool:
    return ((p.ge is None or v >= p.ge) and (p.gt is None or v > p.gt)
            and (p.le is None or v <= p.le) and (p.lt is None or v < p.lt))


def bounds_text(p: Param) -> str:
    parts = [f"{op} {bound:g}" for op, bound in ((">=", p.ge), (">", p.gt), ("<=", p.le), ("<", p.lt))
             if bound is not None]
    return " and ".join(parts)


def cross_field_problems(values: dict[str, Any]) -> list[str]:
    """Rules across fields, each message starting with the field to change."""
    out = []
    if values.get("fp16") and values.get("bf16"):
        out.append("fp16/bf16: fp16 and bf16 cannot both be true")
    if values.get("load_in_4bit") and not values.get("use_lora", True):
        out.append("load_in_4bit: QLoRA needs use_lora true (4-bit weights cannot be fully fine-tuned)")
    eval_steps, save_steps = values.get("eval_steps"), values.get("save_steps")
    if eval_steps and save_steps and save_steps % eval_steps:
        out.append(f"save_steps: must be a multiple of eval_steps ({eval_steps}) so the best checkpoint can be "
                   f"kept (got {save_steps})")
    return out


def default_learning_rate(use_lora: bool) -> float:
    return LORA_LEARNING_RATE if use_lora else FULL_LEARNING_RATE


def parse(hps: dict[str, Any], has_model_channel: bool = False) -> tuple[Any, list[str]]:
    """A TrainConfig from `hps` (unknown names are returned, not errors); ConfigError lists every problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, raw in hps.items():
        if name in BY_NAME:
            try:
                values[name] = coerce(BY_NAME[name], raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    cfg = TrainConfig(**values)
    problems += cross_field_problems(vars(cfg))
    if not cfg.base_model and not has_model_channel:
        problems.append("base_model: required (a hub id or a local model directory)")
    if problems:
        raise ConfigError(problems)
    if cfg.learning_rate is None:
        cfg.learning_rate = default_learning_rate(cfg.use_lora)
    unknown = sorted(k for k in hps if k not in BY_NAME)
    return cfg, unknown


def as_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
