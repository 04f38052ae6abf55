"""Model loading and batched text generation shared by serve.py and inference.py.

Imports nothing from app/ (it runs inside the inference container); it uses the sibling
prompting.py so that a model is prompted at inference exactly as it was trained.

Loading (`load_model`) accepts a model directory or a `model.tar.gz` and understands:

  * a directory with `merged/` (a full model written by train.py)     -> load `merged/`
  * a LoRA adapter directory (`adapter_config.json`)                   -> base + PeftModel, merged
  * a full model directory (`config.json`)                             -> load it

Base model of an adapter, first that applies: the `base_model` argument, env
`LLMTUNER_BASE_MODEL`, a `base_model/` subdirectory of the model dir, env
`LLMTUNER_BASE_MODEL_S3_URI` (an S3 prefix, downloaded once; the SageMaker backend sets it for
bases that are not on the hub), then the `training_summary.json` "base_model" (or
"base_model_source") / `adapter_config.json` "base_model_name_or_path": the first of those that is
a local directory, else an s3:// prefix, else a hub id (paths that do not exist here, such as a
training container's channel, are skipped). On a GPU the weights load straight onto it
(`device_map`), never whole into CPU memory first.

Generation parameters (`GenerationParams.from_dict`), all optional:

  max_new_tokens      int 1..4096, default 128
  temperature         number 0..5, default 1.0; 0 means greedy whatever do_sample says
  top_p               number 0 < p <= 1, default 1.0 (disabled)
  top_k               int >= 0, default 0 (disabled)
  do_sample           bool. When absent: sample iff temperature > 0, top_p < 1 or top_k > 0
                      was given explicitly; otherwise greedy. When given, it is honoured
                      (except temperature 0, which is always greedy).
  repetition_penalty  number 0 < x <= 10, default 1.0
  stop                str or list of <= 8 non-empty str of <= 64 chars; the completion is cut
                      before the first occurrence (the stop text is not returned)
  seed                int >= 0; makes a sampled request reproducible
  return_full_text    bool, default True: generated_text = input + completion (HF shape)
  raw                 bool, default False: True sends the input as is, without the
                      training prompt template
  ignore_eos          bool, default False: keep generating past end-of-sequence (benchmarks)
  system              str <= 8000 chars: an optional system message for the template

Every problem is collected and raised together as `ParamError([(param, message), ...])`
with names such as "parameters.top_p".
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prompting  # noqa: E402

MAX_NEW_TOKENS_LIMIT = 4096
MAX_STOP_SEQUENCES = 8
MAX_STOP_LENGTH = 64
MAX_SYSTEM_LENGTH = 8000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; str(e) is a one-line reason."""


