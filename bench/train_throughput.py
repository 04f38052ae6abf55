#!/usr/bin/env python
"""Training throughput: training_scripts/train.py against TRL's SFTTrainer defaults, on this machine's CPU.

Same randomly initialised Llama-style model (hidden 512, 8 layers, 8 heads, intermediate 1408, an 8k
byte-level BPE trained on the data), same data (LLaMA-Factory's Alpaca demo set, --data), same LoRA (r16 on q/k/v/o),
batch size and max length, run one after the other in this invocation:

  train.py (defaults)        the recipe with its CPU acceleration layer (training_scripts/cpu_accel/)
  train.py cpu_accel=false   the plain recipe: transformers' Trainer, length-grouped batches, dynamic padding
  baseline tree (defaults)   with --baseline-root: another checkout's train.py (`git worktree add /tmp/base HEAD~1`)
  TRL SFTTrainer defaults    plus use_cpu=True (required on a CPU); bf16=False where the CPU would only emulate bf16

Prints non-padding tokens/s of each (optimizer-step time only, the first step also apart: it pays for the
first touch of the activation memory), model-FLOPs utilisation against the matmul peak measured here,
and the ratios. Target (exit status 1 when missed): train.py >= 4x TRL's defaults.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--max-length 512] [--batch-size 8]
        [--trl-steps N] [--skip-trl] [--baseline-root OTHER_CHECKOUT] [--data alpaca_en_demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# LLaMA-Factory's data/alpaca_en_demo.json (1,000 Alpaca records), by --data or this variable
DATA = os.environ.get("LLMTUNER_BENCH_DATA", str(ROOT / "bench" / "data" / "alpaca_en_demo.json"))
sys.path.insert(0, str(ROOT / "training_scripts"))


def alpaca_to_messages(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]})
    return out


def build_model(path: Path, records: list[dict]) -> None:
    """An 8k byte-level BPE trained on the data and a random Llama (~33M params)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=list(special.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((m["content"] for r in records for m in r["messages"]), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048, **special)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=len(fast), max_position_embeddings=2048,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                      bos_token_id=fast.bos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)


