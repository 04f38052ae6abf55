#!/usr/bin/env python
"""Evaluate a fine-tuned model against its base, following SageMaker's training-container contract.

The platform runs it as a training-style job on either backend (a local subprocess, or a
SageMaker training job with the same script), so it reads and writes what train.py does:

  hyperparameters  $SM_HPS (JSON object) or $SM_INPUT_CONFIG_DIR/hyperparameters.json; string values
                   are JSON-decoded when they parse. metrics, compare_with_base, max_examples,
                   generation {max_new_tokens, temperature, ...}, include_general_probe, seed,
                   max_length, batch_size, base_model (hub id or local dir of the base)
  data             every *.jsonl in $SM_CHANNEL_TRAIN: {"messages": [...]} or {"text": ...}
  tuned model      $SM_CHANNEL_MODEL: model.tar.gz written by train.py (or its folder)
  base model       $SM_CHANNEL_BASE when set (an s3:// base), else the base_model hyperparameter
  output           $SM_MODEL_DIR/evaluation.json
  failure          "{code}: {message}" in $SM_OUTPUT_DIR/failure, then a non-zero exit

Perplexity is teacher-forced on the reference response tokens only (prompting.tokenize_record
labels): exp of the mean token NLL over all response tokens of all examples. Generation metrics
(eval_metrics.py) score the completion of each conversation's last assistant turn. A built-in
general-capability probe (general_probe.json) is scored for both models to show forgetting.

stdout carries only JSON events (eval_start, eval_progress, eval_end, error); logs go to stderr.
Imports nothing from app/.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_metrics  # noqa: E402
import modeling  # noqa: E402
import prompting  # noqa: E402
import sm_contract  # noqa: E402

PROBE_FILE = Path(__file__).resolve().parent / "general_probe.json"
MAX_SAMPLES = 5
IGNORE_INDEX = -100
_STDOUT = sys.stdout


class EvalError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def emit(event: str, **fields: Any) -> None:
    _STDOUT.write(json.dumps({"event": event, **fields}) + "\n")
    _STDOUT.flush()


# --------------------------------------------------------------------------- configuration


def read_hyperparameters(env: dict[str, str]) -> dict[str, Any]:
    return sm_contract.read_hyperparameters(env, lambda msg: EvalError("invalid_hyperparameters", msg))


@dataclass
class EvalConfig:
    metrics: list[str]
    compare_with_base: bool = True
    max_examples: int = 50
    include_general_probe: bool = True
    seed: int = 42
    max_length: int = 1024          # tokens per example for perplexity (longer ones are cut)
    batch_size: int = 8             # examples per forward / generate call
    base_model: str | None = None
    generation: Any = None          # modeling.GenerationParams

    @classmethod
    def from_hyperparameters(cls, hps: dict[str, Any]) -> EvalConfig:
        """Validate every field, collecting all problems before raising."""
        problems: list[str] = []
        metrics = hps.get("metrics") or list(eval_metrics.ALL_METRICS)
        if not isinstance(metrics, list) or any(m not in eval_metrics.ALL_METRICS for m in metrics):
            problems.append(f"metrics: choose from {', '.join(eval_metrics.ALL_METRICS)}")
            metrics = []

        def integer(name: str, default: int, lo: int, hi: int) -> int:
            v = hps.get(name, default)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                problems.append(f"{name}: must be an integer from {lo} to {hi}")
                return default
            return v

        def flag(name: str, default: bool) -> bool:
            v = hps.get(name, default)
            if not isinstance(v, bool):
                problems.append(f"{name}: must be true or false")
                return default
            return v

        cfg = cls(
            metrics=list(dict.fromkeys(metrics)), compare_with_base=flag("compare_with_base", True),
            max_examples=integer("max_examples", 50, 1, 100_000),
            include_general_probe=flag("include_general_probe", True), seed=integer("seed", 42, 0, 2**32 - 1),
            max_length=integer("max_length", 1024, 8, 1_048_576), batch_size=integer("batch_size", 8, 1, 256),
            base_model=str(hps["base_model"]) if hps.get("base_model") else None,
        )
        gen = hps.get("generation") or {}
        if isinstance(gen, dict):
            gen = {k: v for k, v in gen.items() if v is not None} | {"return_full_text": False}
        try:
            cfg.generation = modeling.GenerationParams.from_dict(gen, prefix="generation")
        except modeling.ParamError as e:
            problems.extend(f"{p}: {m}" for p, m in e.errors)
        if problems:
            raise EvalError("invalid_hyperparameters", "; ".join(problems))
        return cfg


def read_records(directory: Path, limit: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise EvalError("invalid_evaluation_data", f"{path.name} line {lineno} is not JSON: {e}") from e
            if isinstance(rec, dict) and (isinstance(rec.get("messages"), list) or isinstance(rec.get("text"), str)):
                records.append(rec)
            if len(records) >= limit:
                return records
    return records


# --------------------------------------------------------------------------- models


def load_tuned(model_channel: Path, base: str | None) -> Any:
    try:
        return modeling.load_model(model_channel, base_model=base)
    except modeling.ModelLoadError as e:
        raise EvalError("model_load_failed", f"cannot load the tuned model: {e}") from e


def load_base(source: str) -> Any:
    """The base model alone, prompted with the same template as the tuned one."""
    from transformers import AutoTokenizer

    t0 = time.monotonic()
    try:
        cls, is_s2s = modeling._auto_class(source)
        device = modeling._pick_device(None)
        model = cls.from_pretrained(source, dtype=modeling._pick_dtype(device))
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - the reason goes to the user
        raise EvalError("model_load_failed", f"cannot load the base model {source}: {modeling._one_line(e)}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right" if is_s2s else "left"
    model.to(device).eval()
    limit = getattr(model.config, "max_position_embeddings", None)
    return modeling.Loaded(
        model=model, tokenizer=tokenizer, is_seq2seq=is_s2s, apply_template=True, device=device,
        dtype=str(model.dtype).replace("torch.", ""), model_dir=source, kind="full", base_model=source,
        max_input_tokens=limit if isinstance(limit, int) else None, load_seconds=time.monotonic() - t0,
    )


def free(loaded: Any) -> None:
    import torch

    loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- encoding


def teacher_forced(rec: dict[str, Any], loaded: Any, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input ids, labels) scoring the response tokens; seq2seq: (encoder ids, response ids)."""
    tok = loaded.tokenizer
    if not loaded.is_seq2seq:
        ids, labels, _ = prompting.tokenize_record(rec, tok, max_length)
        return (ids, labels) if any(lab != IGNORE_INDEX for lab in labels) else None
    pieces = prompting.segments(rec, tok)
    last = max((i for i, (_, r) in enumerate(pieces) if r), default=None)
    if last is None:
        return None
    source = "".join(t for t, _ in pieces[:last])
    enc = tok(source, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
    lab = tok(pieces[last][0], add_special_tokens=False)["input_ids"]
    return (enc[:max_length], lab[:max_length]) if lab else None


def generation_prompt(rec: dict[str, Any], loaded: Any, cfg: EvalConfig) -> tuple[list[int], str, str] | None:
    """Prompt ids exactly as training tokenized them, the last user text and the reference."""
    pair = prompting.record_prompt_and_reference(rec)
    if pair is None or not pair[0]:
        return None
    messages, reference = pair
    tok = loaded.tokenizer
    pieces = prompting.segments({"messages": [*messages, {"role": "assistant", "content": reference}]}, tok)
    last = max((i for i, (_, r) in enumerate(pieces) if r), default=0)
    ids: list[int] = []
    bos = getattr(tok, "bos_token_id", None)
    chat = getattr(tok, "chat_template", None)
    if not loaded.is_seq2seq and bos is not None and getattr(tok, "add_bos_token", False) and not chat:
        ids.append(bos)
    for text, _ in pieces[:last]:
        ids.extend(tok(text, add_special_tokens=False)["input_ids"])
    if not ids:
        ids = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    room = (loaded.max_input_tokens or cfg.max_length + cfg.generation.max_new_tokens) - cfg.generation.max_new_tokens
    ids = ids[-max(room, 1):]  # keep the end of a long conversation: it holds the question
    user = next((str(m.get("content") or "") for m in reversed(messages) if m["role"] != "assistant"), "")
    return ids, user, reference


# --------------------------------------------------------------------------- scoring


class Progress:
    def __init__(self, total: int) -> None:
        self.done, self.total = 0, total

    def step(self, n: int, model: str, phase: str) -> None:
        self.done += n
        emit("eval_progress", done=min(self.done, self.total), total=self.total, model=model, phase=phase)


def nll_sum(loaded: Any, batch: list[tuple[list[int], list[int]]]) -> tuple[float, int]:
    """Summed token NLL and token count over the labelled positions of a batch."""
    import torch
    import torch.nn.functional as F

    pad = loaded.tokenizer.pad_token_id
    n = max(len(i) for i, _ in batch)
    m = max(len(lab) for _, lab in batch) if loaded.is_seq2seq else n
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    labels = torch.full((len(batch), m), IGNORE_INDEX, dtype=torch.long)
    for row, (i, lab) in enumerate(batch):
        ids[row, : len(i)] = torch.tensor(i)
        mask[row, : len(i)] = 1
        labels[row, : len(lab)] = torch.tensor(lab)
    ids, mask, labels = ids.to(loaded.device), mask.to(loaded.device), labels.to(loaded.device)
    with torch.inference_mode():
        if loaded.is_seq2seq:
            logits = loaded.model(input_ids=ids, attention_mask=mask, labels=labels).logits
        else:
            logits = loaded.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            labels = labels[:, 1:]
        keep = labels != IGNORE_INDEX
        nll = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
    return float(nll), int(keep.sum())


def score_model(loaded: Any, name: str, records: list[dict[str, Any]], cfg: EvalConfig,
                progress: Progress) -> dict[str, Any]:
    """Metrics, outputs and the probe answers of one model."""
    out: dict[str, Any] = {"metrics": {}, "outputs": [], "probe": None}
    bs = cfg.batch_size
    if "perplexity" in cfg.metrics:
        encoded = [e for e in (teacher_forced(r, loaded, cfg.max_length) for r in records) if e]
        total, count = 0.0, 0
        for k in range(0, len(encoded), bs):
            s, c = nll_sum(loaded, encoded[k:k + bs])
            total, count = total + s, count + c
            progress.step(len(encoded[k:k + bs]), name, "perplexity")
        out["metrics"]["perplexity"] = eval_metrics.perplexity(total, count)
    gen_wanted = [m for m in cfg.metrics if m in eval_metrics.GENERATION_METRICS]
    if gen_wanted:
        prompts = [p for p in (generation_prompt(r, loaded, cfg) for r in records) if p]
        results = generate(loaded, [p[0] for p in prompts], cfg.generation, bs, progress, name)
        preds = [r["text"] for r in results]
        refs = [p[2] for p in prompts]
        out["metrics"].update(eval_metrics.generation_metrics(gen_wanted, preds, refs,
                                                              [r["tokens"] for r in results]))
        out["outputs"] = [{"prompt": p[1], "reference": p[2], "output": r["text"]}
                          for p, r in zip(prompts, results, strict=True)]
    if cfg.include_general_probe:
        out["probe"] = run_probe(loaded, cfg, progress, name)
    return out


def generate(loaded: Any, prompts: list[list[int]], params: Any, bs: int, progress: Progress,
             name: str, phase: str = "generation") -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for k in range(0, len(prompts), bs):
        chunk = [modeling.Prepared(text="", prompt="", ids=ids, params=params) for ids in prompts[k:k + bs]]
        for r in modeling.generate_prepared(loaded, chunk):
            results.append({"text": r["generated_text"], "tokens": r["completion_tokens"]})
        progress.step(len(chunk), name, phase)
    return results


def load_probe() -> dict[str, Any]:
    return dict(json.loads(PROBE_FILE.read_text()))


def run_probe(loaded: Any, cfg: EvalConfig, progress: Progress, name: str) -> dict[str, Any]:
    probe = load_probe()
    params = modeling.GenerationParams(max_new_tokens=int(probe.get("max_new_tokens", 48)), temperature=0.0,
                                       return_full_text=False)
    records = [{"messages": [{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": ""}]}
               for it in probe["items"]]
    pcfg = EvalConfig(metrics=[], max_length=cfg.max_length, generation=params)
    prompts = [generation_prompt(r, loaded, pcfg) for r in records]
    answers = generate(loaded, [p[0] for p in prompts if p], params, cfg.batch_size, progress, name, "probe")
    items = [{"task": it["task"], "prompt": it["prompt"], "expected": it["expected"],
              "passed": eval_metrics.probe_passed(a["text"], it["expected"]), "output": a["text"][:200]}
             for it, a in zip(probe["items"], answers, strict=True)]
    return {**eval_metrics.probe_score([i["passed"] for i in items]), "items": items}


# --------------------------------------------------------------------------- report


def finite(obj: Any) -> Any:
    """JSON without NaN/Infinity (PostgreSQL's json type refuses them): those become null."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


@dataclass
class Report:
    cfg: EvalConfig
    records: int
    tuned: dict[str, Any]
    base: dict[str, Any] | None
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        cfg, tuned, base = self.cfg, self.tuned, self.base
        compare = cfg.compare_with_base and base is not None
        result: dict[str, Any] = {
            "tuned": tuned["metrics"], "base": base["metrics"] if compare and base else None,
            "improvement": eval_metrics.improvement(tuned["metrics"], base["metrics"]) if compare and base else None,
            "general_capability": None, "samples": self.samples(compare),
            "num_examples": self.records, "num_generated": len(tuned["outputs"]),
            "references_are_json": eval_metrics.references_are_json([o["reference"] for o in tuned["outputs"]]),
            "generation": cfg.generation.as_dict(), **self.info,
        }
        if cfg.include_general_probe and tuned["probe"] is not None:
            bp = base["probe"] if base else None
            strip = {k: v for k, v in tuned["probe"].items() if k != "items"}
            t_items = tuned["probe"]["items"]
            b_items = bp["items"] if bp else [None] * len(t_items)
            result["general_capability"] = {
                "tuned": strip, "base": {k: v for k, v in bp.items() if k != "items"} if bp else None,
                "forgetting": eval_metrics.forgetting(tuned["probe"], bp) if bp else None,
                "items": [{**{k: t[k] for k in ("task", "prompt", "expected")}, "tuned_passed": t["passed"],
                           "tuned_output": t["output"], "base_passed": b["passed"] if b else None,
                           "base_output": b["output"] if b else None}
                          for t, b in zip(t_items, b_items, strict=True)],
            }
        return finite(result)

    def samples(self, compare: bool) -> list[dict[str, Any]]:
        base_out = self.base["outputs"] if compare and self.base else []
        return [{"prompt": t["prompt"], "reference": t["reference"],
                 "base_output": base_out[i]["output"] if i < len(base_out) else None, "tuned_output": t["output"]}
                for i, t in enumerate(self.tuned["outputs"][:MAX_SAMPLES])]


# --------------------------------------------------------------------------- main


def run(env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    cfg = EvalConfig.from_hyperparameters(read_hyperparameters(env))
    data_dir = Path(env.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    records = read_records(data_dir, cfg.max_examples)
    if not records:
        raise EvalError("no_evaluation_data", f"no records in any *.jsonl file of {data_dir}")
    model_channel = Path(env.get("SM_CHANNEL_MODEL", "/opt/ml/input/data/model"))
    base_source = env.get("SM_CHANNEL_BASE") or cfg.base_model
    import transformers

    transformers.set_seed(cfg.seed)
    transformers.logging.set_verbosity_error()
    need_base = cfg.compare_with_base or cfg.include_general_probe
    per_model = len(records) * (("perplexity" in cfg.metrics)
                                + any(m in eval_metrics.GENERATION_METRICS for m in cfg.metrics))
    probe_n = len(load_probe()["items"]) if cfg.include_general_probe else 0
    progress = Progress(per_model + probe_n + (per_model if cfg.compare_with_base else 0) + probe_n)
    emit("eval_start", examples=len(records), metrics=cfg.metrics, compare_with_base=cfg.compare_with_base,
         total=progress.total)
    tuned_model = load_tuned(model_channel, base_source)
    info = {"model": tuned_model.info(), "device": tuned_model.device}
    base_source = base_source or tuned_model.base_model
    tuned = score_model(tuned_model, "tuned", records, cfg, progress)
    free(tuned_model)
    base = None
    if need_base:
        if not base_source:
            raise EvalError("base_model_not_found", "the tuned model records no base model and none was given")
        base_model = load_base(base_source)
        base_cfg = cfg if cfg.compare_with_base else EvalConfig(
            metrics=[], include_general_probe=True, max_length=cfg.max_length, batch_size=cfg.batch_size,
            generation=cfg.generation)
        base = score_model(base_model, "base", records, base_cfg, progress)
        free(base_model)
    if progress.done < progress.total:  # examples without a prompt (text records) were not generated for
        progress.step(progress.total - progress.done, "base" if base else "tuned", "done")
    info.update(base_model=base_source, runtime_seconds=round(time.monotonic() - started, 3))
    report = Report(cfg, len(records), tuned, base, info).to_json()
    emit("eval_end", tuned=report["tuned"], base=report["base"], improvement=report["improvement"],
         runtime_seconds=info["runtime_seconds"])
    return report


def classify(exc: BaseException) -> EvalError:
    if isinstance(exc, EvalError):
        return exc
    text = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return EvalError("out_of_memory", "ran out of memory: lower max_examples or generation.max_new_tokens, "
                         "or use a larger instance type")
    if isinstance(exc, modeling.ParamError):
        return EvalError("invalid_hyperparameters", "; ".join(f"{p}: {m}" for p, m in exc.errors))
    first = text.strip().splitlines()[0] if text.strip() else ""
    return EvalError("internal_error", f"{type(exc).__name__}: {first}"[:500])


def main() -> int:
    global _STDOUT
    _STDOUT = sys.stdout
    sys.stdout = sys.stderr  # stdout stays parseable: only events go there
    try:
        return _main(dict(os.environ))
    finally:
        sys.stdout = _STDOUT


def _main(env: dict[str, str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = run(env)
        model_dir = Path(env.get("SM_MODEL_DIR", "/opt/ml/model"))
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "evaluation.json").write_text(json.dumps(report, indent=2, default=str))
        return 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes a coded, user-readable reason
        err = classify(exc)
        if err.code in ("internal_error", "out_of_memory"):
            traceback.print_exc(file=sys.stderr)
        message = " ".join(err.message.split())
        emit("error", code=err.code, message=message)
        failure = Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure"
        try:
            failure.parent.mkdir(parents=True, exist_ok=True)
            failure.write_text(f"{err.code}: {message}"[:1000] + "\n")
        except OSError as e:
            log(f"could not write the failure file: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