class ParamError(ValueError):
    """Invalid request: `errors` is a list of (param, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = list(errors)
        super().__init__("; ".join(f"{p}: {m}" for p, m in self.errors))

    @property
    def param(self) -> str | None:
        return self.errors[0][0] if self.errors else None

    def details(self) -> list[dict[str, str]]:
        return [{"param": p, "message": m} for p, m in self.errors]


# --------------------------------------------------------------------------------------
# Generation parameters
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    do_sample: bool = False
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    return_full_text: bool = True
    raw: bool = False
    ignore_eos: bool = False
    system: str | None = None

    FIELDS = (
        "max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty",
        "stop", "seed", "return_full_text", "raw", "ignore_eos", "system",
    )

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "parameters") -> GenerationParams:
        """Validate a request's parameters object (None means all defaults)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ParamError([(prefix, "must be an object")])
        errors: list[tuple[str, str]] = []
        out: dict[str, Any] = {}

        def name(key: str) -> str:
            return f"{prefix}.{key}" if prefix else key

        for key in data:
            if key not in cls.FIELDS:
                errors.append((name(str(key)), f"unknown parameter; accepted: {', '.join(cls.FIELDS)}"))

        def number(key: str, lo: float, hi: float, lo_open: bool = False) -> None:
            if key not in data or data[key] is None:
                return
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                errors.append((name(key), "must be a number"))
                return
            low_ok = v > lo if lo_open else v >= lo
            if not low_ok or v > hi:
                left = "(" if lo_open else "["
                errors.append((name(key), f"must be in {left}{lo:g}, {hi:g}]; got {v!r}"))
                return
            out[key] = float(v)

        def integer(key: str, lo: int, hi: int) -> None:
            if key not in data or data[key] is None:
                return
            v = data[key]
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                errors.append((name(key), "must be an integer"))
                return
            if not lo <= v <= hi:
                errors.append((name(key), f"must be between {lo} and {hi}; got {v}"))
                return
            out[key] = v

        def boolean(key: str) -> None:
            if key not in data or data[key] is None:
                return
            if not isinstance(data[key], bool):
                errors.append((name(key), "must be true or false"))
                return
            out[key] = data[key]

        integer("max_new_tokens", 1, MAX_NEW_TOKENS_LIMIT)
        number("temperature", 0.0, 5.0)
        number("top_p", 0.0, 1.0, lo_open=True)
        integer("top_k", 0, 1_000_000)
        number("repetition_penalty", 0.0, 10.0, lo_open=True)
        integer("seed", 0, 2**63 - 1)
        for key in ("do_sample", "return_full_text", "raw", "ignore_eos"):
            boolean(key)

        stop = data.get("stop")
        if stop is not None:
            items = [stop] if isinstance(stop, str) else stop
            if not isinstance(items, list):
                errors.append((name("stop"), "must be a string or a list of strings"))
            elif len(items) > MAX_STOP_SEQUENCES:
                errors.append((name("stop"), f"at most {MAX_STOP_SEQUENCES} sequences; got {len(items)}"))
            else:
                good = True
                for i, s in enumerate(items):
                    if not isinstance(s, str) or not s:
                        errors.append((f"{name('stop')}[{i}]", "must be a non-empty string"))
                        good = False
                    elif len(s) > MAX_STOP_LENGTH:
                        errors.append((f"{name('stop')}[{i}]", f"at most {MAX_STOP_LENGTH} characters"))
                        good = False
                if good:
                    out["stop"] = tuple(items)

        system = data.get("system")
        if system is not None:
            if not isinstance(system, str):
                errors.append((name("system"), "must be a string"))
            elif len(system) > MAX_SYSTEM_LENGTH:
                errors.append((name("system"), f"at most {MAX_SYSTEM_LENGTH} characters"))
            else:
                out["system"] = system or None

        if errors:
            raise ParamError(errors)

        # The sampling rule (see the module docstring).
        if "do_sample" in out:
            do_sample = out["do_sample"]
        else:
            do_sample = (
                out.get("temperature", 0.0) > 0
                or out.get("top_p", 1.0) < 1.0
                or out.get("top_k", 0) > 0
            )
        if out.get("temperature") == 0.0:
            do_sample = False
        out["do_sample"] = bool(do_sample)
        if not do_sample:  # sampling knobs are irrelevant: normalise so greedy requests batch together
            out.pop("temperature", None)
            out.pop("top_p", None)
            out.pop("top_k", None)
        return cls(**out)

    def group_key(self) -> tuple[Any, ...]:
        """Requests with the same key can share one `generate` call."""
        return (self.do_sample, self.temperature, self.top_p, self.top_k, self.repetition_penalty,
                self.ignore_eos)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.FIELDS}
        d["stop"] = list(self.stop)
        return d


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    is_seq2seq: bool
    apply_template: bool
    device: str
    dtype: str
    model_dir: str
    kind: str  # "lora" | "merged" | "full"
    base_model: str | None = None
    task: str = "causal_lm"
    prompt_template: str | None = None
    max_input_tokens: int | None = None
    load_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def info(self) -> dict[str, Any]:
        return {
            "model_dir": self.model_dir,
            "kind": self.kind,
            "base_model": self.base_model,
            "task": self.task,
            "prompt_template": self.prompt_template if self.apply_template else None,
            "applies_prompt_template": self.apply_template,
            "device": self.device,
            "dtype": self.dtype,
            "max_input_tokens": self.max_input_tokens,
            "load_seconds": round(self.load_seconds, 3),
        }


