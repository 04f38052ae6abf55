#!/usr/bin/env python
"""Training throughput: training_scripts/train.py against TRL's SFTTrainer defaults.

Same randomly initialised Llama-style model (hidden 512, 8 layers, 8 heads, intermediate 1408,
8k byte-level BPE trained on the data), same real data (../shared/data/lf_alpaca_en_demo.json),
same LoRA (r16 on q/k/v/o), batch size and max length; run one after the other in this
invocation. Prints non-padding tokens/s of each, the ratio, and model-FLOPs utilisation against
the fp32 matmul peak measured here (2048^3 matmuls, the faster of torch's GEMM and oneDNN's; on an
AMD CPU torch's GEMM is MKL's AVX-512 (or AVX2) one here, as in train.py: see mkl_dispatch.py).

MFU counts useful FLOPs only (PERF-NOTES.md): tokens x (4*N + 6*N_lora) + causal attention,
N = matmul parameters including the output head (frozen weights: forward 2N + input-gradient 2N).
train.py runs the head only where a label is (speedups.py), so it also prints its utilisation
counting only the FLOPs it executes. On a CPU that multiplies bf16 natively train.py's defaults
train with bf16 autocast (as TRL's do): that run's MFU is against the bf16 peak measured here, and
train.py also runs with bf16=false for the fp32 MFU. On a CPU without native bf16 (AVX2 only) a
bf16 matmul is emulated at well under 1 GFLOP/s: neither the bf16 peak is measured nor does TRL
keep its bf16 default there (its run would take hours); TRL runs in fp32, everything else default,
and the output says so.

Also run, for the MFU target's context (--skip-anchor to leave it out): PERF-NOTES.md's best plain
recipe, transformers' `Trainer` in fp32 with dynamic padding and length-grouped batches (66% MFU on
that file's AMD EPYC host, whose fp32 peak was ~185 GFLOP/s). Every run's figures are also printed
after its first optimizer step: that step also pays for the process's first touch of its activation
memory (the longest batch comes first wherever batches are length-grouped), which later steps reuse.
The targets are judged on the whole runs.

Targets (the exit status is 1 when one is missed): train.py >= 4x TRL's defaults, fp32 MFU >= 75%.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--max-length 512] [--batch-size 8]
        [--skip-trl] [--skip-anchor] [--baseline-root OTHER_CHECKOUT [--rounds 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMTUNER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "lf_alpaca_en_demo.json"
if not DATA.exists():
    DATA = Path("/work/shared/data/lf_alpaca_en_demo.json")
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


def matmul_peaks(n: int = 2048, reps: int = 5, dtype: str = "float32") -> dict[str, float]:
    """Best GFLOP/s of n^3 matmuls in `dtype` (after a warm-up) by library: torch's GEMM and, where
    torch has it, oneDNN's matmul, measured alternately; the faster one sets the peak. (In fp32 torch's
    GEMM is MKL's, which on AMD CPUs runs its generic kernels unless mkl_dispatch.load() ran; oneDNN's
    was 1.2-1.7x faster than those on a Zen 4.)"""
    import speedups
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    calls = {"torch": lambda: a @ b}
    if speedups.onednn_linear_available():
        bt = b.t()  # oneDNN computes a @ w.T: a transposed view of b gives a @ b
        calls["oneDNN"] = lambda: speedups._onednn_linear(a, bt, None)
    best = dict.fromkeys(calls, float("inf"))
    for call in calls.values():
        call()
    for _ in range(reps):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: 2 * n**3 / seconds / 1e9 for name, seconds in best.items()}


def flops_per_token(model_dir: Path, lengths: list[int], rank: int = 16) -> tuple[float, dict]:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, f, layers, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    n_matmul = layers * (4 * d * d + 3 * d * f) + d * v  # q,k,v,o + gate,up,down + output head
    n_lora = layers * 4 * rank * (d + d)
    # causal attention, fwd+bwd: 6*L^2*d per layer and sequence -> per token 6*d*E[L^2]/E[L]
    attn = 6 * d * layers * sum(n * n for n in lengths) / sum(lengths)
    return 4 * n_matmul + 6 * n_lora + attn, {"N": n_matmul, "N_lora": n_lora, "attention_per_token": attn,
                                              "head": d * v}


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
    return summary["throughput"] | {"speedups": summary.get("speedups"), "bf16": summary["bf16"]}


def lora_config():  # type: ignore[no-untyped-def]
    """The LoRA of every run (train.py's from its hyperparameters): r16, alpha 32, dropout 0.05, q/k/v/o."""
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")


def run_trl(model_dir: Path, records: list[dict], work: Path, args: argparse.Namespace,
            native_bf16: bool = True) -> dict:
    """SFTTrainer with its defaults, plus use_cpu=True (required on a CPU) and the shared settings;
    bf16=False on a CPU that would only emulate it."""
    import prompting
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for r in records:  # the same text train.py trains on, as prompt/completion (loss on the completion)
        pieces = prompting.segments(r, tok)
        rows.append({"prompt": pieces[0][0], "completion": pieces[1][0]})
    timer = StepTimer()
    cfg = SFTConfig(output_dir=str(work / "trl"), use_cpu=True, max_steps=args.trl_steps or args.steps,
                    max_length=args.max_length,
                    per_device_train_batch_size=args.batch_size, learning_rate=2e-4, report_to="none",
                    save_strategy="no", disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                    logging_steps=5, **({} if native_bf16 else {"bf16": False}))
    peft_cfg = lora_config()
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=cfg, processing_class=tok,
                         train_dataset=Dataset.from_list(rows), peft_config=peft_cfg, callbacks=[timer])
    assert isinstance(timer, TrainerCallback)
    trainer.train()
    return timer.throughput(trainer.state.num_input_tokens_seen) | {
        "bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing}


def run_anchor(model_dir: Path, records: list[dict], work: Path, args: argparse.Namespace) -> dict:
    """PERF-NOTES.md's best plain recipe, its 66% MFU anchor: transformers' `Trainer` in fp32 with
    dynamic padding and length-grouped batches, peft LoRA with its defaults for the shared settings,
    the loss on the response only (train.py's tokenization), none of train.py's speed-ups."""
    import prompting
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for r in records:
        ids, labels = prompting.tokenize_record(r, tok, args.max_length)[:2]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    peft_cfg = lora_config()
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), peft_cfg)
    timer = StepTimer()
    cfg = TrainingArguments(output_dir=str(work / "anchor"), use_cpu=True, max_steps=args.steps,
                            per_device_train_batch_size=args.batch_size, learning_rate=2e-4, report_to="none",
                            save_strategy="no", disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                            logging_steps=5, train_sampling_strategy="group_by_length", remove_unused_columns=False)
    trainer = Trainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True))
    trainer.train()
    return timer.throughput(trainer.state.num_input_tokens_seen) | {"bf16": cfg.bf16}