def matmul_peak(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of n^3 matmuls in `dtype` after a warm-up."""
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flops_per_token(model_dir: Path, lengths: list[int], rank: int = 16) -> float:
    """Useful FLOPs: 4N (forward 2N + input gradient 2N of the frozen weights, output head included)
    + 6 N_lora + causal attention forward and backward (6 d L per layer, averaged over the tokens)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, f, layers, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    n_matmul = layers * (4 * d * d + 3 * d * f) + d * v
    n_lora = layers * 4 * rank * (d + d)
    attn = 6 * d * layers * sum(n * n for n in lengths) / sum(lengths)
    return 4 * n_matmul + 6 * n_lora + attn


def run_train_py(model_dir: Path, records: list[dict], work: Path, args: argparse.Namespace,
                 root: Path = ROOT, **extra_hps: object) -> dict:
    train_dir = work / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    with open(train_dir / "data.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    hps = {"base_model": str(model_dir), "epochs": 1, "batch_size": args.batch_size, "max_length": args.max_length,
           "max_steps": args.steps, "logging_steps": 5, "lora_rank": 16, "lora_alpha": 32,
           "learning_rate": 2e-4, "resume_from_checkpoint": False, "save_total_limit": 1} | extra_hps
    env = os.environ | {"SM_HPS": json.dumps(hps), "SM_CHANNEL_TRAIN": str(train_dir),
                        "SM_MODEL_DIR": str(work / "model"), "SM_OUTPUT_DATA_DIR": str(work / "out" / "data"),
                        "SM_CHECKPOINT_DIR": str(work / "ckpt")}
    env.pop("SM_CHANNEL_VALIDATION", None)
    proc = subprocess.run([sys.executable, str(root / "training_scripts" / "train.py")], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"train.py failed:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
    summary = json.loads((work / "model" / "training_summary.json").read_text())
    return summary["throughput"] | {"bf16": summary["bf16"], "cpu_accel": summary.get("cpu_accel")}


def run_trl(model_dir: Path, records: list[dict], work: Path, args: argparse.Namespace, native_bf16: bool) -> dict:
    """SFTTrainer with its defaults, plus use_cpu=True and the shared settings; the loss on the completion."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    import prompting
    from metrics import step_throughput

    class StepTimer(TrainerCallback):
        """Optimizer-step time only, measured as train.py measures itself."""

        def __init__(self) -> None:
            self.seconds, self.started, self.first = 0.0, 0.0, None

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.seconds += time.perf_counter() - self.started
            self.first = self.first or (self.seconds, state.num_input_tokens_seen)

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for r in records:  # the same text train.py trains on, as prompt/completion
        pieces = prompting.segments(r, tok)
        rows.append({"prompt": pieces[0][0], "completion": pieces[1][0]})
    timer = StepTimer()
    cfg = SFTConfig(output_dir=str(work / "trl"), use_cpu=True, max_steps=args.trl_steps or args.steps,
                    max_length=args.max_length, per_device_train_batch_size=args.batch_size, learning_rate=2e-4,
                    report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=5,
                    include_num_input_tokens_seen="non_padding", **({} if native_bf16 else {"bf16": False}))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=cfg, processing_class=tok,
                         train_dataset=Dataset.from_list(rows), peft_config=lora, callbacks=[timer])
    trainer.train()
    return step_throughput(trainer.state.num_input_tokens_seen, timer.seconds, timer.first) | {
        "bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing}


def token_lengths(model_dir: Path, records: list[dict], max_length: int) -> list[int]:
    from transformers import AutoTokenizer

    import prompting

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [len(prompting.tokenize_record(r, tok, max_length)[0]) for r in records]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trl-steps", type=int, default=None, help="steps of the TRL run (default: --steps)")
    p.add_argument("--skip-trl", action="store_true", help="measure train.py only")
    p.add_argument("--baseline-root", type=Path, default=None, help="another checkout whose train.py also runs")
    p.add_argument("--data", type=Path, default=Path(DATA), help="the Alpaca demo data set (JSON list)")
    args = p.parse_args()
    if not args.data.exists():
        print(f"SKIP: {args.data} not found: LLaMA-Factory's data/alpaca_en_demo.json, by --data or "
              "LLMTUNER_BENCH_DATA")
        return
    import torch

    import train

    native_bf16 = train.cpu_has_native_bf16()
    records = alpaca_to_messages(json.loads(args.data.read_text()))
    peaks = {"float32": matmul_peak("float32")} | ({"bfloat16": matmul_peak("bfloat16")} if native_bf16 else {})
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        build_model(work / "base", records)
        fpt = flops_per_token(work / "base", token_lengths(work / "base", records, args.max_length))
        print(f"{fpt / 1e6:.1f} MFLOP/token; torch threads {torch.get_num_threads()}; native bf16 {native_bf16}; "
              f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        rows.append(("train.py (defaults)", run_train_py(work / "base", records, work / "ours", args)))
        rows.append(("train.py cpu_accel=false",
                     run_train_py(work / "base", records, work / "plain", args, cpu_accel=False)))
        if args.baseline_root:
            rows.append(("baseline tree (defaults)", run_train_py(work / "base", records, work / "baseline", args,
                                                                  root=args.baseline_root)))
        if not args.skip_trl:
            rows.append(("TRL SFTTrainer defaults", run_trl(work / "base", records, work, args, native_bf16)))
    print(f"steps {args.steps} (TRL {args.trl_steps or args.steps}), batch size {args.batch_size}, max length "
          f"{args.max_length}, LoRA r16 q/k/v/o; matmul peaks (2048^3): "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    for name, r in rows:
        precision = "bfloat16" if r["bf16"] else "float32"
        mfu = r["tokens_per_second"] * fpt / (peaks[precision] * 1e9)
        print(f"{name:<26} {r['tokens_per_second']:>8.1f} tokens/s ({r.get('tokens_per_second_after_first_step')} "
              f"after the first step)  MFU {mfu:6.1%} of the {precision} peak")
    ours = rows[0][1]
    print(f"cpu_accel: {ours['cpu_accel']}")
    for name, r in rows[1:]:
        print(f"ratio train.py / {name}: {ours['tokens_per_second'] / r['tokens_per_second']:.2f}x")
    trl = dict(rows).get("TRL SFTTrainer defaults")
    if trl and ours["tokens_per_second"] < 4 * trl["tokens_per_second"]:
        print("target missed: train.py < 4x TRL SFTTrainer defaults")
        sys.exit(1)


if __name__ == "__main__":
    main()