def _is_within(base: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar archive, rejecting absolute paths, `..`, links and special files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ModelLoadError(f"cannot open model archive {archive}: {e}") from e
    with tf:
        members = tf.getmembers()
        for m in members:
            n = m.name
            if n.startswith(("/", "\\")) or (len(n) > 1 and n[1] == ":") or ".." in Path(n).parts \
                    or ".." in n.replace("\\", "/").split("/"):
                raise ModelLoadError(f"unsafe path in model archive: {n!r}")
            if not (m.isfile() or m.isdir()):
                raise ModelLoadError(f"model archive member {n!r} is not a regular file or directory")
            if not _is_within(dest, dest / n):
                raise ModelLoadError(f"unsafe path in model archive: {n!r}")
        tf.extractall(dest, members=members, filter="data")
    return dest


def _cache_root() -> Path:
    env = os.environ.get("LLMTUNER_MODEL_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "llmtuner-model-cache"


def extract_archive(archive: str | Path) -> Path:
    """Extract `model.tar.gz` once into a cache dir keyed by path, size and mtime."""
    archive = Path(archive).resolve()
    st = archive.stat()
    key = hashlib.sha256(f"{archive}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    root = _cache_root()
    target = root / key
    if (target / ".complete").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        safe_extract(archive, tmp)
        (tmp / ".complete").write_text(str(archive))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _looks_like_model(d: Path) -> bool:
    return any((d / f).exists() for f in ("config.json", "adapter_config.json", "merged"))


def resolve_model_dir(model_dir_or_tar: str | Path) -> Path:
    """A directory holding the model: extracts archives, descends into a lone top folder."""
    p = Path(model_dir_or_tar)
    if not p.exists():
        raise ModelLoadError(f"model path does not exist: {p}")
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise ModelLoadError(f"model path is a file but not a tar archive: {p}")
        p = extract_archive(p)
    if not _looks_like_model(p):
        inner = p / "model.tar.gz"
        if inner.is_file():
            p = extract_archive(inner)
    if not _looks_like_model(p):
        subdirs = [c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")]
        if len(subdirs) == 1 and _looks_like_model(subdirs[0]):
            p = subdirs[0]
    if not _looks_like_model(p):
        raise ModelLoadError(
            f"no model found in {model_dir_or_tar}: expected adapter_config.json, config.json or merged/"
        )
    return p


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path.name}: {e}") from e
    return data if isinstance(data, dict) else {}


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).exists() for f in TOKENIZER_FILES)


def download_s3_prefix(uri: str) -> Path:
    """The objects under an s3:// prefix, downloaded once into the model cache (boto3 and the
    container's role credentials; the inference and training images ship boto3)."""
    import boto3

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    target = _cache_root() / f"s3-{hashlib.sha256(uri.encode()).hexdigest()[:24]}"
    if (target / ".complete").exists():
        return target
    try:
        # The endpoint's region (the SageMaker backend sets SAGEMAKER_REGION) unless AWS's own is set.
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get(
            "SAGEMAKER_REGION")
        s3 = boto3.client("s3", region_name=region)
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/") or not _is_within(target, target / rel):
                    continue
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target / rel))
                count += 1
    except Exception as e:  # noqa: BLE001 - the reason goes to the operator
        raise ModelLoadError(f"cannot download the base model from {uri}: {_one_line(e)}") from e
    if not count:
        raise ModelLoadError(f"no base model files under {uri}")
    (target / ".complete").write_text(uri)
    return target


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~"))