def _step_timer_class():  # type: ignore[no-untyped-def]
    from transformers import TrainerCallback

    class _StepTimer(TrainerCallback):
        """Optimizer-step time only, measured the same way train.py measures itself."""

        def __init__(self) -> None:
            self.seconds, self._t = 0.0, 0.0
            self.first: tuple[float, int] | None = None

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.seconds += time.perf_counter() - self._t
            if self.first is None:
                self.first = (self.seconds, state.num_input_tokens_seen)

        def throughput(self, tokens: int) -> dict:
            """The figures train.py's training_summary.json gives under "throughput"."""
            import train

            return train.step_throughput(tokens, self.seconds, self.first)

    return _StepTimer


def StepTimer():  # noqa: N802 - a factory so transformers is imported lazily
    return _step_timer_class()()


def other_cpu_load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trl-steps", type=int, default=None,
                   help="steps for the TRL run (default: --steps); TRL's defaults are slow on a CPU")
    p.add_argument("--skip-trl", action="store_true", help="measure train.py only (and the anchor)")
    p.add_argument("--skip-anchor", action="store_true",
                   help="skip the run of PERF-NOTES.md's plain-Trainer recipe (its 66%% MFU anchor) in fp32")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --baseline-root: this tree's and the baseline's runs alternate this many rounds "
                        "(the baseline first every other round); each round's ratio and the median runs are "
                        "reported (for changes smaller than a noisy machine's run-to-run spread)")
    p.add_argument("--baseline-root", type=Path, default=None,
                   help="another checkout (e.g. `git worktree add /tmp/base HEAD~1`) whose train.py runs with "
                        "bf16=false right after this tree's, for a same-run A/B of the fp32 figures (and with its "
                        "defaults too where they are bf16)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: must be at least 1")
    if args.rounds > 1 and args.baseline_root is None:
        p.error(f"--rounds {args.rounds}: alternates this tree with --baseline-root's, which is missing")
    if not DATA.exists():
        print(f"SKIP: {DATA} not found (the shared Alpaca demo data set)")
        return
    import mkl_dispatch

    # as train.py does, before torch loads: on an AMD CPU MKL then runs its AVX-512 (or AVX2) kernels,
    # in torch's GEMM peak below and in the TRL run too
    mkl_dispatch.load()
    import speedups
    import torch

    native_bf16 = speedups.cpu_has_native_bf16()
    records = alpaca_to_messages(json.loads(DATA.read_text()))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        build_model(work / "base", records)
        lengths, labelled = _lengths(work / "base", records, args.max_length)
        fpt, parts = flops_per_token(work / "base", lengths)
        # train.py runs the output head only where there is a label: what it executes is less than fpt
        parts["executed_fraction"] = 1 - parts["head"] * 4 * (1 - labelled / sum(lengths)) / fpt
        print(f"model: N={parts['N'] / 1e6:.1f}M matmul params, N_lora={parts['N_lora'] / 1e6:.2f}M, "
              f"{fpt / 1e6:.1f} MFLOP/token useful; torch threads {torch.get_num_threads()}; {other_cpu_load()}")
        why_not = mkl_dispatch.why_not()
        print("MKL's kernels for this AMD CPU's instruction set (mkl_dispatch): "
              + (f"no: {why_not}" if why_not else f"yes (MKL code path {mkl_dispatch.mkl_code_path()})"))
        peaks = {"float32": [matmul_peaks()], "bfloat16": [matmul_peaks(dtype="bfloat16")] if native_bf16 else []}
        if not native_bf16 and not args.skip_trl:
            print(f"no native bf16: a bf16 matmul runs at {max(matmul_peaks(256, 3, 'bfloat16').values()):.2f} "
                  f"GFLOP/s (256^3) against {max(matmul_peaks(256, 3).values()):.0f} in fp32, so TRL's bf16 default "
                  f"would take hours here: "
                  f"TRL runs with bf16=False, its other defaults kept")
        series: dict[str, list[dict]] = {"ours": [], "fp32": [], "baseline": [], "baseline_defaults": []}
        for i in range(args.rounds):
            # this tree's runs, then the baseline tree's (its defaults too where they are bf16: a same-run
            # A/B of what users get); every other round the baseline's first, so drift hits both sides
            def this_tree(i: int = i) -> None:
                series["ours"].append(run_train_py(work / "base", records, work / f"ours-{i}", args))
                if series["ours"][-1]["bf16"]:
                    series["fp32"].append(run_train_py(work / "base", records, work / f"fp32-{i}", args, bf16=False))

            def baseline_tree(i: int = i) -> None:
                if not args.baseline_root:
                    return
                series["baseline"].append(run_train_py(work / "base", records, work / f"baseline-{i}", args,
                                                       root=args.baseline_root, bf16=False))
                if native_bf16:  # train.py's defaults are bf16 autocast where bf16 is native
                    series["baseline_defaults"].append(run_train_py(work / "base", records,
                                                                    work / f"baseline-defaults-{i}", args,
                                                                    root=args.baseline_root))

            for step in (this_tree, baseline_tree) if i % 2 == 0 else (baseline_tree, this_tree):
                step()
        if args.rounds > 1:
            print_rounds(series)
        ours = _median_run(series["ours"])
        fp32 = _median_run(series["fp32"]) if series["fp32"] else ours
        baseline = _median_run(series["baseline"]) if series["baseline"] else None
        baseline_defaults = _median_run(series["baseline_defaults"]) if series["baseline_defaults"] else None
        peaks["float32"].append(matmul_peaks())
        trl = None if args.skip_trl else run_trl(work / "base", records, work, args, native_bf16)
        peaks["float32"].append(matmul_peaks())
        anchor = None if args.skip_anchor else run_anchor(work / "base", records, work, args)
        if anchor:
            peaks["float32"].append(matmul_peaks())
        if native_bf16:
            peaks["bfloat16"].append(matmul_peaks(dtype="bfloat16"))
    missed = report(ours, fp32, trl, fpt, peaks, args, parts["executed_fraction"], baseline, baseline_defaults,
                    anchor)
    if missed:
        print("targets missed: " + "; ".join(missed))
        sys.exit(1)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def print_rounds(series: dict[str, list[dict]]) -> None:
    """Each round's tokens/s and this tree's ratio to the baseline in that round; their medians are reported below."""
    pairs = [("fp32" if series["fp32"] else "ours", "baseline", "bf16=false")]
    if series["baseline_defaults"]:
        pairs.append(("ours", "baseline_defaults", "defaults"))
    for mine, theirs, label in pairs:
        ratios = [a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(series[mine], series[theirs],
                                                                                   strict=True)]
        print(f"rounds, {label}: this tree " + ", ".join(f"{r['tokens_per_second']:.0f}" for r in series[mine])
              + "; baseline " + ", ".join(f"{r['tokens_per_second']:.0f}" for r in series[theirs])
              + " tokens/s; ratio per round " + ", ".join(f"{x:.3f}" for x in ratios)
              + f"; median ratio {statistics.median(ratios):.3f}x")


