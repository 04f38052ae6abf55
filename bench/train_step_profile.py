#!/usr/bin/env python
"""Where one training shard's step goes: train.py's forward + backward of one batch shard on one
thread, timed per aten op in place, next to the one-thread 2048^3 matmul peak measured in this run.

A diagnostic for the MFU target of bench/train_throughput.py, not a target of its own (exit 0). The
model, data and LoRA are that bench's (random Llama, hidden 512, 8 layers; Alpaca demo; r16 on
q/k/v/o) and the speed-ups are the ones train.py picks (train.prepare, as a real run), so the shard
is what each of train.py's shard threads computes in a training step: `--rows` rows of the data
nearest `--length` tokens, right-padded. Prints

* the step's time alone (median of `--steps`), its useful FLOPs (counted as the throughput bench
  counts them) and its MFU against the one-thread peak;
* each aten op's time per step, timed by a TorchDispatchMode around the real call (about 10 us per
  op), and each call of cpu_kernels' compiled kernels (timed around the call: they are no aten ops);
  their total is printed next to the step's time, which it should match; GEMMs grouped by
  op and their smallest dimension (LoRA's rank, attention's 64-row blocks) with their GFLOP/s;
* the MFU ceiling if everything but the GEMMs took no time (GEMMs at their in-place rates);
* with `--pair`, the same shard and the next `--rows` rows on two threads at once, as train.py's
  two shard threads run, next to the shard alone (what two threads cost each other);
* with `--compare-compiled N`, the step with cpu_kernels' compiled kernels against the same step
  with torch's ops, N alternating rounds in this process, alone and (with `--pair`) paired.

torch.profiler is not used: with `record_shapes` it slowed a step 2.7x on the Intel host and
inflated the elementwise ops several-fold (README, Performance).

    .venv/bin/python bench/train_step_profile.py [--rows 4] [--length 330] [--steps 6] [--bf16] [--pair]
        [--compare-compiled ROUNDS]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as bench  # noqa: E402  (puts training_scripts on sys.path)

GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}


def gemm_shape(op: str, shapes: list[tuple[int, ...]]) -> tuple[int, int, int, int] | None:
    """(batch, m, k, n) of a GEMM aten op (`mm`, `addmm`, `bmm`, `baddbmm`, in place or `out=`) given
    its tensor arguments' shapes in order; None for any other op."""
    base = op.split(".")[0].rstrip("_")
    if base not in GEMM_OPS:
        return None
    a, b = shapes[1:3] if base.startswith(("addmm", "baddbmm")) else shapes[:2]
    if len(a) == 2:
        return 1, a[0], a[1], b[1]
    return a[0], a[1], a[2], b[2]


def gemm_group(op: str, shape: tuple[int, int, int, int]) -> str:
    """`op` (without `.out` or the in-place `_`) and the class of its smallest dimension."""
    small = min(shape[1:])
    return f"{op.split('.')[0].rstrip('_')} (min dim {'<=16' if small <= 16 else '<=64' if small <= 64 else '>64'})"