def _pick_base(model_dir: Path, override: str | None, summary: dict[str, Any],
               adapter_cfg: dict[str, Any]) -> str:
    if override:
        return override
    env = os.environ.get("LLMTUNER_BASE_MODEL")
    if env:
        return env
    sub = model_dir / "base_model"
    if (sub / "config.json").exists():
        return str(sub)
    s3_env = os.environ.get("LLMTUNER_BASE_MODEL_S3_URI")
    if s3_env:
        return str(download_s3_prefix(s3_env))
    recorded = (summary.get("base_model"), summary.get("base_model_source"),
                adapter_cfg.get("base_model_name_or_path"))
    candidates = [c for c in recorded if isinstance(c, str) and c]
    for c in candidates:
        if Path(c).is_dir():
            return c
    for c in candidates:
        if c.startswith("s3://"):
            return str(download_s3_prefix(c))
    for c in candidates:
        if not _looks_like_path(c):
            return c
    raise ModelLoadError(
        "the adapter's base model is not here (recorded: " + (", ".join(candidates) or "none")
        + "); set LLMTUNER_BASE_MODEL to a hub id or folder, or LLMTUNER_BASE_MODEL_S3_URI to an S3 prefix")


def _pick_device(device: str | None) -> str:
    import torch

    device = device or os.environ.get("LLMTUNER_DEVICE") or None
    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _pick_dtype(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _auto_class(path: str) -> tuple[Any, bool]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - the reason goes to the operator
        raise ModelLoadError(f"cannot read model config from {path}: {_one_line(e)}") from e
    is_s2s = bool(getattr(cfg, "is_encoder_decoder", False))
    return (AutoModelForSeq2SeqLM if is_s2s else AutoModelForCausalLM), is_s2s


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:400]}"


def _load(model_dir: Path, merged: Path, summary: dict[str, Any], adapter_cfg: dict[str, Any],
          base_model: str | None, dtype: Any, device: str = "cpu") -> tuple[Any, Any, bool, str, str | None]:
    from transformers import AutoTokenizer

    # On a GPU, the weights go straight to it as they are read: a 7B base in bf16 (13.5 GB) would
    # not fit first in the 16 GiB of an ml.g5.xlarge's memory.
    place: dict[str, Any] = {"device_map": device} if device.startswith("cuda") else {}

    base: str | None = summary.get("base_model") if isinstance(summary.get("base_model"), str) else None
    try:
        if (merged / "config.json").exists():
            kind = "merged"
            cls, is_s2s = _auto_class(str(merged))
            model = cls.from_pretrained(str(merged), dtype=dtype, **place)
            tok_src = str(merged) if _has_tokenizer(merged) else str(model_dir)
        elif adapter_cfg:
            kind = "lora"
            try:
                from peft import PeftModel
            except ImportError as e:
                raise ModelLoadError(f"peft is not installed: {e}") from e
            base = _pick_base(model_dir, base_model, summary, adapter_cfg)
            if base.startswith("s3://"):
                base = str(download_s3_prefix(base))
            cls, is_s2s = _auto_class(base)
            model = cls.from_pretrained(base, dtype=dtype, **place)
            model = PeftModel.from_pretrained(model, str(model_dir))
            model = model.merge_and_unload()
            tok_src = str(model_dir) if _has_tokenizer(model_dir) else base
        elif (model_dir / "config.json").exists():
            kind = "full"
            cls, is_s2s = _auto_class(str(model_dir))
            model = cls.from_pretrained(str(model_dir), dtype=dtype, **place)
            tok_src = str(model_dir) if _has_tokenizer(model_dir) else (base or str(model_dir))
        else:  # resolve_model_dir guarantees one of the above
            raise ModelLoadError(f"no model found in {model_dir}")
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load model from {model_dir}: {_one_line(e)}") from e

    return model, tokenizer, is_s2s, kind, base