def _lengths(model_dir: Path, records: list[dict], max_length: int) -> tuple[list[int], int]:
    """Tokens per example, and how many of all tokens carry a label (the response's)."""
    import prompting
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    pairs = [prompting.tokenize_record(r, tok, max_length)[:2] for r in records]
    return [len(ids) for ids, _ in pairs], sum(sum(1 for x in labels if x != -100) for _, labels in pairs)


def report(ours: dict, fp32: dict, trl: dict | None, fpt: float, peaks: dict[str, list[dict[str, float]]],
           args: argparse.Namespace, executed_fraction: float, baseline: dict | None = None,
           baseline_defaults: dict | None = None, anchor: dict | None = None) -> list[str]:
    """Prints the figures; returns the targets missed. `peaks`: per precision, each `matmul_peaks` taken."""
    best = {k: [max(m.values()) for m in v] for k, v in peaks.items()}
    peak = {k: statistics.median(v) for k, v in best.items() if v}
    library = {k: {name: statistics.median(m[name] for m in v) for name in v[0]} for k, v in peaks.items() if v}
    for k, v in best.items():
        print(f"{k} matmul peak (2048^3): {peak[k]:.1f} GFLOP/s (median of {', '.join(f'{x:.0f}' for x in v)})"
              if v else f"{k} matmul peak: not measured (this CPU has no native {k}; it would only emulate it)")
        if len(library.get(k, {})) > 1:
            print("  by library (medians): " + ", ".join(f"{name} {x:.1f}" for name, x in library[k].items()))
    print(f"{other_cpu_load()}; steps {args.steps} (TRL {args.trl_steps or args.steps}), batch size "
          f"{args.batch_size}, max length {args.max_length}, LoRA r16 q/k/v/o")
    rows = [("train.py (defaults)", ours)] + ([("train.py bf16=false", fp32)] if fp32 is not ours else [])
    rows += [("baseline tree bf16=false", baseline)] if baseline else []
    rows += [("baseline tree (defaults)", baseline_defaults)] if baseline_defaults else []
    rows += [("TRL SFTTrainer defaults", trl)] if trl else []
    rows += [("plain Trainer fp32 (anchor)", anchor)] if anchor else []

    def mfu_of(tokens_per_second: float, bf16: bool) -> float:
        """Model-FLOPs utilisation against the measured peak of the precision the run trained in."""
        return tokens_per_second * fpt / (peak["bfloat16" if bf16 else "float32"] * 1e9)

    for name, r in rows:
        precision = "bfloat16" if r["bf16"] else "float32"
        mfu = mfu_of(r["tokens_per_second"], r["bf16"])
        print(f"{name:<27} {r['tokens_per_second']:>8.1f} non-padding tokens/s  MFU {mfu:6.1%} of the "
              f"{precision} peak  ({r['non_padding_tokens']} tokens in {r['train_step_seconds']:.1f} s)")
    print("after the first step (it also pays for the process's first touch of its activation memory; the "
          "longest batch comes first in every run but TRL's):")
    for name, r in rows:
        after = r.get("tokens_per_second_after_first_step")
        if after:
            mfu = mfu_of(after, r["bf16"])
            print(f"  {name:<27} {after:>8.1f} tokens/s  MFU {mfu:6.1%}  (first step {r['first_step_tokens']} "
                  f"tokens in {r['first_step_seconds']:.2f} s)")
    fp32_mfu = mfu_of(fp32["tokens_per_second"], False)
    gemm_peak = library["float32"]["torch"]
    if gemm_peak < 0.97 * peak["float32"]:
        print(f"  fp32 MFU against torch's own GEMM's peak ({gemm_peak:.1f} GFLOP/s), as rounds before 2026-12-03 "
              f"measured it: {fp32['tokens_per_second'] * fpt / gemm_peak / 1e9:.1%}")
    print(f"  train.py skips the output head at unlabelled (prompt) positions: it executes {executed_fraction:.1%} "
          f"of the counted FLOPs; fp32 utilisation counting executed FLOPs only: {fp32_mfu * executed_fraction:.1%}")
    print(f"  train.py speed-ups in this run: {ours.get('speedups')}; bf16 autocast: {ours['bf16']}")
    if fp32 is not ours:
        print(f"  train.py bf16=false speed-ups: {fp32.get('speedups')}")
    if baseline:
        print(f"ratio train.py bf16=false / baseline tree ({args.baseline_root}) bf16=false: "
              f"{fp32['tokens_per_second'] / baseline['tokens_per_second']:.2f}x "
              + ("(same run, one after the other)" if args.rounds == 1 else f"(median runs of {args.rounds} rounds)"))
    if baseline_defaults:
        print(f"ratio train.py / baseline tree, both defaults (bf16 autocast): "
              f"{ours['tokens_per_second'] / baseline_defaults['tokens_per_second']:.2f}x")
    if anchor:
        anchor_mfu = mfu_of(anchor["tokens_per_second"], False)
        print(f"ratio train.py bf16=false / plain Trainer fp32 (PERF-NOTES.md's anchor, 66% MFU on its AMD EPYC "
              f"host with a ~185 GFLOP/s peak): {fp32['tokens_per_second'] / anchor['tokens_per_second']:.2f}x "
              f"(MFU {fp32_mfu:.1%} against {anchor_mfu:.1%} here)")
    missed = [] if fp32_mfu >= 0.75 else [f"fp32 MFU {fp32_mfu:.1%} < 75%"]
    if trl:
        ratio = ours["tokens_per_second"] / trl["tokens_per_second"]
        print(f"ratio train.py / TRL SFTTrainer defaults: {ratio:.2f}x"
              f" (bf16=false: {fp32['tokens_per_second'] / trl['tokens_per_second']:.2f}x)"
              f"  (TRL bf16={trl['bf16']}, gradient_checkpointing={trl['gradient_checkpointing']}"
              f"{'' if 'bfloat16' in peak else '; bf16 off: no native bf16 on this CPU'})")
        missed += [] if ratio >= 4 else [f"{ratio:.2f}x TRL < 4x"]
    return missed


if __name__ == "__main__":
    main()