def op_timer():  # type: ignore[no-untyped-def]
    """A TorchDispatchMode that adds each aten op's time (and a GEMM's FLOPs) to its `seconds`/`flops`."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpTimer(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: dict[str, float] = collections.defaultdict(float)
            self.flops: dict[str, float] = collections.defaultdict(float)
            self.calls: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            seconds = time.perf_counter() - start
            name = func.__name__
            shape = gemm_shape(name, [tuple(a.shape) for a in args if hasattr(a, "shape")])
            if shape is not None:
                name = gemm_group(name, shape)
                b, m, k, n = shape
                self.flops[name] += 2 * b * m * k * n
            self.seconds[name] += seconds
            self.calls[name] += 1
            return out

    return OpTimer()


def timed_kernels(lib: Any, timer: Any) -> Any:
    """A stand-in for cpu_kernels' library (`speedups._kernels()`) whose calls add their time and count to
    `timer` as "cpu_kernels.NAME": the compiled kernels are no aten ops, so the dispatch mode does not see them."""

    class Timed:
        def __getattr__(self, name: str) -> Any:
            kernel, key = getattr(lib, name), f"cpu_kernels.{name.removeprefix('llmtuner_')}"

            def call(*args: Any) -> None:
                start = time.perf_counter()
                kernel(*args)
                timer.seconds[key] += time.perf_counter() - start
                timer.calls[key] += 1

            return call

    return Timed()


def shard_of(dataset: Any, pad_id: int, rows: int, length: int, skip: int = 0) -> dict:
    """`rows` training rows of the tokenized data nearest `length` tokens (after the `skip` nearest),
    right-padded as train.py's collator pads them."""
    import torch

    items = sorted(dataset, key=lambda r: abs(len(r["input_ids"]) - length))[skip:skip + rows]
    width = max(len(r["input_ids"]) for r in items)

    def padded(key: str, value: int) -> Any:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in items])

    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in items])
    return {"input_ids": padded("input_ids", pad_id), "attention_mask": mask, "labels": padded("labels", -100)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4,
                   help="rows in the shard (train.py: batch size / threads, fewer where that would hold more "
                        "than speedups.SHARD_MAX_TOKENS padded tokens: 2 rows of 512 on 2 cores)")
    p.add_argument("--length", type=int, default=330, help="pick rows nearest this many tokens")
    p.add_argument("--steps", type=int, default=6, help="timed steps alone (the first is a warm-up)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as train.py's default on a CPU with native bf16")
    p.add_argument("--pair", action="store_true", help="also two shards on two threads at once")
    p.add_argument("--top", type=int, default=24, help="ops to list")
    p.add_argument("--compare-compiled", type=int, default=0, metavar="ROUNDS",
                   help="also time the step with cpu_kernels' compiled kernels and with torch's ops instead, "
                        "alternating for ROUNDS rounds, alone and (with --pair) as two shards on two threads")
    args = p.parse_args()
    if not bench.DATA.exists():
        print(f"SKIP: {bench.DATA} not found (the shared Alpaca demo data set)")
        return
    import mkl_dispatch

    mkl_dispatch.load()  # before torch, as train.py
    import speedups
    import train

    train._ALLOCATOR_TUNED = speedups.tune_allocator()  # as train.main() does
    import torch

    records = bench.alpaca_to_messages(json.loads(bench.DATA.read_text()))
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        work = Path(tmp)
        bench.build_model(work / "base", records)
        (work / "train").mkdir()
        (work / "train" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        hps = {"base_model": str(work / "base"), "batch_size": 2 * args.rows, "max_length": 512, "lora_rank": 16,
               "lora_alpha": 32, "bf16": args.bf16}
        env = dict(os.environ, SM_HPS=json.dumps(hps), SM_CHANNEL_TRAIN=str(work / "train"),
                   SM_MODEL_DIR=str(work / "model"), SM_OUTPUT_DATA_DIR=str(work / "out"))
        env.pop("SM_CHANNEL_VALIDATION", None)
        run = train.prepare(env, [])
        torch.set_num_threads(1)
        dtype = "bfloat16" if args.bf16 else "float32"
        peak = max(bench.matmul_peaks(dtype=dtype).values())  # of the precision the GEMMs run in
        shard = shard_of(run.data["train"], run.tokenizer.pad_token_id, args.rows, args.length)
        other = shard_of(run.data["train"], run.tokenizer.pad_token_id, args.rows, args.length, skip=args.rows)
        lengths = shard["attention_mask"].sum(1).tolist()
        fpt, _ = bench.flops_per_token(work / "base", lengths)
        useful = fpt * sum(lengths)
        parts = speedups.causal_parts(run.model)
        params = [q for q in run.model.parameters() if q.requires_grad]
        run.model.train()

        sharded = speedups.ShardedBackward(parts, params, 2)  # its shard step, and its two threads for --pair

        def step(batch: dict, seed: int = 0) -> float:
            """One shard's forward and backward as each of train.py's shard threads runs it."""
            torch.set_num_threads(1)
            start = time.perf_counter()
            sharded._run(batch, seed, int((batch["labels"][:, 1:] != -100).sum()), args.bf16)  # sum / labels
            return time.perf_counter() - start

        alone = statistics.median([step(shard) for _ in range(max(2, args.steps))][1:])
        timer = op_timer()
        kernels = speedups._kernels
        compiled = kernels()  # None where the library is not to be had: torch's ops then
        if compiled is not None:
            speedups._kernels = lambda: timed_kernels(compiled, timer)  # type: ignore[assignment]
        try:
            with timer:
                for _ in range(3):
                    step(shard)
        finally:
            speedups._kernels = kernels  # type: ignore[assignment]
        per_step = {k: v / 3 for k, v in timer.seconds.items()}
        total = sum(per_step.values())
        print(f"shard {tuple(shard['input_ids'].shape)}, {sum(lengths)} tokens (lengths {lengths}); {dtype}; "
              f"speed-ups {run.speedups}")
        print(f"one-thread {dtype} matmul peak (2048^3, measured in this run): {peak:.1f} GFLOP/s")
        print(f"step alone: {alone:.3f} s (median), {useful / 1e9:.1f} useful GFLOP: "
              f"MFU {useful / alone / 1e9 / peak:.1%} of the one-thread peak; "
              f"aten ops' total under the timer {total:.3f} s/step")
        gemm_seconds = sum(v for k, v in per_step.items() if k in timer.flops)
        print(f"{'op':32s} {'ms/step':>8s} {'share':>6s} {'calls':>6s}  GFLOP/s")
        for name, seconds in sorted(per_step.items(), key=lambda kv: -kv[1])[:args.top]:
            rate = f"  {timer.flops[name] / timer.seconds[name] / 1e9:.0f}" if name in timer.flops else ""
            print(f"{name:32s} {seconds * 1e3:8.1f} {seconds / total:6.1%} {timer.calls[name] // 3:6d}{rate}")
        gemm_rate = sum(timer.flops.values()) / 3 / gemm_seconds / 1e9
        print(f"GEMMs: {gemm_seconds / total:.1%} of the step at {gemm_rate:.0f} GFLOP/s on average "
              f"({gemm_rate / peak:.0%} of the peak); everything else {1 - gemm_seconds / total:.1%}. "
              f"MFU ceiling if everything else took no time: {useful / gemm_seconds / 1e9 / peak:.1%}")
        if args.pair:
            pairs, solo = [], []
            for _ in range(4):
                solo.append(step(shard))
                start = time.perf_counter()
                each = list(sharded._pool.map(step, [shard, other], [0, 1]))
                pairs.append((time.perf_counter() - start, each[0]))
            wall = statistics.median(x[0] for x in pairs[1:])
            mine, by_itself = statistics.median(x[1] for x in pairs[1:]), statistics.median(solo[1:])
            print(f"two shards on two threads: wall {wall:.3f} s, this shard {mine:.3f} s against "
                  f"{by_itself:.3f} s alone in the same rounds: {mine / by_itself:.2f}x")
        if args.compare_compiled and compiled is not None:
            def pair() -> float:
                start = time.perf_counter()
                list(sharded._pool.map(step, [shard, other], [0, 1]))
                return time.perf_counter() - start

            compare_compiled(args.compare_compiled, speedups, lambda: step(shard), pair if args.pair else None)


def compare_compiled(rounds: int, speedups: Any, alone: Any, pair: Any | None) -> None:
    """The step with cpu_kernels' compiled kernels (dropout, SwiGLU) against the same step with torch's
    ops (`speedups._kernels()` answering None, as where the library cannot be built), alternating in this
    process, which takes the host's drift out of the ratio; prints the medians and their ratio."""
    kernels = speedups._kernels
    cases = [("alone (one thread)", alone)] + ([("two shards on two threads", pair)] if pair else [])
    try:
        for name, fn in cases:
            times: dict[bool, list[float]] = {True: [], False: []}
            for i in range(rounds + 1):
                for on in ((True, False) if i % 2 else (False, True)):
                    speedups._kernels = kernels if on else (lambda: None)
                    seconds = fn()
                    if i:  # the first round warms both up
                        times[on].append(seconds)
            with_, without = statistics.median(times[True]), statistics.median(times[False])
            print(f"compiled kernels, {name}: {with_:.3f} s a step, torch's ops {without:.3f} s "
                  f"(medians of {rounds} alternating rounds): {without / with_:.3f}x")
    finally:
        speedups._kernels = kernels


if __name__ == "__main__":
    main()