def load_model(
    model_dir_or_tar: str | Path, base_model: str | None = None, device: str | None = None
) -> Loaded:
    """Load a trained model for inference (see the module docstring). Raises ModelLoadError."""
    t0 = time.monotonic()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ModelLoadError(f"torch/transformers not installed: {e}") from e

    model_dir = resolve_model_dir(model_dir_or_tar)
    summary = _read_json(model_dir / "training_summary.json")
    adapter_cfg = _read_json(model_dir / "adapter_config.json")
    dev = _pick_device(device)
    dtype = _pick_dtype(dev)

    merged = model_dir / "merged"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = _load(model_dir, merged, summary, adapter_cfg, base_model, dtype, dev)
    model, tokenizer, is_s2s, kind, base = loaded

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right" if is_s2s else "left"
    model.to(dev)
    model.eval()

    limits = [
        x for x in (getattr(model.config, "max_position_embeddings", None),
                    getattr(tokenizer, "model_max_length", None))
        if isinstance(x, int) and 0 < x < 10_000_000
    ]
    task = summary.get("task") or ("seq2seq_lm" if is_s2s else "causal_lm")
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        is_seq2seq=is_s2s,
        apply_template=bool(summary),
        device=dev,
        dtype=str(dtype).replace("torch.", ""),
        model_dir=str(model_dir),
        kind=kind,
        base_model=base,
        task=str(task),
        prompt_template=summary.get("prompt_template") or (prompting.TEMPLATE_NAME if summary else None),
        max_input_tokens=min(limits) if limits else None,
        load_seconds=time.monotonic() - t0,
    )


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One input, tokenized and validated, ready to be batched."""

    text: str  # the caller's input
    prompt: str  # what the model sees
    ids: list[int]
    params: GenerationParams
    adapter: str | None = None  # a LoRA adapter of a multi-adapter server ("__base__": none); see serve.py
    sink: Callable[[int], None] | None = None  # called with each new token id as it is generated


def prepare(loaded: Loaded, text: Any, params: GenerationParams, param_name: str = "inputs",
            messages: list[dict[str, Any]] | None = None) -> Prepared:
    """Wrap in the prompt template (a whole conversation when `messages` is given), tokenize and
    check length. Raises ParamError."""
    if not isinstance(text, str):
        raise ParamError([(param_name, "must be a string")])
    tok = loaded.tokenizer
    use_template = messages is not None or (loaded.apply_template and not params.raw)
    prompt = (prompting.conversation_prompt(messages, tok) if messages is not None
              else prompting.prompt_text(text, tok, system=params.system, raw=not use_template))
    if use_template and not loaded.is_seq2seq:
        # Exactly as prompting.tokenize_record tokenizes a training example.
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        bos = getattr(tok, "bos_token_id", None)
        chat = getattr(tok, "chat_template", None)
        if bos is not None and getattr(tok, "add_bos_token", False) and not chat:
            ids = [bos, *ids]
    else:
        ids = tok(prompt)["input_ids"]
    if not ids:  # an empty prompt: start from BOS (or EOS) so the decoder has something to attend to
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ids = [start]
    limit = loaded.max_input_tokens
    if limit is not None and not loaded.is_seq2seq and len(ids) >= limit:
        raise ParamError([(param_name, f"input is {len(ids)} tokens; this model accepts fewer than {limit}")])
    return Prepared(text=text, prompt=prompt, ids=list(ids), params=params)


def _stopping_criteria(prompt_len: int, limits: list[int], stops: list[tuple[str, ...]], tokenizer: Any,
                       cancel_check: Callable[[], bool] | None) -> Any:
    import torch
    from transformers import StoppingCriteria

    class PerRow(StoppingCriteria):
        """Per-row own max_new_tokens and stop strings; everything when cancelled.

        `done_at[i]` is the number of new tokens row i had when it was stopped here.
        """

        def __init__(self) -> None:
            self.done_at: list[int | None] = [None] * len(limits)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            n = input_ids.shape[1] - prompt_len
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if cancel_check is not None and cancel_check():
                return done | True
            for i, lim in enumerate(limits):
                if self.done_at[i] is not None:
                    done[i] = True
                elif n >= lim:
                    done[i] = True
                    self.done_at[i] = n
                elif stops[i]:
                    tail = input_ids[i, prompt_len + max(0, n - (MAX_STOP_LENGTH + 8)):].tolist()
                    text = tokenizer.decode(tail, skip_special_tokens=True)
                    if any(s in text for s in stops[i]):
                        done[i] = True
                        self.done_at[i] = n
            return done

    return PerRow()


def _generation_config(loaded: Loaded, p: GenerationParams, max_new: int) -> Any:
    gc = copy.deepcopy(loaded.model.generation_config)
    gc.max_new_tokens = max_new
    gc.max_length = None
    gc.min_new_tokens = None
    gc.min_length = 0
    gc.do_sample = p.do_sample
    gc.num_beams = 1
    gc.num_return_sequences = 1
    gc.repetition_penalty = p.repetition_penalty
    if p.do_sample:
        gc.temperature = p.temperature
        gc.top_p = p.top_p
        gc.top_k = p.top_k
    else:
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
    gc.pad_token_id = loaded.tokenizer.pad_token_id
    if gc.eos_token_id is None:
        gc.eos_token_id = loaded.tokenizer.eos_token_id
    if p.ignore_eos:
        gc.eos_token_id = None
    gc.use_cache = True
    return gc


def _eos_ids(loaded: Loaded) -> set[int]:
    e = loaded.model.generation_config.eos_token_id
    if e is None:
        e = loaded.tokenizer.eos_token_id
    if e is None:
        return set()
    return set(e) if isinstance(e, list | tuple) else {int(e)}


def _run_group(loaded: Loaded, items: Sequence[Prepared],
               cancel_check: Callable[[], bool] | None) -> list[dict[str, Any]]:
    import torch
    from transformers import StoppingCriteriaList

    tok = loaded.tokenizer
    p0 = items[0].params
    max_new = max(it.params.max_new_tokens for it in items)
    width = max(len(it.ids) for it in items)
    pad = tok.pad_token_id
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it.ids)
        if loaded.is_seq2seq:  # the encoder takes right padding
            ids[i, :n] = torch.tensor(it.ids)
            mask[i, :n] = 1
        else:  # decoder-only: left padding, positions come from the mask
            ids[i, width - n:] = torch.tensor(it.ids)
            mask[i, width - n:] = 1
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    gen_prompt_len = 1 if loaded.is_seq2seq else width  # seq2seq output starts with decoder_start
    criteria = _stopping_criteria(
        gen_prompt_len, [it.params.max_new_tokens for it in items], [it.params.stop for it in items], tok,
        cancel_check,
    )
    gc = _generation_config(loaded, p0, max_new)
    if p0.do_sample and p0.seed is not None:
        torch.manual_seed(p0.seed)
    extra: dict[str, Any] = {}
    if any(it.adapter for it in items) and hasattr(loaded.model, "peft_config"):
        extra["adapter_names"] = [it.adapter or "__base__" for it in items]  # peft's mixed-adapter batch
    if any(it.sink for it in items):
        extra["streamer"] = _RowStreamer([it.sink for it in items])
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=gc,
            stopping_criteria=StoppingCriteriaList([criteria]), **extra,
        )
    new = out[:, gen_prompt_len:].tolist()
    eos = set() if p0.ignore_eos else _eos_ids(loaded)
    results = []
    for i, (it, row) in enumerate(zip(items, new, strict=True)):
        lim = it.params.max_new_tokens
        cut_at = criteria.done_at[i]
        row = row[: min(lim, cut_at if cut_at is not None else lim)]
        toks: list[int] = []
        finish = "length"
        for t in row:
            toks.append(t)
            if t in eos:
                finish = "stop"
                break
        text = tok.decode(toks, skip_special_tokens=True)
        if it.params.stop:
            cuts = [text.find(s) for s in it.params.stop if s in text]
            if cuts:
                text = text[: min(cuts)]
                finish = "stop"
        if finish == "length" and len(toks) < lim:
            finish = "stop"  # ended early for another reason (cancelled)
        results.append({
            "generated_text": (it.text + text) if it.params.return_full_text else text,
            "prompt_tokens": len(it.ids),
            "completion_tokens": len(toks),
            "finish_reason": finish,
        })
    return results


class _RowStreamer:
    """transformers' streamer protocol for a batch: each row's new token goes to that row's sink.
    The first `put` is the prompt (or the decoder's start token), not generated."""

    def __init__(self, sinks: list[Callable[[int], None] | None]) -> None:
        self.sinks, self.started = sinks, False

    def put(self, value: Any) -> None:
        if not self.started:
            self.started = True
            return
        for sink, token in zip(self.sinks, value.reshape(len(self.sinks), -1)[:, -1].tolist(), strict=True):
            if sink is not None:
                sink(int(token))

    def end(self) -> None:
        pass


def generate_prepared(loaded: Loaded, items: Sequence[Prepared],
                      cancel_check: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """Generate for prepared inputs: compatible ones together, seeded sampling one by one."""
    groups: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        p = it.params
        key: Any = ("seeded", i) if (p.do_sample and p.seed is not None) else p.group_key()
        groups.setdefault(key, []).append(i)
    results: list[dict[str, Any] | None] = [None] * len(items)
    with loaded.lock:
        for idxs in groups.values():
            for i, r in zip(idxs, _run_group(loaded, [items[i] for i in idxs], cancel_check), strict=True):
                results[i] = r
    return [r for r in results if r is not None]


def generate_batch(loaded: Loaded, inputs: list[str], params_list: list[GenerationParams],
                   cancel_check: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
    """`generated_text`, `prompt_tokens`, `completion_tokens`, `finish_reason` for each input."""
    if len(inputs) != len(params_list):
        raise ValueError("inputs and params_list differ in length")
    errors: list[tuple[str, str]] = []
    prepared: list[Prepared] = []
    for i, (text, p) in enumerate(zip(inputs, params_list, strict=True)):
        try:
            name = f"inputs[{i}]" if len(inputs) > 1 else "inputs"
            prepared.append(prepare(loaded, text, p, param_name=name))
        except ParamError as e:
            errors.extend(e.errors)
    if errors:
        raise ParamError(errors)
    return generate_prepared(loaded, prepared, cancel_check)


def parse_request(body: Any, max_inputs: int = 64) -> tuple[list[str], GenerationParams, bool]:
    """Validate `{"inputs": str | list[str], "parameters": {...}}` -> (inputs, params, was_list)."""
    if not isinstance(body, dict):
        raise ParamError([("body", 'must be a JSON object {"inputs": ..., "parameters": {...}}')])
    errors: list[tuple[str, str]] = []
    for key in body:
        if key not in ("inputs", "parameters"):
            errors.append((str(key), "unknown field; accepted: inputs, parameters"))
    inputs = body.get("inputs")
    was_list = isinstance(inputs, list)
    texts: list[str] = []
    if inputs is None:
        errors.append(("inputs", "is required"))
    elif isinstance(inputs, str):
        texts = [inputs]
    elif was_list:
        if not inputs:
            errors.append(("inputs", "must not be an empty list"))
        elif len(inputs) > max_inputs:
            errors.append(("inputs", f"at most {max_inputs} inputs per request; got {len(inputs)}"))
        for i, t in enumerate(inputs[:max_inputs]):
            if not isinstance(t, str):
                errors.append((f"inputs[{i}]", "must be a string"))
        texts = [t for t in inputs if isinstance(t, str)]
    else:
        errors.append(("inputs", "must be a string or a list of strings"))
    params: GenerationParams | None = None
    try:
        params = GenerationParams.from_dict(body.get("parameters"))
    except ParamError as e:
        errors.extend(e.errors)
    if errors or params is None:
        raise ParamError(errors)
    return texts, params, was_list


def format_result(r: dict[str, Any]) -> dict[str, Any]:
    """One item of the HF text-generation response."""
    return {
        "generated_text": r["generated_text"],
        "details": {
            "prompt_tokens": r["prompt_tokens"],
            "completion_tokens": r["completion_tokens"],
            "finish_reason": r["finish_reason"],
        },
    }
